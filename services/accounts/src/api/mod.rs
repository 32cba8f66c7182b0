//! The `AccountsService` RPCs. Every call is authenticated by `RequireKey`; each handler checks
//! reach (NOT_FOUND outside it) and scope (PERMISSION_DENIED) before touching data. The
//! handlers live by resource (partners, tenants, numbers, keys, templates); this module holds
//! what they share and the service's one table of RPCs.

use std::sync::Arc;

use finestra_domain::ids;
use finestra_platform::auth::{self, Authenticator, Owner, Principal, Scope};
use finestra_platform::kafka::{self, Outgoing};
use finestra_platform::paging::{after, page_size, paginate};
use finestra_platform::status::Reason;
use finestra_platform::status::{self, not_found, required};
use finestra_proto::v1::accounts_service_server::AccountsService;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{self, account_changed::Kind};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status};

use crate::convert::{self, NumberRow, PartnerRow, TenantRow};

mod keys;
mod keywords;
mod numbers;
mod partners;
mod template_calls;
mod tenants;

pub struct AccountsApi {
    pub pool: PgPool,
    pub auth: Authenticator,
    pub producer: FutureProducer,
    pub topic: String,
    pub key_prefix: String,
    /// The network, where templates are submitted.
    pub provider: Arc<dyn finestra_provider::Provider>,
}

/// What a tenant-level call needs of its key.
#[derive(Clone, Copy)]
enum Access {
    Scope(Scope),
    /// `admin`, and the tenant's partner or the operator (not the tenant itself).
    AboveTenant,
}

/// Why keys of an owner are being reached for.
#[derive(Clone, Copy)]
enum KeyUse {
    Create,
    /// Listing and revoking.
    Manage,
}

fn now() -> finestra_domain::Timestamp {
    finestra_domain::Clock::now(&finestra_platform::SystemClock)
}
const TIERS: [u32; 4] = [250, 2_000, 10_000, 100_000];
const UNLIMITED_TIER: u32 = u32::MAX;

fn db_error(context: &str, e: sqlx::Error) -> Status {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("23505") => {
                return status::with_reason(
                    Code::AlreadyExists,
                    Reason::AlreadyExists,
                    "it exists already",
                    &[],
                );
            }
            Some("23514") | Some("22001") => {
                // Inputs are checked before the store (docs/rules.md §10); this is the last
                // line, and a constraint's name tells a client nothing.
                tracing::warn!(error = %db, context, "a value passed the checks but not the schema");
                return status::with_reason(
                    Code::InvalidArgument,
                    Reason::InvalidArgument,
                    "a value is too long or not allowed here (docs/rules.md §10)",
                    &[],
                );
            }
            _ => {}
        }
    }
    status::store(context, &e)
}

fn registry_error(context: &str, e: finestra_registry::RegistryError) -> Status {
    match e {
        finestra_registry::RegistryError::Db(e) => db_error(context, e),
        finestra_registry::RegistryError::Invalid { field, reason } => {
            status::invalid_argument(field, reason)
        }
        finestra_registry::RegistryError::UnknownTenant(tenant) => {
            status::not_found("tenant_id", &tenant)
        }
        other @ (finestra_registry::RegistryError::TenantTaken(_)
        | finestra_registry::RegistryError::NumberTaken { .. }) => status::with_reason(
            Code::AlreadyExists,
            Reason::AlreadyExists,
            other.to_string(),
            &[],
        ),
    }
}

fn operator_only(p: &Principal) -> Result<(), Status> {
    if p.is_operator() {
        p.require(Scope::Admin)
    } else {
        Err(status::with_reason(
            Code::PermissionDenied,
            Reason::PermissionDenied,
            "only the operator may do this",
            &[],
        ))
    }
}

/// `value` when `ok` holds for it, else INVALID_ARGUMENT naming the field and its rule.
fn checked<'a>(
    field: &str,
    value: &'a str,
    ok: fn(&str) -> bool,
    rule: &str,
) -> Result<&'a str, Status> {
    if ok(value) {
        Ok(value)
    } else {
        Err(status::invalid_argument(field, format!("{field}: {rule}")))
    }
}

fn account_id<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    checked(field, value, ids::is_account_id, ids::ACCOUNT_ID_RULE)
}

fn network_id<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    checked(field, value, ids::is_network_id, ids::NETWORK_ID_RULE)
}

fn secret<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    checked(field, value, ids::is_secret, ids::SECRET_RULE)
}

fn name(value: &str) -> Result<&str, Status> {
    checked("name", value, ids::is_name, ids::NAME_RULE)
}

fn tier(n: u32) -> Result<Option<i32>, Status> {
    if n == UNLIMITED_TIER {
        return Ok(None);
    }
    let n = if n == 0 { 250 } else { n };
    if TIERS.contains(&n) {
        Ok(Some(i32::try_from(n).unwrap_or(250)))
    } else {
        Err(status::invalid_argument(
            "tier",
            "tier is 250, 2000, 10000, 100000 or unlimited",
        ))
    }
}

impl AccountsApi {
    /// Announces a change caches must drop; a lost announcement is bounded by the caches' TTL.
    async fn announce(
        &self,
        kind: Kind,
        tenant_id: &str,
        partner_id: &str,
        key_id: &str,
        number: &str,
    ) {
        let envelope = v1::Envelope {
            event_id: format!(
                "acct:{}:{tenant_id}:{partner_id}:{key_id}:{number}:{}",
                kind.as_str_name(),
                chrono::Utc::now().timestamp_micros()
            ),
            tenant_id: tenant_id.to_owned(),
            occurred_at: Some(convert::ts(chrono::Utc::now())),
            recorded_at: None,
            payload: Some(Payload::AccountChanged(v1::AccountChanged {
                kind: kind as i32,
                key_id: key_id.to_owned(),
                partner_id: partner_id.to_owned(),
                phone_number_id: number.to_owned(),
            })),
        };
        let record = Outgoing {
            traceparent: None,
            topic: &self.topic,
            key: tenant_id.to_owned(),
            envelope,
        };
        if let Err(e) = kafka::publish_all(&self.producer, std::slice::from_ref(&record)).await {
            tracing::warn!(error = %e, "announcing an accounts change failed; caches expire on their own");
        }
        self.auth.invalidate_keys();
        if !tenant_id.is_empty() {
            self.auth.invalidate_tenant(tenant_id).await;
        }
    }

    async fn partner_row(&self, partner_id: &str) -> Result<Option<PartnerRow>, Status> {
        sqlx::query_as!(
            PartnerRow,
            "SELECT partner_id, name, status, created_at FROM accounts.partners WHERE partner_id = $1",
            partner_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a partner", e))
    }

    /// The tenant if the principal reaches it (any status), else NOT_FOUND.
    async fn reachable_tenant(&self, p: &Principal, tenant_id: &str) -> Result<TenantRow, Status> {
        let row = sqlx::query_as!(
            TenantRow,
            "SELECT tenant_id, partner_id, name, status, tier, created_at, waba_id,
                    send_rate_per_second, send_burst, send_weight, marketing_cap, marketing_cap_days
               FROM accounts.tenants WHERE tenant_id = $1",
            tenant_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a tenant", e))?;
        match row {
            Some(t)
                if p.sees_tenant(&auth::TenantRef {
                    tenant_id: t.tenant_id.clone(),
                    partner_id: t.partner_id.clone(),
                }) =>
            {
                Ok(t)
            }
            _ => Err(not_found("tenant_id", tenant_id)),
        }
    }

    /// The request, once its key reaches the tenant it names and may act as `access` asks
    /// (a tenant out of reach is NOT_FOUND, never confirming it exists). The preamble of every
    /// tenant-level call.
    async fn tenant_request<T: auth::ForTenant>(
        &self,
        request: Request<T>,
        access: Access,
    ) -> Result<T, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        self.reachable_tenant(&p, req.tenant_id()).await?;
        match access {
            Access::Scope(scope) => p.require(scope)?,
            Access::AboveTenant => Self::above_tenant(&p)?,
        }
        Ok(req)
    }

    /// Tells the other services a number changed; answers it.
    async fn number_changed(&self, row: NumberRow) -> Response<v1::Number> {
        self.announce(
            Kind::NumberChanged,
            &row.tenant_id,
            "",
            "",
            &row.phone_number_id,
        )
        .await;
        Response::new(row.into())
    }

    /// Tells the other services a tenant changed; answers it.
    async fn tenant_changed(&self, row: TenantRow) -> Response<v1::Tenant> {
        self.announce(Kind::TenantChanged, &row.tenant_id, &row.partner_id, "", "")
            .await;
        Response::new(row.into())
    }

    /// Changing a tenant itself (tier, status) is for its partner or the operator.
    fn above_tenant(p: &Principal) -> Result<(), Status> {
        match p.owner {
            Owner::Tenant { .. } => Err(status::with_reason(
                Code::PermissionDenied,
                Reason::PermissionDenied,
                "a tenant key cannot change its own tenant",
                &[],
            )),
            _ => p.require(Scope::Admin),
        }
    }
}

#[tonic::async_trait]
impl AccountsService for AccountsApi {
    async fn create_partner(
        &self,
        request: Request<v1::CreatePartnerRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        partners::create(self, request).await
    }

    async fn list_partners(
        &self,
        request: Request<v1::ListPartnersRequest>,
    ) -> Result<Response<v1::ListPartnersResponse>, Status> {
        partners::list(self, request).await
    }

    async fn set_partner_status(
        &self,
        request: Request<v1::SetPartnerStatusRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        partners::set_status(self, request).await
    }

    async fn get_partner(
        &self,
        request: Request<v1::GetPartnerRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        partners::get(self, request).await
    }

    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        tenants::create(self, request).await
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        tenants::list(self, request).await
    }

    async fn update_tenant(
        &self,
        request: Request<v1::UpdateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        tenants::update(self, request).await
    }

    async fn set_opt_out_keywords(
        &self,
        request: Request<v1::SetOptOutKeywordsRequest>,
    ) -> Result<Response<v1::OptOutKeywords>, Status> {
        keywords::set(self, request).await
    }

    async fn get_opt_out_keywords(
        &self,
        request: Request<v1::GetOptOutKeywordsRequest>,
    ) -> Result<Response<v1::OptOutKeywords>, Status> {
        keywords::get(self, request).await
    }

    async fn set_tenant_limits(
        &self,
        request: Request<v1::SetTenantLimitsRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        tenants::set_limits(self, request).await
    }

    async fn set_tenant_status(
        &self,
        request: Request<v1::SetTenantStatusRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        tenants::set_status(self, request).await
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        tenants::get(self, request).await
    }

    async fn add_number(
        &self,
        request: Request<v1::AddNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        numbers::add(self, request).await
    }

    async fn list_numbers(
        &self,
        request: Request<v1::ListNumbersRequest>,
    ) -> Result<Response<v1::ListNumbersResponse>, Status> {
        numbers::list(self, request).await
    }

    async fn rotate_number_secret(
        &self,
        request: Request<v1::RotateNumberSecretRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        numbers::rotate_secret(self, request).await
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreatedApiKey>, Status> {
        keys::create(self, request).await
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        keys::list(self, request).await
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::ApiKey>, Status> {
        keys::revoke(self, request).await
    }

    async fn update_partner(
        &self,
        request: Request<v1::UpdatePartnerRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        partners::update(self, request).await
    }

    async fn get_number(
        &self,
        request: Request<v1::GetNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        numbers::get(self, request).await
    }

    async fn get_number_health(
        &self,
        request: Request<v1::GetNumberHealthRequest>,
    ) -> Result<Response<v1::NumberHealth>, Status> {
        numbers::health(self, request).await
    }

    async fn update_number(
        &self,
        request: Request<v1::UpdateNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        numbers::update(self, request).await
    }

    async fn set_number_status(
        &self,
        request: Request<v1::SetNumberStatusRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        numbers::set_status(self, request).await
    }

    async fn create_template(
        &self,
        request: Request<v1::CreateTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::create(self, request).await
    }

    async fn get_template(
        &self,
        request: Request<v1::GetTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::get(self, request).await
    }

    async fn list_templates(
        &self,
        request: Request<v1::ListTemplatesRequest>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        template_calls::list(self, request).await
    }

    async fn delete_template(
        &self,
        request: Request<v1::DeleteTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::delete(self, request).await
    }

    async fn review_template(
        &self,
        request: Request<v1::ReviewTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::review(self, request).await
    }

    async fn edit_template(
        &self,
        request: Request<v1::EditTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::edit(self, request).await
    }

    async fn submit_template(
        &self,
        request: Request<v1::SubmitTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        template_calls::submit(self, request).await
    }

    async fn sync_templates(
        &self,
        request: Request<v1::SyncTemplatesRequest>,
    ) -> Result<Response<v1::SyncTemplatesResponse>, Status> {
        template_calls::sync(self, request).await
    }
}
