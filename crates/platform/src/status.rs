//! Building gRPC statuses that carry a machine-readable reason (DESIGN 1.8):
//! a `google.rpc.ErrorInfo` with `domain = "finestra"`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const DOMAIN: &str = "finestra";

/// A status with an `ErrorInfo { reason, domain: "finestra", metadata }` detail.
pub fn with_reason(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// A status with an `ErrorInfo` as [`with_reason`] and a `google.rpc.RetryInfo` saying how
/// long the client should wait before trying again (refusals for load, not for the request).
pub fn with_reason_and_retry(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
    retry_after: std::time::Duration,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// The delay a status's `RetryInfo` asks for (clients and tests).
pub fn retry_after_of(status: &Status) -> Option<std::time::Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// `INVALID_ARGUMENT` with reason `INVALID_ARGUMENT` for a malformed request field.
pub fn invalid_argument(field: &str, message: impl Into<String>) -> Status {
    with_reason(
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        message,
        &[("field", field)],
    )
}

/// An internal failure: logged with its cause, returned without internals.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %error, context, "internal error");
    Status::internal("internal error")
}

/// Reads the reason back from a status (clients and tests).
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

/// `INVALID_ARGUMENT` when a required field is empty.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        Err(invalid_argument(field, format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// `NOT_FOUND` for a resource outside the caller's reach or absent (never telling which).
pub fn not_found(kind: &str, id: &str) -> Status {
    with_reason(
        Code::NotFound,
        "NOT_FOUND",
        format!("no such {kind}"),
        &[(kind, id)],
    )
}
