//! The accounts schema as authentication reads it: keys and tenants (see
//! `finestra_platform::auth::Directory`).

use finestra_platform::auth::{Directory, Owner, Principal, Scope, TenantRef};
use futures::future::BoxFuture;
use sqlx::PgPool;

/// Keys and tenants from the accounts schema, for every service's `Authenticator`.
#[derive(Clone)]
pub struct AccountsDirectory {
    pool: PgPool,
}

impl AccountsDirectory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

struct KeyRow {
    key_id: String,
    owner_kind: String,
    partner_id: Option<String>,
    tenant_id: Option<String>,
    scopes: Vec<String>,
}

impl KeyRow {
    fn principal(self) -> Option<Principal> {
        let owner = match (self.owner_kind.as_str(), self.partner_id, self.tenant_id) {
            ("operator", _, _) => Owner::Operator,
            ("partner", Some(partner_id), _) => Owner::Partner { partner_id },
            ("tenant", Some(partner_id), Some(tenant_id)) => Owner::Tenant {
                partner_id,
                tenant_id,
            },
            _ => return None,
        };
        Some(Principal {
            key_id: self.key_id,
            owner,
            scopes: self.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        })
    }
}

impl Directory for AccountsDirectory {
    fn principal(&self, key_hash: &str) -> BoxFuture<'_, Result<Option<Principal>, sqlx::Error>> {
        let key_hash = key_hash.to_owned();
        Box::pin(async move {
            // The owner must be active too: a suspended partner's or tenant's keys stop working.
            let row = sqlx::query_as!(
                KeyRow,
                "UPDATE accounts.api_keys k SET last_used_at = now()
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM accounts.partners p
                                    WHERE p.partner_id = k.partner_id AND p.status <> 'active')
                   AND NOT EXISTS (SELECT 1 FROM accounts.tenants t
                                    WHERE t.tenant_id = k.tenant_id AND t.status <> 'active')
                 RETURNING k.key_id, k.owner_kind, k.partner_id, k.tenant_id, k.scopes",
                &key_hash
            )
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.and_then(KeyRow::principal))
        })
    }

    fn tenant(&self, tenant_id: &str) -> BoxFuture<'_, Result<Option<TenantRef>, sqlx::Error>> {
        let tenant_id = tenant_id.to_owned();
        Box::pin(async move {
            let row = sqlx::query!(
                "SELECT tenant_id, partner_id FROM accounts.tenants WHERE tenant_id = $1",
                &tenant_id
            )
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| TenantRef {
                tenant_id: r.tenant_id,
                partner_id: r.partner_id,
            }))
        })
    }
}
