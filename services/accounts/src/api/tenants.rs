//! Tenants (businesses): created by their partner; tier, limits and status set from above.

use super::*;

pub(super) async fn create(
    api: &AccountsApi,
    request: Request<v1::CreateTenantRequest>,
) -> Result<Response<v1::Tenant>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    if !p.sees_partner(&req.partner_id) || api.partner_row(&req.partner_id).await?.is_none() {
        return Err(not_found("partner_id", &req.partner_id));
    }
    p.require(Scope::Admin)?;
    let row = sqlx::query_as!(
        TenantRow,
        "INSERT INTO accounts.tenants (partner_id, tenant_id, name, tier, waba_id)
         VALUES ($1, $2, $3, $4, nullif($5::text, ''))
         RETURNING tenant_id, partner_id, name, status, tier, created_at, waba_id,
                   send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days",
        &req.partner_id,
        account_id("tenant_id", &req.tenant_id)?,
        name(&req.name)?,
        tier(req.tier)?,
        if req.waba_id.is_empty() {
            ""
        } else {
            network_id("waba_id", &req.waba_id)?
        }
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("creating a tenant", e))?;
    Ok(api.tenant_changed(row).await)
}

pub(super) async fn list(
    api: &AccountsApi,
    request: Request<v1::ListTenantsRequest>,
) -> Result<Response<v1::ListTenantsResponse>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    if !p.sees_partner(&req.partner_id) {
        return Err(not_found("partner_id", &req.partner_id));
    }
    p.require(Scope::Read)?;
    let size = page_size(req.page_size)?;
    let rows = sqlx::query_as!(
        TenantRow,
        "SELECT tenant_id, partner_id, name, status, tier, created_at, waba_id,
                send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days
           FROM accounts.tenants WHERE partner_id = $1 AND tenant_id > $2 ORDER BY tenant_id LIMIT $3",
        &req.partner_id,
        after(&req.page_token)?,
        size + 1
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing tenants", e))?;
    let (rows, next_page_token) = paginate(rows, size, |r| &r.tenant_id);
    Ok(Response::new(v1::ListTenantsResponse {
        tenants: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    }))
}

pub(super) async fn update(
    api: &AccountsApi,
    request: Request<v1::UpdateTenantRequest>,
) -> Result<Response<v1::Tenant>, Status> {
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let new_tier = if req.tier == 0 {
        None
    } else {
        Some(tier(req.tier)?)
    };
    if !req.name.is_empty() {
        name(&req.name)?;
    }
    let row = sqlx::query_as!(
        TenantRow,
        "UPDATE accounts.tenants SET name = coalesce(nullif($2::text, ''), name),
                tier = CASE WHEN $3::boolean THEN $4::integer ELSE tier END
         WHERE tenant_id = $1
         RETURNING tenant_id, partner_id, name, status, tier, created_at, waba_id,
                   send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days",
        &req.tenant_id,
        &req.name,
        new_tier.is_some(),
        new_tier.flatten()
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("updating a tenant", e))?;
    Ok(api.tenant_changed(row).await)
}

pub(super) async fn set_limits(
    api: &AccountsApi,
    request: Request<v1::SetTenantLimitsRequest>,
) -> Result<Response<v1::Tenant>, Status> {
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let wanted = req.limits.unwrap_or_default();
    let limits = finestra_domain::fairness::TenantLimits {
        rate_per_second: wanted.send_rate_per_second,
        burst: wanted.send_burst,
        weight: wanted.weight,
    };
    limits
        .validate()
        .map_err(|e| status::invalid_argument(e.field(), e.to_string()))?;
    if wanted.marketing_cap_per_user > 1_000 {
        return Err(status::invalid_argument(
            "limits.marketing_cap_per_user",
            "0 (the default) to 1000",
        ));
    }
    if wanted.marketing_cap_days > 90 {
        return Err(status::invalid_argument(
            "limits.marketing_cap_days",
            "0 (the default) to 90",
        ));
    }
    let as_column = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let row = sqlx::query_as!(
        TenantRow,
        "UPDATE accounts.tenants
            SET send_rate_per_second = $2, send_burst = $3, send_weight = $4,
                marketing_cap = $5, marketing_cap_days = $6
          WHERE tenant_id = $1
         RETURNING tenant_id, partner_id, name, status, tier, created_at, waba_id,
                   send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days",
        &req.tenant_id,
        as_column(limits.rate_per_second),
        as_column(limits.burst),
        as_column(limits.weight),
        as_column(wanted.marketing_cap_per_user),
        as_column(wanted.marketing_cap_days)
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("setting a tenant's limits", e))?;
    tracing::info!(
        tenant_id = %row.tenant_id,
        rate = limits.rate_per_second,
        burst = limits.burst,
        weight = limits.weight,
        "tenant limits set"
    );
    Ok(api.tenant_changed(row).await)
}

pub(super) async fn set_status(
    api: &AccountsApi,
    request: Request<v1::SetTenantStatusRequest>,
) -> Result<Response<v1::Tenant>, Status> {
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let status_name = convert::status_name(req.status)?;
    let row = sqlx::query_as!(
        TenantRow,
        "UPDATE accounts.tenants SET status = $2 WHERE tenant_id = $1
         RETURNING tenant_id, partner_id, name, status, tier, created_at, waba_id,
                   send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days",
        &req.tenant_id,
        status_name
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("changing a tenant", e))?;
    Ok(api.tenant_changed(row).await)
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetTenantRequest>,
) -> Result<Response<v1::Tenant>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let row = api.reachable_tenant(&p, &req.tenant_id).await?;
    p.require(Scope::Read)?;
    Ok(Response::new(row.into()))
}
