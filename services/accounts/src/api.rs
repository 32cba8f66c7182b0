//! The `AccountsService` RPCs. Every call is authenticated by `RequireKey`; each handler checks
//! reach (NOT_FOUND outside it) and scope (PERMISSION_DENIED) before touching data.

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

pub struct AccountsApi {
    pub pool: PgPool,
    pub auth: Authenticator,
    pub producer: FutureProducer,
    pub topic: String,
    pub key_prefix: String,
}

/// Why keys of an owner are being reached for.
/// What a tenant-level call needs of its key.
#[derive(Clone, Copy)]
enum Access {
    Scope(Scope),
    /// `admin`, and the tenant's partner or the operator (not the tenant itself).
    AboveTenant,
}

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

const TENANT_COLUMNS: &str = "tenant_id, partner_id, name, status, tier, created_at, waba_id, send_rate_per_second, send_burst, send_weight";
const NUMBER_COLUMNS: &str = "phone_number_id, tenant_id, display_phone_number, throughput_per_second, status, previous_secret_valid_until";

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
        sqlx::query_as::<_, PartnerRow>("SELECT partner_id, name, status, created_at FROM accounts.partners WHERE partner_id = $1")
            .bind(partner_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading a partner", e))
    }

    /// The tenant if the principal reaches it (any status), else NOT_FOUND.
    async fn reachable_tenant(&self, p: &Principal, tenant_id: &str) -> Result<TenantRow, Status> {
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "SELECT {TENANT_COLUMNS} FROM accounts.tenants WHERE tenant_id = $1"
        ))
        .bind(tenant_id)
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
        let p = auth::principal(&request)?;
        operator_only(&p)?;
        let req = request.into_inner();
        let row = sqlx::query_as::<_, PartnerRow>(
            "INSERT INTO accounts.partners (partner_id, name) VALUES ($1, $2) RETURNING partner_id, name, status, created_at",
        )
        .bind(account_id("partner_id", &req.partner_id)?)
        .bind(name(&req.name)?)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("creating a partner", e))?;
        Ok(Response::new(row.into()))
    }

    async fn list_partners(
        &self,
        request: Request<v1::ListPartnersRequest>,
    ) -> Result<Response<v1::ListPartnersResponse>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let rows = sqlx::query_as::<_, PartnerRow>(
            "SELECT partner_id, name, status, created_at FROM accounts.partners WHERE partner_id > $1 ORDER BY partner_id LIMIT $2",
        )
        .bind(after(&req.page_token)?)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing partners", e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.partner_id);
        Ok(Response::new(v1::ListPartnersResponse {
            partners: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn set_partner_status(
        &self,
        request: Request<v1::SetPartnerStatusRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p)?;
        let req = request.into_inner();
        let status_name = convert::status_name(req.status)?;
        let row = sqlx::query_as::<_, PartnerRow>(
            "UPDATE accounts.partners SET status = $2 WHERE partner_id = $1 RETURNING partner_id, name, status, created_at",
        )
        .bind(&req.partner_id)
        .bind(status_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("changing a partner", e))?
        .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
        self.announce(Kind::PartnerChanged, "", &row.partner_id, "", "")
            .await;
        Ok(Response::new(row.into()))
    }

    async fn get_partner(
        &self,
        request: Request<v1::GetPartnerRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        if !p.sees_partner(&req.partner_id) {
            return Err(not_found("partner_id", &req.partner_id));
        }
        p.require(Scope::Read)?;
        let row = self
            .partner_row(&req.partner_id)
            .await?
            .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
        Ok(Response::new(row.into()))
    }

    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        if !p.sees_partner(&req.partner_id) || self.partner_row(&req.partner_id).await?.is_none() {
            return Err(not_found("partner_id", &req.partner_id));
        }
        p.require(Scope::Admin)?;
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "INSERT INTO accounts.tenants (partner_id, tenant_id, name, tier, waba_id) VALUES ($1, $2, $3, $4, nullif($5, '')) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&req.partner_id)
        .bind(account_id("tenant_id", &req.tenant_id)?)
        .bind(name(&req.name)?)
        .bind(tier(req.tier)?)
        .bind(if req.waba_id.is_empty() {
            ""
        } else {
            network_id("waba_id", &req.waba_id)?
        })
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("creating a tenant", e))?;
        Ok(self.tenant_changed(row).await)
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        if !p.sees_partner(&req.partner_id) {
            return Err(not_found("partner_id", &req.partner_id));
        }
        p.require(Scope::Read)?;
        let size = page_size(req.page_size)?;
        let rows = sqlx::query_as::<_, TenantRow>(&format!(
            "SELECT {TENANT_COLUMNS} FROM accounts.tenants WHERE partner_id = $1 AND tenant_id > $2 ORDER BY tenant_id LIMIT $3"
        ))
        .bind(&req.partner_id)
        .bind(after(&req.page_token)?)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing tenants", e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.tenant_id);
        Ok(Response::new(v1::ListTenantsResponse {
            tenants: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<v1::UpdateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let req = self.tenant_request(request, Access::AboveTenant).await?;
        let new_tier = if req.tier == 0 {
            None
        } else {
            Some(tier(req.tier)?)
        };
        if !req.name.is_empty() {
            name(&req.name)?;
        }
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "UPDATE accounts.tenants SET name = coalesce(nullif($2, ''), name),
                    tier = CASE WHEN $3 THEN $4 ELSE tier END
             WHERE tenant_id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(&req.name)
        .bind(new_tier.is_some())
        .bind(new_tier.flatten())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("updating a tenant", e))?;
        Ok(self.tenant_changed(row).await)
    }

    async fn set_tenant_limits(
        &self,
        request: Request<v1::SetTenantLimitsRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let req = self.tenant_request(request, Access::AboveTenant).await?;
        let wanted = req.limits.unwrap_or_default();
        let limits = finestra_domain::fairness::TenantLimits {
            rate_per_second: wanted.send_rate_per_second,
            burst: wanted.send_burst,
            weight: wanted.weight,
        };
        limits
            .validate()
            .map_err(|e| status::invalid_argument(e.field(), e.to_string()))?;
        let as_column = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "UPDATE accounts.tenants
                SET send_rate_per_second = $2, send_burst = $3, send_weight = $4
              WHERE tenant_id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(as_column(limits.rate_per_second))
        .bind(as_column(limits.burst))
        .bind(as_column(limits.weight))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("setting a tenant's limits", e))?;
        tracing::info!(
            tenant_id = %row.tenant_id,
            rate = limits.rate_per_second,
            burst = limits.burst,
            weight = limits.weight,
            "tenant limits set"
        );
        Ok(self.tenant_changed(row).await)
    }

    async fn set_tenant_status(
        &self,
        request: Request<v1::SetTenantStatusRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let req = self.tenant_request(request, Access::AboveTenant).await?;
        let status_name = convert::status_name(req.status)?;
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "UPDATE accounts.tenants SET status = $2 WHERE tenant_id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(status_name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("changing a tenant", e))?;
        Ok(self.tenant_changed(row).await)
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let row = self.reachable_tenant(&p, &req.tenant_id).await?;
        p.require(Scope::Read)?;
        Ok(Response::new(row.into()))
    }

    async fn add_number(
        &self,
        request: Request<v1::AddNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        // Webhook secrets belong to the partner's provider app: a tenant setting its own
        // could sign webhooks for itself.
        let req = self.tenant_request(request, Access::AboveTenant).await?;
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
        let row = sqlx::query_as::<_, NumberRow>(&format!(
            "INSERT INTO accounts.numbers (phone_number_id, tenant_id, display_phone_number, app_secret, throughput_per_second)
             VALUES ($1, $2, $3, $4, $5) RETURNING {NUMBER_COLUMNS}"
        ))
        .bind(network_id("phone_number_id", &req.phone_number_id)?)
        .bind(&req.tenant_id)
        .bind(required("display_phone_number", &req.display_phone_number)?)
        .bind(secret("app_secret", &req.app_secret)?)
        .bind(throughput)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("adding a number", e))?;
        Ok(self.number_changed(row).await)
    }

    async fn list_numbers(
        &self,
        request: Request<v1::ListNumbersRequest>,
    ) -> Result<Response<v1::ListNumbersResponse>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Read))
            .await?;
        let size = page_size(req.page_size)?;
        let rows = sqlx::query_as::<_, NumberRow>(&format!(
            "SELECT {NUMBER_COLUMNS} FROM accounts.numbers WHERE tenant_id = $1 AND phone_number_id > $2
             ORDER BY phone_number_id LIMIT $3"
        ))
        .bind(&req.tenant_id)
        .bind(after(&req.page_token)?)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing numbers", e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.phone_number_id);
        Ok(Response::new(v1::ListNumbersResponse {
            numbers: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn rotate_number_secret(
        &self,
        request: Request<v1::RotateNumberSecretRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        // Webhook secrets belong to the partner's provider app: a tenant setting its own
        // could sign webhooks for itself.
        let req = self.tenant_request(request, Access::AboveTenant).await?;
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
        let row = sqlx::query_as::<_, NumberRow>(&format!(
            "UPDATE accounts.numbers SET previous_app_secret = app_secret, app_secret = $3,
                    previous_secret_valid_until = now() + $4 * interval '1 second'
             WHERE tenant_id = $1 AND phone_number_id = $2 RETURNING {NUMBER_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(&req.phone_number_id)
        .bind(secret("new_app_secret", &req.new_app_secret)?)
        .bind(overlap)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("rotating a secret", e))?
        .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
        Ok(self.number_changed(row).await)
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreatedApiKey>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let owner = self
            .key_owner(&p, &req.partner_id, &req.tenant_id, KeyUse::Create)
            .await?;
        let scopes = req
            .scopes
            .iter()
            .map(|s| {
                convert::scope(*s)
                    .ok_or_else(|| status::invalid_argument("scopes", "READ, SEND or ADMIN"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (key, secret) = finestra_registry::keys::create(
            &self.pool,
            &owner,
            &scopes,
            &req.label,
            &self.key_prefix,
        )
        .await
        .map_err(|e| registry_error("creating a key", e))?;
        tracing::info!(key_id = %key.key_id, by = %p.key_id, "API key created");
        Ok(Response::new(v1::CreatedApiKey {
            key: Some(convert::api_key(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let owner = self
            .key_owner(&p, &req.partner_id, &req.tenant_id, KeyUse::Manage)
            .await?;
        let size = page_size(req.page_size)?;
        let (partner, tenant) = match &owner {
            Owner::Partner { partner_id } => (partner_id.clone(), None),
            Owner::Tenant {
                partner_id,
                tenant_id,
            } => (partner_id.clone(), Some(tenant_id.clone())),
            Owner::Operator => (String::new(), None),
        };
        let rows = sqlx::query_as::<_, finestra_registry::keys::KeyInfo>(&format!(
            "SELECT {} FROM accounts.api_keys
             WHERE partner_id = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND key_id > $3
             ORDER BY key_id LIMIT $4",
            finestra_registry::keys::KEY_COLUMNS
        ))
        .bind(partner)
        .bind(tenant)
        .bind(after(&req.page_token)?)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing keys", e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.key_id);
        Ok(Response::new(v1::ListApiKeysResponse {
            keys: rows.into_iter().map(convert::api_key).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::ApiKey>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let key = finestra_registry::keys::get(&self.pool, &req.key_id)
            .await
            .map_err(|e| registry_error("reading a key", e))?
            .ok_or_else(|| not_found("key_id", &req.key_id))?;
        // Whoever manages keys of this owner may revoke it; to anyone else it does not exist.
        if key.owner_kind == "operator" {
            if !p.is_operator() {
                return Err(not_found("key_id", &req.key_id));
            }
            p.require(Scope::Admin)?;
        } else {
            self.key_owner(
                &p,
                key.partner_id.as_deref().unwrap_or_default(),
                key.tenant_id.as_deref().unwrap_or_default(),
                KeyUse::Manage,
            )
            .await
            .map_err(|e| {
                if e.code() == Code::NotFound {
                    not_found("key_id", &req.key_id)
                } else {
                    e
                }
            })?;
        }
        let revoked = finestra_registry::keys::revoke(&self.pool, &req.key_id)
            .await
            .map_err(|e| registry_error("revoking a key", e))?
            .ok_or_else(|| not_found("key_id", &req.key_id))?;
        self.announce(
            Kind::ApiKeyRevoked,
            revoked.tenant_id.as_deref().unwrap_or_default(),
            revoked.partner_id.as_deref().unwrap_or_default(),
            &revoked.key_id,
            "",
        )
        .await;
        tracing::info!(key_id = %revoked.key_id, by = %p.key_id, "API key revoked");
        Ok(Response::new(convert::api_key(revoked)))
    }

    async fn update_partner(
        &self,
        request: Request<v1::UpdatePartnerRequest>,
    ) -> Result<Response<v1::Partner>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p)?;
        let req = request.into_inner();
        let row = sqlx::query_as::<_, PartnerRow>(
            "UPDATE accounts.partners SET name = $2 WHERE partner_id = $1 RETURNING partner_id, name, status, created_at",
        )
        .bind(&req.partner_id)
        .bind(name(&req.name)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("renaming a partner", e))?
        .ok_or_else(|| not_found("partner_id", &req.partner_id))?;
        Ok(Response::new(row.into()))
    }

    async fn get_number(
        &self,
        request: Request<v1::GetNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Read))
            .await?;
        let row = sqlx::query_as::<_, NumberRow>(&format!(
            "SELECT {NUMBER_COLUMNS} FROM accounts.numbers WHERE tenant_id = $1 AND phone_number_id = $2"
        ))
        .bind(&req.tenant_id)
        .bind(&req.phone_number_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a number", e))?
        .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
        Ok(Response::new(row.into()))
    }

    async fn update_number(
        &self,
        request: Request<v1::UpdateNumberRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        let req = self
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
        let row = sqlx::query_as::<_, NumberRow>(&format!(
            "UPDATE accounts.numbers SET display_phone_number = coalesce(nullif($3, ''), display_phone_number),
                    throughput_per_second = coalesce($4, throughput_per_second)
             WHERE tenant_id = $1 AND phone_number_id = $2 RETURNING {NUMBER_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(&req.phone_number_id)
        .bind(&req.display_phone_number)
        .bind(throughput)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("updating a number", e))?
        .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
        Ok(self.number_changed(row).await)
    }

    async fn set_number_status(
        &self,
        request: Request<v1::SetNumberStatusRequest>,
    ) -> Result<Response<v1::Number>, Status> {
        let req = self.tenant_request(request, Access::AboveTenant).await?;
        let status_name = convert::status_name(req.status)?;
        let row = sqlx::query_as::<_, NumberRow>(&format!(
            "UPDATE accounts.numbers SET status = $3 WHERE tenant_id = $1 AND phone_number_id = $2 RETURNING {NUMBER_COLUMNS}"
        ))
        .bind(&req.tenant_id)
        .bind(&req.phone_number_id)
        .bind(status_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("changing a number", e))?
        .ok_or_else(|| not_found("phone_number_id", &req.phone_number_id))?;
        Ok(self.number_changed(row).await)
    }

    async fn create_template(
        &self,
        request: Request<v1::CreateTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Admin))
            .await?;
        let row = crate::templates::create(&self.pool, &req).await?;
        Ok(Response::new(row.wire(now())))
    }

    async fn get_template(
        &self,
        request: Request<v1::GetTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Read))
            .await?;
        let row = crate::templates::get(&self.pool, &req.tenant_id, &req.template_id).await?;
        Ok(Response::new(row.wire(now())))
    }

    async fn list_templates(
        &self,
        request: Request<v1::ListTemplatesRequest>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Read))
            .await?;
        let size = page_size(req.page_size)?;
        let rows = sqlx::query_as::<_, crate::templates::TemplateRow>(&format!(
            "SELECT {} FROM accounts.templates WHERE tenant_id = $1 AND deleted_at IS NULL AND template_id > $2
             ORDER BY template_id LIMIT $3",
            crate::templates::COLUMNS
        ))
        .bind(&req.tenant_id)
        .bind(after(&req.page_token)?)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing templates", e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.template_id);
        let now = now();
        Ok(Response::new(v1::ListTemplatesResponse {
            templates: rows.into_iter().map(|r| r.wire(now)).collect(),
            next_page_token,
        }))
    }

    async fn delete_template(
        &self,
        request: Request<v1::DeleteTemplateRequest>,
    ) -> Result<Response<v1::Template>, Status> {
        let req = self
            .tenant_request(request, Access::Scope(Scope::Admin))
            .await?;
        let row = sqlx::query_as::<_, crate::templates::TemplateRow>(&format!(
            // Idempotent: deleting again answers the deleted template.
            "UPDATE accounts.templates SET deleted_at = coalesce(deleted_at, now())
             WHERE tenant_id = $1 AND template_id = $2 RETURNING {}",
            crate::templates::COLUMNS
        ))
        .bind(&req.tenant_id)
        .bind(&req.template_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("deleting a template", e))?
        .ok_or_else(|| not_found("template_id", &req.template_id))?;
        Ok(Response::new(row.wire(now())))
    }

    async fn review_template(
        &self,
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
        let row =
            crate::templates::review(&self.pool, &req.tenant_id, &req.template_id, review, at)
                .await?;
        Ok(Response::new(row.wire(now())))
    }
}

impl AccountsApi {
    /// The owner a principal may manage keys of: partner keys are the operator's to manage,
    /// tenant keys the tenant's partner's (and the tenant admin's own).
    async fn key_owner(
        &self,
        p: &Arc<Principal>,
        partner_id: &str,
        tenant_id: &str,
        purpose: KeyUse,
    ) -> Result<Owner, Status> {
        match (partner_id.is_empty(), tenant_id.is_empty()) {
            (_, false) => {
                let t = self.reachable_tenant(p, tenant_id).await?;
                p.require(Scope::Admin)?;
                Ok(Owner::Tenant {
                    partner_id: t.partner_id,
                    tenant_id: t.tenant_id,
                })
            }
            (false, true) => {
                if !p.sees_partner(partner_id) || self.partner_row(partner_id).await?.is_none() {
                    return Err(not_found("partner_id", partner_id));
                }
                // Partner keys are created by the operator; a partner may list and revoke its own.
                match purpose {
                    KeyUse::Create => operator_only(p)?,
                    KeyUse::Manage => p.require(Scope::Admin)?,
                }
                Ok(Owner::Partner {
                    partner_id: partner_id.to_owned(),
                })
            }
            (true, true) => Err(status::invalid_argument(
                "tenant_id",
                "name the key's owner: partner_id or tenant_id",
            )),
        }
    }
}
