//! `GET /{version}/{phone_number_id}` in the Cloud API's shape, from accounts' number and its
//! health.

use finestra_proto::v1::{Number, NumberHealth};
use serde_json::{Value, json};

/// The Cloud API's throughput level of a number: `HIGH` beyond the standard 80 messages/s.
fn throughput_level(per_second: u32) -> &'static str {
    if per_second > 80 { "HIGH" } else { "STANDARD" }
}

/// The number as the Cloud API describes a business phone number.
pub fn info(number: &Number, health: &NumberHealth) -> Value {
    let quality = if health.quality_rating.is_empty() {
        "UNKNOWN"
    } else {
        &health.quality_rating
    };
    let mut v = json!({
        "id": number.phone_number_id,
        "display_phone_number": number.display_phone_number,
        "quality_rating": quality,
        "platform_type": "CLOUD_API",
        "throughput": { "level": throughput_level(number.throughput_per_second) },
        "code_verification_status": "VERIFIED",
    });
    if !health.messaging_limit.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("messaging_limit_tier".into(), json!(health.messaging_limit));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_described_as_the_cloud_api_does() {
        let number = Number {
            phone_number_id: "106540352242922".into(),
            display_phone_number: "+1 555-078-3881".into(),
            throughput_per_second: 1_000,
            ..Default::default()
        };
        let health = NumberHealth {
            quality_rating: "GREEN".into(),
            messaging_limit: "TIER_10K".into(),
            ..Default::default()
        };
        assert_eq!(
            info(&number, &health),
            json!({
                "id": "106540352242922", "display_phone_number": "+1 555-078-3881",
                "quality_rating": "GREEN", "platform_type": "CLOUD_API",
                "throughput": { "level": "HIGH" }, "code_verification_status": "VERIFIED",
                "messaging_limit_tier": "TIER_10K",
            })
        );
        assert_eq!(
            info(&Number::default(), &NumberHealth::default())["quality_rating"],
            "UNKNOWN"
        );
    }
}
