//! Media in the Cloud API's shape: an upload answers `{"id"}`, a media id's description gives
//! a URL that the same key downloads from (the gateway's own, since the network's is not the
//! business's to reach).

use finestra_proto::v1::MediaChunk;
use serde_json::{Value, json};

/// The description of a media file (`GET /{version}/{media_id}`).
pub fn info(first: &MediaChunk, media_id: &str, url: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": first.content_type,
        "sha256": first.sha256,
        "file_size": first.size,
        "id": media_id,
    })
}

/// The download URL of a tenant's media file.
pub fn download_url(public_url: &str, tenant_id: &str, media_id: &str) -> String {
    format!("{public_url}/media/{tenant_id}/{media_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_file_is_described_as_the_cloud_api_does() {
        let first = MediaChunk {
            content_type: "image/jpeg".into(),
            sha256: "abc".into(),
            size: 303_833,
            ..Default::default()
        };
        assert_eq!(
            info(
                &first,
                "2621233374848975",
                "http://gw/media/t1/2621233374848975"
            ),
            json!({ "messaging_product": "whatsapp", "url": "http://gw/media/t1/2621233374848975",
                    "mime_type": "image/jpeg", "sha256": "abc", "file_size": 303_833,
                    "id": "2621233374848975" })
        );
    }
}
