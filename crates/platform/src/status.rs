//! Building gRPC statuses that carry a machine-readable reason (docs/rules.md §8):
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

/// A store's failure, as a client should see it: transient ones (a pool timeout, a lost or
/// refused connection, a deadlock, a server shutting down, a busy Redis) are `UNAVAILABLE`
/// with a RetryInfo, since the same call may pass in a moment; anything else is `INTERNAL`
/// with no internals. Both are logged with their cause.
pub trait StoreFailure: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl StoreFailure for sqlx::Error {
    fn is_transient(&self) -> bool {
        match self {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Connection exceptions, transaction rollbacks (serialization, deadlock),
                // insufficient resources, operator intervention (shutdown, statement timeout).
                ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }),
            _ => false,
        }
    }
}

impl StoreFailure for redis::RedisError {
    fn is_transient(&self) -> bool {
        self.is_timeout()
            || self.is_io_error()
            || self.is_connection_dropped()
            || self.is_connection_refusal()
            || matches!(
                self.kind(),
                redis::ErrorKind::BusyLoadingError
                    | redis::ErrorKind::TryAgain
                    | redis::ErrorKind::ClusterDown
                    | redis::ErrorKind::MasterDown
            )
    }
}

impl<T: StoreFailure> StoreFailure for std::sync::Arc<T> {
    fn is_transient(&self) -> bool {
        (**self).is_transient()
    }
}

/// How long a client should wait before retrying a call that met a transient store failure.
pub const STORE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// The status of a store failure met while `context` (see [`StoreFailure`]).
pub fn store(context: &str, error: &dyn StoreFailure) -> Status {
    if error.is_transient() {
        tracing::warn!(error = %error, context, "a store is unavailable");
        with_reason_and_retry(
            Code::Unavailable,
            "STORE_UNAVAILABLE",
            format!("{context}: a store did not answer in time; retry"),
            &[],
            STORE_RETRY_AFTER,
        )
    } else {
        internal(context, error)
    }
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
