//! What dispatch's own code below the gRPC edge can fail with, and its one mapping to a gRPC
//! status (docs/rules.md §8): a bad request keeps its precise code, a store that did not answer
//! is `UNAVAILABLE` with retry info, anything else `INTERNAL` without internals.

use finestra_platform::status::{self, RequestError};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A Cloud API endpoint did not pass the verification handshake.
    #[error("the endpoint did not pass the verification handshake: {0}")]
    NotVerified(String),
}

impl DispatchError {
    /// A `map_err` for a store call made while `context`.
    pub fn store(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Store { context, source }
    }
}

impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Request(r) => r.into(),
            DispatchError::Store { context, source } => status::store(context, &source),
            e @ DispatchError::NotVerified(_) => status::with_reason(
                tonic::Code::FailedPrecondition,
                status::Reason::WebhookNotVerified,
                e.to_string(),
                &[],
            ),
        }
    }
}
