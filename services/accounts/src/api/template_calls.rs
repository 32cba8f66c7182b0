//! Message templates: created by the tenant, reviewed by the network (or an operator).

use super::*;
use crate::templates::TemplateError;

pub(super) async fn create(
    api: &AccountsApi,
    request: Request<v1::CreateTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    // Templates belong to a business account at the network: none, no template.
    crate::submissions::waba_of(&api.pool, &req.tenant_id).await?;
    let row = crate::templates::create(&api.pool, &req).await?;
    match crate::submissions::submit(
        &api.pool,
        api.provider.as_ref(),
        &req.tenant_id,
        &row.template_id,
        crate::submissions::OnRefusal::Discard,
    )
    .await
    {
        Ok(row) => Ok(Response::new(row.wire(now()))),
        // Kept, not submitted: the background submitter (or SubmitTemplate) submits it.
        Err(TemplateError::ProviderUnavailable(why)) => {
            tracing::warn!(template_id = %row.template_id, %why, "template kept unsubmitted");
            Ok(Response::new(row.wire(now())))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn edit(
    api: &AccountsApi,
    request: Request<v1::EditTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    let row = crate::submissions::edit(&api.pool, api.provider.as_ref(), &req).await?;
    Ok(Response::new(row.wire(now())))
}

pub(super) async fn submit(
    api: &AccountsApi,
    request: Request<v1::SubmitTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    let row = crate::submissions::submit(
        &api.pool,
        api.provider.as_ref(),
        &req.tenant_id,
        &req.template_id,
        crate::submissions::OnRefusal::Reject,
    )
    .await?;
    Ok(Response::new(row.wire(now())))
}

pub(super) async fn sync(
    api: &AccountsApi,
    request: Request<v1::SyncTemplatesRequest>,
) -> Result<Response<v1::SyncTemplatesResponse>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    let report = crate::submissions::sync(&api.pool, api.provider.as_ref(), &req.tenant_id).await?;
    let rows = sqlx::query_as!(
        crate::templates::TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates WHERE tenant_id = $1 AND deleted_at IS NULL
         ORDER BY template_id",
        &req.tenant_id
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing templates", e))?;
    let now = now();
    Ok(Response::new(v1::SyncTemplatesResponse {
        templates: rows.into_iter().map(|r| r.wire(now)).collect(),
        updated: report.updated,
        removed: report.removed,
        adopted: report.adopted,
        submitted: report.submitted,
    }))
}

pub(super) async fn get(
    api: &AccountsApi,
    request: Request<v1::GetTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let row = crate::templates::get(&api.pool, &req.tenant_id, &req.template_id).await?;
    Ok(Response::new(row.wire(now())))
}

pub(super) async fn list(
    api: &AccountsApi,
    request: Request<v1::ListTemplatesRequest>,
) -> Result<Response<v1::ListTemplatesResponse>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Read))
        .await?;
    let size = page_size(req.page_size)?;
    let rows = sqlx::query_as!(
        crate::templates::TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates WHERE tenant_id = $1 AND deleted_at IS NULL AND template_id > $2
         ORDER BY template_id LIMIT $3",
        &req.tenant_id,
        after(&req.page_token)?,
        size + 1
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing templates", e))?;
    let (rows, next_page_token) = paginate(rows, size, |r| &r.template_id);
    let now = now();
    Ok(Response::new(v1::ListTemplatesResponse {
        templates: rows.into_iter().map(|r| r.wire(now)).collect(),
        next_page_token,
    }))
}

pub(super) async fn delete(
    api: &AccountsApi,
    request: Request<v1::DeleteTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let req = api
        .tenant_request(request, Access::Scope(Scope::Admin))
        .await?;
    let row = sqlx::query_as!(
        crate::templates::TemplateRow,
        // Idempotent: deleting again answers the deleted template.
        "UPDATE accounts.templates SET deleted_at = coalesce(deleted_at, now())
         WHERE tenant_id = $1 AND template_id = $2
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        &req.tenant_id,
        &req.template_id
    )
    .fetch_optional(&api.pool)
    .await
    .map_err(|e| db_error("deleting a template", e))?
    .ok_or_else(|| not_found("template_id", &req.template_id))?;
    // Gone here at once; at the network now, or later by the background submitter.
    if let Err(e) = crate::submissions::delete_remote(&api.pool, api.provider.as_ref(), &row).await
    {
        tracing::warn!(template_id = %row.template_id, error = %e, "template deleted here, not yet at the network");
    }
    Ok(Response::new(row.wire(now())))
}

pub(super) async fn review(
    api: &AccountsApi,
    request: Request<v1::ReviewTemplateRequest>,
) -> Result<Response<v1::Template>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p)?;
    let req = request.into_inner();
    let review = crate::templates::parse_review(&req.event, &req.new_category)?;
    let at = req
        .reviewed_at
        .as_ref()
        .map(|t| finestra_domain::Timestamp::from_micros(finestra_proto::time::to_micros(t)))
        .unwrap_or_else(now);
    let row = crate::templates::review(&api.pool, &req.tenant_id, &req.template_id, review, "", at)
        .await?;
    Ok(Response::new(row.wire(now())))
}

/// The one mapping of template errors to gRPC statuses.
impl From<TemplateError> for Status {
    fn from(e: TemplateError) -> Status {
        match &e {
            TemplateError::Invalid { field, rule } => status::invalid_argument(field, *rule),
            TemplateError::InvalidTemplate { name, .. } => status::with_reason(
                Code::InvalidArgument,
                Reason::InvalidTemplate,
                e.to_string(),
                &[("name", name)],
            ),
            TemplateError::Duplicate { name, language } => status::with_reason(
                Code::AlreadyExists,
                Reason::AlreadyExists,
                e.to_string(),
                &[("name", name), ("language", language)],
            ),
            TemplateError::NotFound { template_id } => {
                status::not_found("template_id", template_id)
            }
            TemplateError::Transition { template_id, .. } => status::with_reason(
                Code::FailedPrecondition,
                Reason::InvalidTransition,
                e.to_string(),
                &[("template_id", template_id)],
            ),
            TemplateError::NotEditable { template_id, .. } => status::with_reason(
                Code::FailedPrecondition,
                Reason::InvalidTransition,
                e.to_string(),
                &[("template_id", template_id)],
            ),
            TemplateError::NoBusinessAccount => status::with_reason(
                Code::FailedPrecondition,
                Reason::NoBusinessAccount,
                e.to_string(),
                &[],
            ),
            TemplateError::ProviderRefused { code, .. } => status::with_reason(
                Code::FailedPrecondition,
                Reason::ProviderRefused,
                e.to_string(),
                &[("provider_code", &code.to_string())],
            ),
            TemplateError::ProviderUnavailable(_) => status::with_reason(
                Code::Unavailable,
                Reason::ProviderUnavailable,
                e.to_string(),
                &[],
            ),
            TemplateError::Store(db) => status::store("a template", db),
        }
    }
}
