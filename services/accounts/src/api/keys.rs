//! API keys: created for an owner with a secret shown once, listed and revoked.

use super::*;

pub(super) async fn create(
    api: &AccountsApi,
    request: Request<v1::CreateApiKeyRequest>,
) -> Result<Response<v1::CreatedApiKey>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let owner = api
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
    let (key, secret) =
        finestra_registry::keys::create(&api.pool, &owner, &scopes, &req.label, &api.key_prefix)
            .await
            .map_err(|e| registry_error("creating a key", e))?;
    tracing::info!(key_id = %key.key_id, by = %p.key_id, "API key created");
    Ok(Response::new(v1::CreatedApiKey {
        key: Some(convert::api_key(key)),
        secret,
    }))
}

pub(super) async fn list(
    api: &AccountsApi,
    request: Request<v1::ListApiKeysRequest>,
) -> Result<Response<v1::ListApiKeysResponse>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let owner = api
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
    let rows = sqlx::query_as!(
        finestra_registry::keys::KeyInfo,
        "SELECT key_id, display_prefix, owner_kind, partner_id, tenant_id, scopes, label,
                created_at, last_used_at, revoked_at
           FROM accounts.api_keys
         WHERE partner_id = $1 AND tenant_id IS NOT DISTINCT FROM $2::text AND key_id > $3
         ORDER BY key_id LIMIT $4",
        &partner,
        tenant.as_deref(),
        after(&req.page_token)?,
        size + 1
    )
    .fetch_all(&api.pool)
    .await
    .map_err(|e| db_error("listing keys", e))?;
    let (rows, next_page_token) = paginate(rows, size, |r| &r.key_id);
    Ok(Response::new(v1::ListApiKeysResponse {
        keys: rows.into_iter().map(convert::api_key).collect(),
        next_page_token,
    }))
}

pub(super) async fn revoke(
    api: &AccountsApi,
    request: Request<v1::RevokeApiKeyRequest>,
) -> Result<Response<v1::ApiKey>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let key = finestra_registry::keys::get(&api.pool, &req.key_id)
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
        api.key_owner(
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
    let revoked = finestra_registry::keys::revoke(&api.pool, &req.key_id)
        .await
        .map_err(|e| registry_error("revoking a key", e))?
        .ok_or_else(|| not_found("key_id", &req.key_id))?;
    api.announce(
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
