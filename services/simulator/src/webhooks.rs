//! Posting signed webhooks to ingest, as the provider does: HMAC-SHA256 of the raw body with
//! the number's app secret, retried with backoff while ingest is unreachable or answers 5xx.

use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Poster {
    pub http: reqwest::Client,
    pub url: String,
}

impl Poster {
    /// Posts `body`; up to `attempts` tries. Returns the final HTTP status.
    pub async fn post(&self, secret: &str, body: &Value, attempts: u32) -> Result<u16, String> {
        self.post_traced(secret, body, attempts, None).await
    }

    /// Posts with the `traceparent` of the send the webhook reports on: a network that
    /// propagates W3C context lets the status join the send's trace.
    pub async fn post_traced(
        &self,
        secret: &str,
        body: &Value,
        attempts: u32,
        traceparent: Option<&str>,
    ) -> Result<u16, String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let signature = finestra_cloudapi::signature::sign(secret.as_bytes(), &bytes);
        let mut pause = Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..attempts.max(1) {
            let mut request = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header(finestra_cloudapi::SIGNATURE_HEADER, &signature);
            if let Some(tp) = traceparent {
                request = request.header(finestra_platform::trace::TRACEPARENT, tp);
            }
            let sent = request.body(bytes.clone()).send().await;
            match sent {
                Ok(r) if !r.status().is_server_error() => return Ok(r.status().as_u16()),
                Ok(r) => last = format!("ingest answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        metrics::counter!("finestra_simulator_webhook_failures_total").increment(1);
        Err(last)
    }
}
