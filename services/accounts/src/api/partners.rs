//! Partners (BSPs): the operator creates, renames and suspends them; a partner sees itself.

use super::*;

pub(super) async fn create(
    api: &AccountsApi,
    request: Request<v1::CreatePartnerRequest>,
) -> Result<Response<v1::Partner>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p)?;
    let req = request.into_inner();
    let row = sqlx::query_as!(
        PartnerRow,
        "INSERT INTO accounts.partners (partner_id, name) VALUES ($1, $2) RETURNING partner_id, name, status, created_at",
        account_id("partner_id", &req.partner_id)?,
        name(&req.name)?
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("creating a partner", e))?;
    Ok(Response::new(row.into()))
}

pub(super) async fn list(
    api: &AccountsApi,
    request: Request<v1::ListPartnersRequest>,
) -> Result<Response<v1::ListPartnersResponse>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p)?;
    let req = request.into_inner();
    let size = page_size(req.page_size)?;
    let rows = sqlx::query_as!(
        PartnerRow,
        "SELECT partner_id, name, status, created_at FROM accounts.partners WHERE partner_id > $1 ORDER BY partner_id LIMIT $2",
        after(&req.page_token)?,
        size + 1
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing partners", e))?;
    let (rows, next_page_token) = paginate(rows, size, |r| &r.partner_id);
    Ok(Response::new(v1::ListPartnersResponse {
        partners: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    }))
}

pub(super) async fn set_status(
    api: &AccountsApi,
    request: Request<v1::SetPartnerStatusRequest>,
) -> Result<Response<v1::Partner>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p)?;
    let req = request.into_inner();
    let status_name = convert::status_name(req.status)?;
    let row = sqlx::query_as!(
        PartnerRow,
        "UPDATE accounts.partners SET status = $2 WHERE partner_id = $1 RETURNING partner_id, name, status, created_at",
        &req.partner_id,
        status_name
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("changing a partner", e))?
    .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
    api.announce(Kind::PartnerChanged, "", &row.partner_id, "", "")
        .await;
    Ok(Response::new(row.into()))
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetPartnerRequest>,
) -> Result<Response<v1::Partner>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    if !p.sees_partner(&req.partner_id) {
        return Err(not_found("partner_id", &req.partner_id));
    }
    p.require(Scope::Read)?;
    let row = api
        .partner_row(&req.partner_id)
        .await?
        .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
    Ok(Response::new(row.into()))
}

pub(super) async fn update(
    api: &AccountsApi,
    request: Request<v1::UpdatePartnerRequest>,
) -> Result<Response<v1::Partner>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p)?;
    let req = request.into_inner();
    let row = sqlx::query_as!(
        PartnerRow,
        "UPDATE accounts.partners SET name = $2 WHERE partner_id = $1 RETURNING partner_id, name, status, created_at",
        &req.partner_id,
        name(&req.name)?
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("renaming a partner", e))?
    .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
    Ok(Response::new(row.into()))
}
