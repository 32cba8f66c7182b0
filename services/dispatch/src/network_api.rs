//! What a tenant asks of the network beside sending (docs/architecture.md, "The network"):
//! read receipts with the typing indicator, and blocking users at the network. Each is one
//! call to the network, made for a number of the calling tenant.

use finestra_platform::status::{self, Reason, not_found, required};
use finestra_proto::v1::{
    BlockUsersRequest, BlockUsersResponse, MarkReadRequest, MarkReadResponse,
};
use finestra_provider::{Provider, ProviderError};
use tonic::{Code, Status};

use crate::facts::Facts;

/// Most users one BlockUsers call may name (the network's own limit).
const MAX_USERS: usize = 1_000;

/// A network failure as the tenant sees it.
pub fn provider_status(e: &ProviderError) -> Status {
    if e.reason == "RATE_LIMITED" {
        status::with_reason_and_retry(
            Code::ResourceExhausted,
            Reason::ProviderUnavailable,
            format!("the network's rate limit: {}", e.title),
            &[("provider_code", &e.code.to_string())],
            std::time::Duration::from_secs(1),
        )
    } else if e.retryable {
        status::with_reason_and_retry(
            Code::Unavailable,
            Reason::ProviderUnavailable,
            format!("the network did not answer: {}", e.title),
            &[],
            std::time::Duration::from_secs(1),
        )
    } else {
        status::with_reason(
            Code::FailedPrecondition,
            Reason::ProviderRefused,
            format!("the network refused it: {}", e.title),
            &[
                ("provider_code", &e.code.to_string()),
                ("provider_reason", e.reason),
            ],
        )
    }
}

/// The number, when it is the tenant's (NOT_FOUND otherwise, never telling whose it is).
pub(crate) async fn tenants_number(
    facts: &Facts,
    tenant_id: &str,
    phone_number_id: &str,
) -> Result<(), Status> {
    let id = required("phone_number_id", phone_number_id)?;
    let number = facts
        .number(id)
        .await
        .map_err(|e| status::store("reading a number", &e))?;
    // A suspended number does nothing at the network, as it sends nothing.
    match number {
        Some(n) if n.tenant_id == tenant_id && n.active => Ok(()),
        _ => Err(not_found("phone_number_id", id)),
    }
}

pub async fn mark_read(
    facts: &Facts,
    provider: &dyn Provider,
    req: MarkReadRequest,
) -> Result<MarkReadResponse, Status> {
    tenants_number(facts, &req.tenant_id, &req.phone_number_id).await?;
    let message_id = required("message_id", &req.message_id)?;
    provider
        .mark_read(&req.phone_number_id, message_id, req.typing_indicator)
        .await
        .map_err(|e| provider_status(&e))?;
    metrics::counter!("finestra_dispatch_read_receipts_total").increment(1);
    Ok(MarkReadResponse {})
}

pub async fn block_users(
    facts: &Facts,
    provider: &dyn Provider,
    req: BlockUsersRequest,
) -> Result<BlockUsersResponse, Status> {
    tenants_number(facts, &req.tenant_id, &req.phone_number_id).await?;
    let users: Vec<String> = req
        .users
        .iter()
        .map(|u| u.trim_start_matches('+').to_owned())
        .collect();
    if users.is_empty() || users.len() > MAX_USERS {
        return Err(status::invalid_argument(
            "users",
            format!("1 to {MAX_USERS} users"),
        ));
    }
    if let Some(bad) = users
        .iter()
        .find(|u| u.is_empty() || u.len() > 20 || !u.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(status::invalid_argument(
            "users",
            format!("{bad:?} is not a wa_id (digits, country code first)"),
        ));
    }
    let applied = provider
        .block_users(&req.phone_number_id, &users, !req.unblock)
        .await
        .map_err(|e| provider_status(&e))?;
    Ok(BlockUsersResponse { users: applied })
}
