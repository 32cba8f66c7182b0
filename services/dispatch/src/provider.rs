//! The messaging network behind dispatch (docs/rules.md §9): a `Provider` sends one message and says
//! whether a failure is worth retrying. The one implementation is the Cloud API over HTTP,
//! which talks to the simulator by default and to Meta's Graph API in production.

use std::time::Duration;

use futures::future::BoxFuture;

/// Why a send failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderError {
    pub retryable: bool,
    /// The network's error code (0 for transport failures, the HTTP status for bare 5xx).
    pub code: i32,
    pub title: String,
    /// docs/rules.md §8's reason when the error means one (WINDOW_CLOSED, ...), else PROVIDER_ERROR.
    pub reason: &'static str,
}

impl ProviderError {
    /// Maps a Cloud API error code (docs/rules.md §9) to what dispatch does with it.
    pub fn from_code(http_status: u16, code: i32, title: String) -> Self {
        let (retryable, reason) = match code {
            // Throughput or pair rate exceeded: pacing should prevent it; wait and retry.
            130_429 | 131_056 => (true, "RATE_LIMITED"),
            131_047 => (false, "WINDOW_CLOSED"),
            131_026 => (false, "UNDELIVERABLE"),
            131_050 => (false, "MARKETING_OPT_OUT"),
            131_049 => (false, "FREQUENCY_CAPPED"),
            132_000 => (false, "TEMPLATE_PARAMS_MISMATCH"),
            132_001 => (false, "TEMPLATE_NOT_APPROVED"),
            // Temporary errors of the network.
            1 | 2 | 131_000 | 131_016 => (true, "PROVIDER_ERROR"),
            _ if http_status >= 500 || http_status == 429 => (true, "PROVIDER_ERROR"),
            _ => (false, "PROVIDER_ERROR"),
        };
        Self {
            retryable,
            code,
            title,
            reason,
        }
    }

    pub fn transport(why: String) -> Self {
        Self {
            retryable: true,
            code: 0,
            title: why,
            reason: "PROVIDER_UNREACHABLE",
        }
    }
}

pub trait Provider: Send + Sync + 'static {
    /// Sends a Cloud API body from `phone_number_id`; the network's message id on success.
    fn send<'a>(
        &'a self,
        phone_number_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<String, ProviderError>>;
}

/// `POST {base}/{version}/{phone_number_id}/messages` with a bearer token.
pub struct CloudApi {
    http: reqwest::Client,
    base_url: String,
    version: String,
    token: String,
}

impl CloudApi {
    pub fn new(
        base_url: &str,
        version: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(256)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
            token: token.to_owned(),
        })
    }
}

impl Provider for CloudApi {
    fn send<'a>(
        &'a self,
        phone_number_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let url = format!(
                "{}/{}/{}/messages",
                self.base_url, self.version, phone_number_id
            );
            let mut request = self
                .http
                .post(url)
                .bearer_auth(&self.token)
                .header("content-type", "application/json");
            if let Some(tp) = finestra_platform::trace::current() {
                request = request.header(finestra_platform::trace::TRACEPARENT, tp);
            }
            let answer = request
                .body(body.to_vec())
                .send()
                .await
                .map_err(|e| ProviderError::transport(e.to_string()))?;
            let status = answer.status().as_u16();
            let bytes = answer
                .bytes()
                .await
                .map_err(|e| ProviderError::transport(e.to_string()))?;
            if (200..300).contains(&status) {
                return finestra_cloudapi::send::accepted_id(&bytes).ok_or_else(|| {
                    ProviderError::from_code(status, 0, "an answer without a message id".into())
                });
            }
            let (code, title) = finestra_cloudapi::send::error_of(&bytes)
                .unwrap_or((i32::from(status), format!("HTTP {status}")));
            Err(ProviderError::from_code(status, code, title))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_retry_or_final_with_a_reason() {
        let cases = [
            (429, 130_429, true, "RATE_LIMITED"),
            (400, 131_047, false, "WINDOW_CLOSED"),
            (400, 131_026, false, "UNDELIVERABLE"),
            (400, 131_050, false, "MARKETING_OPT_OUT"),
            (400, 132_000, false, "TEMPLATE_PARAMS_MISMATCH"),
            (500, 500, true, "PROVIDER_ERROR"),
            (503, 1, true, "PROVIDER_ERROR"),
            (401, 190, false, "PROVIDER_ERROR"),
            (400, 100, false, "PROVIDER_ERROR"),
        ];
        for (http, code, retryable, reason) in cases {
            let e = ProviderError::from_code(http, code, String::new());
            assert_eq!(
                (e.retryable, e.reason),
                (retryable, reason),
                "{http} {code}"
            );
        }
        assert!(ProviderError::transport("timeout".into()).retryable);
    }
}
