//! Webhook signatures: `X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the raw body
//! keyed with the app secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256 header")]
    Missing,
    #[error("the signature header is not `sha256=<64 hex digits>`")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The digest claimed by a header value.
pub fn parse_header(value: Option<&str>) -> Result<[u8; 32], SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?;
    let hex_digest = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

/// Checks `claimed` against the body in constant time.
pub fn verify(secret: &[u8], body: &[u8], claimed: &[u8; 32]) -> Result<(), SignatureError> {
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(claimed)
        .map_err(|_| SignatureError::Mismatch)
}

/// The header value for a body (simulator, CLI and tests sign with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not() {
        let header = sign(b"secret", b"{\"a\":1}");
        let claimed = parse_header(Some(&header)).expect("well-formed");
        assert_eq!(verify(b"secret", b"{\"a\":1}", &claimed), Ok(()));
        assert_eq!(
            verify(b"secret", b"{\"a\":2}", &claimed),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", b"{\"a\":1}", &claimed),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        assert_eq!(
            sign(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(parse_header(None), Err(SignatureError::Missing));
        assert_eq!(
            parse_header(Some("sha1=abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_header(Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_header(Some("sha256=abcd")),
            Err(SignatureError::Malformed)
        );
    }
}
