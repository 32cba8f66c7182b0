//! A tenant's business numbers and their webhook signing secrets.

use super::*;

pub(super) async fn add(
    api: &AccountsApi,
    request: Request<v1::AddNumberRequest>,
) -> Result<Response<v1::Number>, Status> {
    // Webhook secrets belong to the partner's provider app: a tenant setting its own
    // could sign webhooks for itapi.
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let throughput = match req.throughput_per_second {
        0 => 80,
        n @ 1..=1_000 => i32::try_from(n).unwrap_or(80),
        _ => {
            return Err(status::invalid_argument(
                "throughput_per_second",
                "1..1000 messages per second",
            ));
        }
    };
    let row = sqlx::query_as!(
        NumberRow,
        "INSERT INTO accounts.numbers (phone_number_id, tenant_id, display_phone_number, app_secret, throughput_per_second)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                   previous_secret_valid_until",
        network_id("phone_number_id", &req.phone_number_id)?,
        &req.tenant_id,
        required("display_phone_number", &req.display_phone_number)?,
        secret("app_secret", &req.app_secret)?,
        throughput
    )
    .fetch_one(&api.pool)
    .await
    .map_err(|e| db_error("adding a number", e))?;
    Ok(api.number_changed(row).await)
}

pub(super) async fn list(
    api: &AccountsApi,
    request: Request<v1::ListNumbersRequest>,
) -> Result<Response<v1::ListNumbersResponse>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let size = page_size(req.page_size)?;
    let rows = sqlx::query_as!(
        NumberRow,
        "SELECT phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                previous_secret_valid_until
           FROM accounts.numbers WHERE tenant_id = $1 AND phone_number_id > $2
         ORDER BY phone_number_id LIMIT $3",
        &req.tenant_id,
        after(&req.page_token)?,
        size + 1
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing numbers", e))?;
    let (rows, next_page_token) = paginate(rows, size, |r| &r.phone_number_id);
    Ok(Response::new(v1::ListNumbersResponse {
        numbers: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    }))
}

pub(super) async fn rotate_secret(
    api: &AccountsApi,
    request: Request<v1::RotateNumberSecretRequest>,
) -> Result<Response<v1::Number>, Status> {
    // Webhook secrets belong to the partner's provider app: a tenant setting its own
    // could sign webhooks for itapi.
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let overlap = match req.overlap_seconds {
        0 => 24 * 3600,
        n if n <= 7 * 24 * 3600 => i64::from(n),
        _ => {
            return Err(status::invalid_argument(
                "overlap_seconds",
                "at most 7 days",
            ));
        }
    };
    let row = sqlx::query_as!(
        NumberRow,
        "UPDATE accounts.numbers SET previous_app_secret = app_secret, app_secret = $3,
                previous_secret_valid_until = now() + $4::bigint * interval '1 second'
         WHERE tenant_id = $1 AND phone_number_id = $2
         RETURNING phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                   previous_secret_valid_until",
        &req.tenant_id,
        &req.phone_number_id,
        secret("new_app_secret", &req.new_app_secret)?,
        overlap
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("rotating a secret", e))?
    .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
    Ok(api.number_changed(row).await)
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetNumberRequest>,
) -> Result<Response<v1::Number>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let row = sqlx::query_as!(
        NumberRow,
        "SELECT phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                previous_secret_valid_until
           FROM accounts.numbers WHERE tenant_id = $1 AND phone_number_id = $2",
        &req.tenant_id,
        &req.phone_number_id
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("reading a number", e))?
    .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
    Ok(Response::new(row.into()))
}

pub(super) async fn health(
    api: &AccountsApi,
    request: Request<v1::GetNumberHealthRequest>,
) -> Result<Response<v1::NumberHealth>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let row = sqlx::query!(
        "SELECT n.phone_number_id, n.tenant_id, n.quality_rating, n.messaging_limit,
                n.health_event, n.health_at, t.tier, t.account_status, t.account_detail,
                t.account_status_at
           FROM accounts.numbers n JOIN accounts.tenants t USING (tenant_id)
          WHERE n.tenant_id = $1 AND n.phone_number_id = $2",
        &req.tenant_id,
        &req.phone_number_id
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("reading a number's health", e))?
    .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
    Ok(Response::new(v1::NumberHealth {
        tenant_id: row.tenant_id,
        phone_number_id: row.phone_number_id,
        quality_rating: row.quality_rating,
        messaging_limit: row.messaging_limit,
        quality_event: row.health_event,
        quality_event_at: row.health_at.map(convert::ts),
        tier: row.tier.map_or(0, |t| u32::try_from(t).unwrap_or(0)),
        account_status: row.account_status,
        account_detail: row.account_detail,
        account_status_at: row.account_status_at.map(convert::ts),
    }))
}

pub(super) async fn update(
    api: &AccountsApi,
    request: Request<v1::UpdateNumberRequest>,
) -> Result<Response<v1::Number>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    let throughput = match req.throughput_per_second {
        0 => None,
        n @ 1..=1_000 => Some(i32::try_from(n).unwrap_or(80)),
        _ => {
            return Err(status::invalid_argument(
                "throughput_per_second",
                "1..1000 messages per second",
            ));
        }
    };
    let row = sqlx::query_as!(
        NumberRow,
        "UPDATE accounts.numbers SET display_phone_number = coalesce(nullif($3::text, ''), display_phone_number),
                throughput_per_second = coalesce($4::integer, throughput_per_second)
         WHERE tenant_id = $1 AND phone_number_id = $2
         RETURNING phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                   previous_secret_valid_until",
        &req.tenant_id,
        &req.phone_number_id,
        &req.display_phone_number,
        throughput
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("updating a number", e))?
    .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
    Ok(api.number_changed(row).await)
}

pub(super) async fn set_status(
    api: &AccountsApi,
    request: Request<v1::SetNumberStatusRequest>,
) -> Result<Response<v1::Number>, Status> {
    let req = api.tenant_request(request, Access::AboveTenant).await?;
    let status_name = convert::status_name(req.status)?;
    let row = sqlx::query_as!(
        NumberRow,
        "UPDATE accounts.numbers SET status = $3 WHERE tenant_id = $1 AND phone_number_id = $2
         RETURNING phone_number_id, tenant_id, display_phone_number, throughput_per_second, status,
                   previous_secret_valid_until",
        &req.tenant_id,
        &req.phone_number_id,
        status_name
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("changing a number", e))?
    .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
    Ok(api.number_changed(row).await)
}
