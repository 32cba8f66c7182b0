//! A tenant's opt-out keywords (docs/rules.md §3): the words that, alone in a user's message,
//! stop or resume marketing, and what the tenant answers then. Ingest reads the words (within
//! its cache time); dispatch's auto-replier sends the answers.

use finestra_domain::opt_out::Keywords;

use super::*;

/// A tenant's keywords and replies as stored.
struct Row {
    tenant_id: String,
    stop_keywords: Vec<String>,
    start_keywords: Vec<String>,
    stop_reply: String,
    start_reply: String,
}

fn answer(r: Row) -> v1::OptOutKeywords {
    let effective = Keywords::of_tenant(&r.stop_keywords, &r.start_keywords);
    v1::OptOutKeywords {
        tenant_id: r.tenant_id,
        effective_stop_keywords: effective.stop().to_vec(),
        effective_start_keywords: effective.start().to_vec(),
        stop_keywords: r.stop_keywords,
        start_keywords: r.start_keywords,
        stop_reply: r.stop_reply,
        start_reply: r.start_reply,
    }
}

/// The longest reply.
const MAX_REPLY_CHARS: usize = 1_024;

pub(super) async fn set(
    api: &AccountsApi,
    request: Request<v1::SetOptOutKeywordsRequest>,
) -> Result<Response<v1::OptOutKeywords>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    Keywords::check(&req.stop_keywords, &req.start_keywords)
        .map_err(|e| status::invalid_argument("stop_keywords", e.to_string()))?;
    for (field, reply) in [
        ("stop_reply", &req.stop_reply),
        ("start_reply", &req.start_reply),
    ] {
        if reply.chars().count() > MAX_REPLY_CHARS {
            return Err(status::invalid_argument(
                field,
                format!("at most {MAX_REPLY_CHARS} characters"),
            ));
        }
    }
    let trimmed =
        |list: &[String]| -> Vec<String> { list.iter().map(|k| k.trim().to_owned()).collect() };
    let row = sqlx::query_as!(
        Row,
        "UPDATE accounts.tenants
            SET stop_keywords = $2, start_keywords = $3, stop_reply = $4, start_reply = $5
          WHERE tenant_id = $1
         RETURNING tenant_id, stop_keywords, start_keywords, stop_reply, start_reply",
        &req.tenant_id,
        &trimmed(&req.stop_keywords),
        &trimmed(&req.start_keywords),
        req.stop_reply.trim(),
        req.start_reply.trim()
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("setting opt-out keywords", e))?
    .ok_or_else(|| not_found("tenant_id", &req.tenant_id))?;
    Ok(Response::new(answer(row)))
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetOptOutKeywordsRequest>,
) -> Result<Response<v1::OptOutKeywords>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let row = sqlx::query_as!(
        Row,
        "SELECT tenant_id, stop_keywords, start_keywords, stop_reply, start_reply
           FROM accounts.tenants WHERE tenant_id = $1",
        &req.tenant_id
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("reading opt-out keywords", e))?
    .ok_or_else(|| not_found("tenant_id", &req.tenant_id))?;
    Ok(Response::new(answer(row)))
}
