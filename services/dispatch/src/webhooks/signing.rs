//! How a webhook proves it came from Finestra (docs/webhooks.md §Signatures).
//!
//! - Standard Webhooks (the default): `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256>` over `"{id}.{timestamp}.{body}"`, keyed with
//!   the base64 part of the `whsec_` secret, one space-separated signature per live secret, so
//!   receivers verify with the `standardwebhooks` or `svix` libraries.
//! - `Finestra-Signature: t=<unix seconds>,v1=<hex>` over `"{timestamp}.{body}"`, keyed with the
//!   secret's text: the earlier scheme, still sent while receivers move over.
//! - Cloud API endpoints: `X-Hub-Signature-256: sha256=<hex>` over the body, keyed with the
//!   secret's text (the business's "app secret"), as the network signs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `Finestra-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn finestra(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac = hmac(secret.as_bytes());
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// The Standard Webhooks key of a `whsec_<base64>` secret: its decoded base64 part. A secret
/// whose part does not decode (none Finestra issues) is keyed with its text.
fn standard_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// The `webhook-signature` value: `v1,<base64>` per secret, space-separated.
pub fn standard(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| {
            let mut mac = hmac(&standard_key(secret));
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect();
    signatures.join(" ")
}

/// The `X-Hub-Signature-256` value of a Cloud API endpoint.
pub fn cloud_api(secret: &str, body: &[u8]) -> String {
    finestra_cloudapi::signature::sign(secret.as_bytes(), body)
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    // An HMAC takes a key of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finestra_signature_covers_timestamp_and_body_once_per_secret() {
        let one = finestra(&["s3cret"], 1_764_000_000, b"{}");
        assert!(one.starts_with("t=1764000000,v1="));
        assert_eq!(one.matches("v1=").count(), 1);
        let two = finestra(&["new", "s3cret"], 1_764_000_000, b"{}");
        assert_eq!(two.matches("v1=").count(), 2);
        assert!(two.ends_with(one.trim_start_matches("t=1764000000,")));
        assert_ne!(one, finestra(&["s3cret"], 1_764_000_001, b"{}"));
        assert_ne!(one, finestra(&["s3cret"], 1_764_000_000, b"{ }"));
    }

    /// A known vector (the `standardwebhooks` package signs it the same): secret
    /// `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp
    /// 1614265330, body `{"test": 2432232314}`.
    #[test]
    fn the_standard_signature_matches_the_specifications_example() {
        let signature = standard(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets_newest_first() {
        let new = standard(&["whsec_bmV3"], "e1", 1, b"x");
        let old = standard(&["whsec_b2xk"], "e1", 1, b"x");
        assert_eq!(
            standard(&["whsec_bmV3", "whsec_b2xk"], "e1", 1, b"x"),
            format!("{new} {old}")
        );
        assert_ne!(new, standard(&["whsec_bmV3"], "e2", 1, b"x"));
    }

    #[test]
    fn the_cloud_api_signature_is_the_hex_hmac_of_the_body() {
        let header = cloud_api("app-secret", b"{}");
        assert!(header.starts_with("sha256="));
        assert_eq!(header.len(), "sha256=".len() + 64);
    }
}
