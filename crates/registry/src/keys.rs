//! API keys: created with a random secret shown once, stored as a SHA-256 hash.

use finestra_platform::auth::{self, Owner, Scope};
use sqlx::PgPool;

use crate::RegistryError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub display_prefix: String,
    pub owner_kind: String,
    pub partner_id: Option<String>,
    pub tenant_id: Option<String>,
    pub scopes: Vec<String>,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Creates a key for `owner`; returns it with its secret (which is not stored).
pub async fn create(
    pool: &PgPool,
    owner: &Owner,
    scopes: &[Scope],
    label: &str,
    prefix: &str,
) -> Result<(KeyInfo, String), RegistryError> {
    if scopes.is_empty() {
        return Err(RegistryError::Invalid {
            field: "scopes",
            reason: "a key needs at least one scope".into(),
        });
    }
    let secret = auth::generate_key(prefix);
    let key_id = format!("key_{}", &auth::hash_key(&secret)[..16]);
    let display_prefix: String = secret.chars().take(prefix.len() + 4).collect();
    let (kind, partner, tenant) = match owner {
        Owner::Operator => ("operator", None, None),
        Owner::Partner { partner_id } => ("partner", Some(partner_id.as_str()), None),
        Owner::Tenant {
            partner_id,
            tenant_id,
        } => (
            "tenant",
            Some(partner_id.as_str()),
            Some(tenant_id.as_str()),
        ),
    };
    let mut scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    scope_names.sort_unstable();
    scope_names.dedup();
    let info = sqlx::query_as!(
        KeyInfo,
        "INSERT INTO accounts.api_keys (key_id, key_hash, display_prefix, owner_kind, partner_id, tenant_id, scopes, label)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING key_id, display_prefix, owner_kind, partner_id, tenant_id, scopes, label,
                   created_at, last_used_at, revoked_at",
        &key_id,
        auth::hash_key(&secret),
        &display_prefix,
        kind,
        partner,
        tenant,
        &scope_names,
        label
    )
    .fetch_one(pool)
    .await?;
    Ok((info, secret))
}

/// Revokes a key (idempotent: revoking twice keeps the first time).
pub async fn revoke(pool: &PgPool, key_id: &str) -> Result<Option<KeyInfo>, RegistryError> {
    Ok(sqlx::query_as!(
        KeyInfo,
        "UPDATE accounts.api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE key_id = $1
         RETURNING key_id, display_prefix, owner_kind, partner_id, tenant_id, scopes, label,
                   created_at, last_used_at, revoked_at",
        key_id
    )
    .fetch_optional(pool)
    .await?)
}

pub async fn get(pool: &PgPool, key_id: &str) -> Result<Option<KeyInfo>, RegistryError> {
    Ok(sqlx::query_as!(
        KeyInfo,
        "SELECT key_id, display_prefix, owner_kind, partner_id, tenant_id, scopes, label,
                created_at, last_used_at, revoked_at
           FROM accounts.api_keys WHERE key_id = $1",
        key_id
    )
    .fetch_optional(pool)
    .await?)
}

/// Whether an active operator key exists (bootstrap runs once).
pub async fn operator_key_exists(pool: &PgPool) -> Result<bool, RegistryError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM accounts.api_keys WHERE owner_kind = 'operator' AND revoked_at IS NULL) AS "exists!""#
    )
    .fetch_one(pool)
    .await?)
}
