//! SendMessages: a bulk sender's batch, each message decided as SendMessage decides it and
//! answered on its own (docs/rules.md §8 for the refusals).

use finestra_platform::status::{self, RequestError};
use finestra_proto::v1::send_message_result::Outcome;
use finestra_proto::v1::{SendMessageRequest, SendMessageResponse, SendMessageResult, SendRefusal};
use tonic::Status;
use tonic_types::StatusExt;

/// The most messages one call may carry.
pub const MAX_MESSAGES: usize = 1_000;

/// Messages of one batch decided at once: enough to fill an acceptance group commit, few
/// enough that one batch does not take every admission slot of its tenant at once.
pub const CONCURRENCY: usize = 64;

/// Checks the batch's shape (the only thing that fails the whole call).
pub fn check_size(count: usize) -> Result<(), RequestError> {
    if count == 0 || count > MAX_MESSAGES {
        return Err(RequestError::invalid(
            "messages",
            format!("a batch carries 1..{MAX_MESSAGES} messages"),
        ));
    }
    Ok(())
}

/// A message of the batch as SendMessage would take it: its tenant is the batch's. A message
/// naming another tenant is refused on its own.
pub fn own_message(
    batch_tenant: &str,
    mut message: SendMessageRequest,
) -> Result<SendMessageRequest, RequestError> {
    if message.tenant_id.is_empty() {
        message.tenant_id = batch_tenant.to_owned();
    }
    if message.tenant_id != batch_tenant {
        return Err(RequestError::invalid(
            "tenant_id",
            "a message of a batch belongs to the batch's tenant",
        ));
    }
    Ok(message)
}

/// One message's answer, from what SendMessage would have answered.
pub fn result(answer: Result<SendMessageResponse, Status>) -> SendMessageResult {
    let outcome = match answer {
        Ok(accepted) => Outcome::Accepted(accepted),
        Err(refused) => Outcome::Refused(refusal(&refused)),
    };
    SendMessageResult {
        outcome: Some(outcome),
    }
}

/// A status as a batch reports it: its code, reason, metadata and retry delay.
pub fn refusal(s: &Status) -> SendRefusal {
    let info = s.get_details_error_info();
    SendRefusal {
        code: s.code() as i32,
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        message: s.message().to_owned(),
        metadata: info.map(|i| i.metadata).unwrap_or_default(),
        retry_after_ms: status::retry_after_of(s)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_platform::status::{Reason, with_reason_and_retry};
    use tonic::Code;

    #[test]
    fn a_batch_carries_one_to_a_thousand_messages() {
        assert!(check_size(0).is_err());
        assert!(check_size(1).is_ok());
        assert!(check_size(MAX_MESSAGES).is_ok());
        assert!(check_size(MAX_MESSAGES + 1).is_err());
    }

    #[test]
    fn a_message_belongs_to_the_batch_tenant() {
        let m = own_message("acme", SendMessageRequest::default()).unwrap();
        assert_eq!(m.tenant_id, "acme");
        let other = SendMessageRequest {
            tenant_id: "other".into(),
            ..Default::default()
        };
        assert!(own_message("acme", other).is_err());
    }

    #[test]
    fn a_refusal_keeps_the_code_reason_metadata_and_retry() {
        let s = with_reason_and_retry(
            Code::ResourceExhausted,
            Reason::TenantRateLimited,
            "slow down",
            &[("tenant_id", "acme")],
            std::time::Duration::from_millis(250),
        );
        let r = refusal(&s);
        assert_eq!(r.code, Code::ResourceExhausted as i32);
        assert_eq!(r.reason, "TENANT_RATE_LIMITED");
        assert_eq!(
            r.metadata.get("tenant_id").map(String::as_str),
            Some("acme")
        );
        assert_eq!(r.retry_after_ms, 250);
        assert_eq!(r.message, "slow down");
    }
}
