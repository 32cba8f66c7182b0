//! A tenant's opt-out keywords (docs/rules.md §3): the words that, alone in a user's message,
//! stop or resume marketing. Ingest reads them (within its cache time).

use finestra_domain::opt_out::Keywords;

use super::*;

fn answer(tenant_id: String, stop: Vec<String>, start: Vec<String>) -> v1::OptOutKeywords {
    let effective = Keywords::of_tenant(&stop, &start);
    v1::OptOutKeywords {
        tenant_id,
        effective_stop_keywords: effective.stop().to_vec(),
        effective_start_keywords: effective.start().to_vec(),
        stop_keywords: stop,
        start_keywords: start,
    }
}

pub(super) async fn set(
    api: &AccountsApi,
    request: Request<v1::SetOptOutKeywordsRequest>,
) -> Result<Response<v1::OptOutKeywords>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    Keywords::check(&req.stop_keywords, &req.start_keywords)
        .map_err(|e| status::invalid_argument("stop_keywords", e.to_string()))?;
    let trimmed =
        |list: &[String]| -> Vec<String> { list.iter().map(|k| k.trim().to_owned()).collect() };
    let row = sqlx::query!(
        "UPDATE accounts.tenants SET stop_keywords = $2, start_keywords = $3
          WHERE tenant_id = $1
         RETURNING tenant_id, stop_keywords, start_keywords",
        &req.tenant_id,
        &trimmed(&req.stop_keywords),
        &trimmed(&req.start_keywords)
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("setting opt-out keywords", e))?
    .ok_or_else(|| not_found("tenant_id", &req.tenant_id))?;
    Ok(Response::new(answer(
        row.tenant_id,
        row.stop_keywords,
        row.start_keywords,
    )))
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetOptOutKeywordsRequest>,
) -> Result<Response<v1::OptOutKeywords>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let row = sqlx::query!(
        "SELECT tenant_id, stop_keywords, start_keywords FROM accounts.tenants
          WHERE tenant_id = $1",
        &req.tenant_id
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("reading opt-out keywords", e))?
    .ok_or_else(|| not_found("tenant_id", &req.tenant_id))?;
    Ok(Response::new(answer(
        row.tenant_id,
        row.stop_keywords,
        row.start_keywords,
    )))
}
