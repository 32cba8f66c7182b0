//! Refusals in the Cloud API's shape (docs/gateway.md §Errors):
//! `{"error":{"message","type","code","error_data":{"messaging_product","details"},"fbtrace_id"}}`
//! with the network's codes and HTTP statuses, so a client's existing error handling works. A
//! gRPC refusal is mapped by its `ErrorInfo` reason (docs/rules.md §8), else by its code; the
//! Finestra reason travels along in `error_data.finestra_reason`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use finestra_platform::status::reason_of;
use serde_json::json;
use tonic::Code;

/// One refusal as the Cloud API writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudError {
    pub http: StatusCode,
    pub code: u32,
    /// Meta's error_subcode, where it sets one.
    pub subcode: Option<u32>,
    /// The short title (the message is `(#<code>) <title>`).
    pub title: &'static str,
    pub details: String,
    /// Finestra's reason (docs/rules.md §8), when the refusal came from a Finestra rule.
    pub reason: Option<String>,
    /// Seconds to wait before a retry can help (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl CloudError {
    fn new(http: StatusCode, code: u32, title: &'static str, details: impl Into<String>) -> Self {
        Self {
            http,
            code,
            subcode: None,
            title,
            details: details.into(),
            reason: None,
            retry_after: None,
        }
    }

    /// `(#100) Invalid parameter`: a request the gateway could not make sense of.
    pub fn invalid(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 100, "Invalid parameter", details)
    }

    /// A key or parameter the Cloud API does not know where it was written.
    pub fn unexpected_key(key: &str, param: &str) -> Self {
        Self::invalid(format!("Unexpected key \"{key}\" on param \"{param}\"."))
    }

    /// An object outside the caller's reach or that does not exist (never telling which).
    pub fn unknown_object(id: &str) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            format!(
                "Unsupported request. Object with ID '{id}' does not exist, cannot be loaded \
                 due to missing permissions, or does not support this operation."
            ),
        );
        e.subcode = Some(33);
        e
    }

    /// `(#190)`: no key, or one that is not valid.
    pub fn bad_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "The bearer token is missing, malformed, revoked or unknown.",
        )
    }

    /// A path the gateway does not serve.
    pub fn unknown_path(path: &str) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            format!("Unknown path components: {path}"),
        );
        e.subcode = Some(2_500);
        e
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            100,
            "Invalid parameter",
            format!("The request body is larger than {limit} bytes."),
        )
    }

    pub fn not_supported(what: &str) -> Self {
        Self::invalid(format!(
            "{what} is not supported by Finestra (docs/gateway.md)."
        ))
    }

    /// The refusal a gRPC status from Finestra means.
    pub fn from_status(status: &tonic::Status) -> Self {
        let reason = reason_of(status);
        let details = status.message().to_owned();
        let retry = retry_after(status);
        let mut e = match reason.as_deref() {
            Some("WINDOW_CLOSED") => Self::new(
                StatusCode::BAD_REQUEST,
                131_047,
                "Re-engagement message",
                details,
            ),
            Some("USER_BLOCKED") => Self::new(
                StatusCode::BAD_REQUEST,
                131_026,
                "Message Undeliverable",
                details,
            ),
            Some("MARKETING_OPT_OUT") => Self::new(
                StatusCode::BAD_REQUEST,
                131_050,
                "Unable to deliver the message. This recipient has chosen to stop receiving \
                 marketing messages on WhatsApp from your business",
                details,
            ),
            Some("TEMPLATE_PARAMS_MISMATCH") => Self::new(
                StatusCode::BAD_REQUEST,
                132_000,
                "Number of parameters does not match the expected number of params",
                details,
            ),
            Some("TEMPLATE_NOT_APPROVED") => Self::new(
                StatusCode::BAD_REQUEST,
                132_001,
                "Template name does not exist in the translation",
                details,
            ),
            Some("TEMPLATE_PAUSED") => Self::new(
                StatusCode::BAD_REQUEST,
                132_015,
                "Template is Paused",
                details,
            ),
            Some("FREQUENCY_CAPPED") => Self::new(
                StatusCode::BAD_REQUEST,
                131_049,
                "This message was not delivered to maintain healthy ecosystem engagement.",
                details,
            ),
            Some("TIER_LIMIT_REACHED") => Self::new(
                StatusCode::BAD_REQUEST,
                131_048,
                "Spam rate limit hit",
                details,
            ),
            Some("TENANT_RATE_LIMITED" | "BACKLOG_FULL" | "RATE_LIMITED") => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                130_429,
                "Rate limit hit",
                details,
            ),
            Some("INSUFFICIENT_FUNDS") => Self::new(
                StatusCode::BAD_REQUEST,
                131_042,
                "Business eligibility payment issue",
                details,
            ),
            Some("TENANT_SUSPENDED") => Self::new(
                StatusCode::BAD_REQUEST,
                131_031,
                "Business Account locked",
                details,
            ),
            // Never telling whether the object exists elsewhere: the same answer as an id nobody
            // has (the handler names the id its path gave, `about`).
            Some("NOT_FOUND") => Self::unknown_object(""),
            Some("IN_PROGRESS" | "STORE_UNAVAILABLE" | "PROVIDER_UNAVAILABLE") => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                131_016,
                "Service unavailable",
                details,
            ),
            Some(_) if status.code() == Code::InvalidArgument => Self::invalid(details),
            Some("IDEMPOTENCY_CONFLICT" | "ALREADY_EXISTS") => Self::invalid(details),
            _ => Self::by_code(status.code(), details),
        };
        if e.reason.is_none() && e.subcode != Some(33) {
            e.reason = reason;
        }
        e.retry_after = retry;
        e
    }

    /// Names the object of the request in an "unknown object" refusal (others are unchanged),
    /// so an id outside the caller's reach reads exactly as an id nobody has.
    pub fn about(self, id: &str) -> Self {
        if self.subcode == Some(33) {
            Self::unknown_object(id)
        } else {
            self
        }
    }

    fn by_code(code: Code, details: String) -> Self {
        match code {
            Code::Unauthenticated => Self::bad_token(),
            Code::PermissionDenied => Self::new(
                StatusCode::FORBIDDEN,
                10,
                "Application does not have permission for this action",
                details,
            ),
            Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => {
                Self::invalid(details)
            }
            Code::NotFound => Self::unknown_object(""),
            Code::ResourceExhausted => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                130_429,
                "Rate limit hit",
                details,
            ),
            Code::FailedPrecondition => Self::new(
                StatusCode::BAD_REQUEST,
                131_009,
                "Parameter value is not valid",
                details,
            ),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    131_016,
                    "Service unavailable",
                    "A Finestra service is unavailable; retry later.",
                )
            }
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                131_000,
                "Something went wrong",
                "An unexpected error occurred; it was logged with its trace id.",
            ),
        }
    }

    /// The JSON body, with `fbtrace_id` naming the request's trace.
    pub fn body(&self, trace_id: &str) -> serde_json::Value {
        let mut data = json!({ "messaging_product": "whatsapp", "details": self.details });
        if let (Some(reason), Some(obj)) = (&self.reason, data.as_object_mut()) {
            obj.insert("finestra_reason".into(), json!(reason));
        }
        let mut error = json!({
            "message": format!("(#{}) {}", self.code, self.title),
            "type": "OAuthException",
            "code": self.code,
            "error_data": data,
            "fbtrace_id": trace_id,
        });
        if let (Some(sub), Some(obj)) = (self.subcode, error.as_object_mut()) {
            obj.insert("error_subcode".into(), json!(sub));
        }
        json!({ "error": error })
    }
}

fn retry_after(status: &tonic::Status) -> Option<u64> {
    use tonic_types::StatusExt as _;
    let info = status.get_details_retry_info()?;
    let delay = info.retry_delay?;
    // Whole seconds, rounded up: a client never retries before the delay.
    Some(delay.as_millis().div_ceil(1_000).max(1) as u64)
}

/// The id a response's `fbtrace_id` carries: the current trace's, else a fresh one.
pub fn trace_id() -> String {
    // traceparent: 00-<trace id>-<span id>-<flags>
    finestra_platform::trace::current()
        .and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
        .unwrap_or_else(|| {
            use rand::Rng as _;
            format!("{:024x}", rand::rng().random::<u128>() >> 32)
        })
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let body = self.body(&trace_id());
        let mut response = (self.http, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_platform::status::{Reason, with_reason};

    fn refusal(code: Code, reason: Reason) -> CloudError {
        CloudError::from_status(&with_reason(code, reason, "why", &[]))
    }

    /// Every refusal of the send rules (docs/rules.md §2-§5) answers the network's code.
    #[test]
    fn each_send_refusal_has_the_networks_code_and_http_status() {
        use Code::{FailedPrecondition as Pre, InvalidArgument as Arg, ResourceExhausted as Res};
        let cases = [
            (Pre, Reason::WindowClosed, 131_047, 400),
            (Pre, Reason::UserBlocked, 131_026, 400),
            (Pre, Reason::MarketingOptOut, 131_050, 400),
            (Arg, Reason::TemplateParamsMismatch, 132_000, 400),
            (Pre, Reason::TemplateNotApproved, 132_001, 400),
            (Pre, Reason::TemplatePaused, 132_015, 400),
            (Res, Reason::FrequencyCapped, 131_049, 400),
            (Res, Reason::TierLimitReached, 131_048, 400),
            (Res, Reason::TenantRateLimited, 130_429, 429),
            (Res, Reason::BacklogFull, 130_429, 429),
            (Pre, Reason::InsufficientFunds, 131_042, 400),
            (Pre, Reason::TenantSuspended, 131_031, 400),
            (Arg, Reason::InvalidMessage, 100, 400),
            (Code::AlreadyExists, Reason::IdempotencyConflict, 100, 400),
            (Code::Unavailable, Reason::StoreUnavailable, 131_016, 503),
        ];
        for (code, reason, cloud, http) in cases {
            let e = refusal(code, reason);
            assert_eq!((e.code, e.http.as_u16()), (cloud, http), "{reason:?}");
            assert_eq!(e.reason.as_deref(), Some(reason.as_str_name()));
        }
    }

    #[test]
    fn an_object_out_of_reach_reads_as_one_nobody_has() {
        let theirs = CloudError::from_status(&with_reason(
            Code::NotFound,
            Reason::NotFound,
            "no such tenant_id",
            &[("tenant_id", "t-other")],
        ))
        .about("106540352242922");
        let nobodys = CloudError::unknown_object("106540352242922");
        assert_eq!(theirs, nobodys);
        assert_eq!(theirs.body("t"), nobodys.body("t"));
        assert!(!theirs.details.contains("t-other"));
    }

    #[test]
    fn keys_and_unknown_failures_map_by_code() {
        let bad = CloudError::from_status(&tonic::Status::unauthenticated("no key"));
        assert_eq!((bad.code, bad.http.as_u16()), (190, 401));
        let scope = CloudError::from_status(&tonic::Status::permission_denied("read key"));
        assert_eq!((scope.code, scope.http.as_u16()), (10, 403));
        let internal = CloudError::from_status(&tonic::Status::internal("db exploded at 0x1"));
        assert_eq!((internal.code, internal.http.as_u16()), (131_000, 500));
        assert!(!internal.details.contains("0x1"), "internals stay inside");
    }

    #[test]
    fn the_body_is_the_cloud_api_error_shape() {
        let e = refusal(Code::FailedPrecondition, Reason::WindowClosed);
        let body = e.body("AbCdEf");
        assert_eq!(
            body,
            json!({"error": {
                "message": "(#131047) Re-engagement message",
                "type": "OAuthException",
                "code": 131_047,
                "error_data": { "messaging_product": "whatsapp", "details": "why",
                                "finestra_reason": "WINDOW_CLOSED" },
                "fbtrace_id": "AbCdEf",
            }})
        );
        let unknown = CloudError::unknown_object("123").body("t");
        assert_eq!(unknown["error"]["error_subcode"], 33);
    }

    #[test]
    fn a_retryable_refusal_says_when_to_retry() {
        let status = finestra_platform::status::with_reason_and_retry(
            Code::ResourceExhausted,
            Reason::TenantRateLimited,
            "slow down",
            &[],
            std::time::Duration::from_millis(1_500),
        );
        assert_eq!(CloudError::from_status(&status).retry_after, Some(2));
    }
}
