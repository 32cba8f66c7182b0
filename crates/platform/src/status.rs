//! Building gRPC statuses that carry a machine-readable reason (docs/rules.md §8):
//! a `google.rpc.ErrorInfo` with `domain = "finestra"`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const DOMAIN: &str = "finestra";

/// The reasons a refusal can give: `finestra.v1.ErrorReason` (proto/finestra/v1/errors.proto),
/// so clients have the list and no service can invent a reason the list lacks.
pub use finestra_proto::v1::ErrorReason as Reason;

/// A status with an `ErrorInfo { reason, domain: "finestra", metadata }` detail.
pub fn with_reason(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
) -> Status {
    forward(code, reason.as_str_name(), message, metadata)
}

/// A status carrying a reason another Finestra service gave (passed on unchanged).
pub fn forward(
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
    reason: Reason,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
    retry_after: std::time::Duration,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, metadata);
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
        Reason::InvalidArgument,
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
            Reason::StoreUnavailable,
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

/// A request a service cannot serve as asked, before any store is touched: the typed form of
/// [`invalid_argument`] and [`not_found`], for code below the gRPC edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no such {kind} ({id})")]
    NotFound { kind: String, id: String },
}

impl RequestError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::NotFound {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }
    }

    /// The value itself, or `Invalid` when a required field is empty.
    pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Self> {
        if value.trim().is_empty() {
            Err(Self::invalid(field, format!("{field} is required")))
        } else {
            Ok(value)
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid { field, message } => invalid_argument(&field, message),
            RequestError::NotFound { kind, id } => not_found(&kind, &id),
        }
    }
}

/// `INVALID_ARGUMENT` when a required field is empty.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    Ok(RequestError::required(field, value)?)
}

/// `NOT_FOUND` for a resource outside the caller's reach or absent (never telling which).
pub fn not_found(kind: &str, id: &str) -> Status {
    with_reason(
        Code::NotFound,
        Reason::NotFound,
        format!("no such {kind}"),
        &[(kind, id)],
    )
}

/// A send refused by the channel's rules (docs/rules.md §2, §8), as SendMessage and
/// QuoteMessage both answer it.
pub fn refusal(r: &finestra_domain::send::Refusal, metadata: &[(&str, &str)]) -> Status {
    use finestra_domain::send::Refusal;
    let code = match r {
        Refusal::NumberNotFound => Code::NotFound,
        Refusal::TenantInactive => Code::FailedPrecondition,
        Refusal::InvalidMessage(_) | Refusal::TemplateParamsMismatch { .. } => {
            Code::InvalidArgument
        }
        Refusal::UserBlocked
        | Refusal::WindowClosed
        | Refusal::TemplateNotApproved
        | Refusal::TemplatePaused
        | Refusal::MarketingOptOut => Code::FailedPrecondition,
    };
    let message = match r {
        Refusal::TenantInactive => {
            "the tenant or its partner is suspended: nothing is sent until it is active again"
                .to_owned()
        }
        Refusal::NumberNotFound => "no such phone_number_id".to_owned(),
        Refusal::UserBlocked => "the user blocked this number".to_owned(),
        Refusal::InvalidMessage(why) => why.clone(),
        Refusal::WindowClosed => {
            "the customer-service window is closed: only approved templates may be sent".to_owned()
        }
        Refusal::TemplateNotApproved => {
            "the template does not exist in that language or is not approved".to_owned()
        }
        Refusal::TemplatePaused => {
            "the network paused the template for its quality: usable again when the pause ends"
                .to_owned()
        }
        Refusal::TemplateParamsMismatch { expected, given } => {
            format!("the template takes {expected} parameters, {given} given")
        }
        Refusal::MarketingOptOut => "the user stopped marketing messages".to_owned(),
    };
    with_reason(code, refusal_reason(r), message, metadata)
}

/// The reason of a send refused by the channel's rules.
pub fn refusal_reason(r: &finestra_domain::send::Refusal) -> Reason {
    use finestra_domain::send::Refusal;
    match r {
        Refusal::TenantInactive => Reason::TenantSuspended,
        Refusal::NumberNotFound => Reason::NotFound,
        Refusal::UserBlocked => Reason::UserBlocked,
        Refusal::InvalidMessage(_) => Reason::InvalidMessage,
        Refusal::WindowClosed => Reason::WindowClosed,
        Refusal::TemplateNotApproved => Reason::TemplateNotApproved,
        Refusal::TemplatePaused => Reason::TemplatePaused,
        Refusal::TemplateParamsMismatch { .. } => Reason::TemplateParamsMismatch,
        Refusal::MarketingOptOut => Reason::MarketingOptOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_domain::send::Refusal;

    #[test]
    fn a_refusal_carries_the_reason_the_rules_name() {
        let all = [
            Refusal::TenantInactive,
            Refusal::NumberNotFound,
            Refusal::UserBlocked,
            Refusal::InvalidMessage("x".into()),
            Refusal::WindowClosed,
            Refusal::TemplateNotApproved,
            Refusal::TemplatePaused,
            Refusal::TemplateParamsMismatch {
                expected: 1,
                given: 2,
            },
            Refusal::MarketingOptOut,
        ];
        for r in all {
            let status = refusal(&r, &[("message_id", "m1")]);
            assert_eq!(reason_of(&status).as_deref(), Some(r.reason()), "{r:?}");
            assert_eq!(refusal_reason(&r).as_str_name(), r.reason());
        }
    }

    #[test]
    fn every_reason_is_named_as_clients_match_it() {
        assert_eq!(Reason::WindowClosed.as_str_name(), "WINDOW_CLOSED");
        assert_eq!(
            Reason::from_str_name("STORE_UNAVAILABLE"),
            Some(Reason::StoreUnavailable)
        );
        let s = with_reason_and_retry(
            Code::ResourceExhausted,
            Reason::TenantRateLimited,
            "slow down",
            &[],
            std::time::Duration::from_millis(300),
        );
        assert_eq!(reason_of(&s).as_deref(), Some("TENANT_RATE_LIMITED"));
        assert_eq!(
            retry_after_of(&s),
            Some(std::time::Duration::from_millis(300))
        );
    }
}
