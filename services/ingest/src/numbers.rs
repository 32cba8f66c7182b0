//! `phone_number_id → tenant` (and business account → tenant, and a tenant's opt-out
//! keywords) with a short-lived cache: a
//! webhook burst must not become one Postgres query per request, and a new or changed number
//! is seen within the TTL.

use std::sync::Arc;
use std::time::Duration;

use finestra_registry::{Number, Registry, RegistryError};
use moka::future::Cache;

/// A business account's tenant and its numbers (whose secrets sign its webhooks).
pub type AccountOwner = Arc<(String, Vec<Number>)>;

#[derive(Clone)]
pub struct NumberDirectory {
    registry: Registry,
    numbers: Cache<String, Option<Arc<Number>>>,
    accounts: Cache<String, Option<AccountOwner>>,
    keywords: Cache<String, Arc<finestra_domain::opt_out::Keywords>>,
}

impl NumberDirectory {
    pub fn new(registry: Registry, ttl: Duration) -> Self {
        Self {
            registry,
            numbers: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            accounts: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            keywords: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The tenant's opt-out keywords (seen within the TTL after a change).
    pub async fn keywords(
        &self,
        tenant_id: &str,
    ) -> Result<Arc<finestra_domain::opt_out::Keywords>, Arc<sqlx::Error>> {
        let pool = self.registry.pool().clone();
        let id = tenant_id.to_owned();
        self.keywords
            .try_get_with(tenant_id.to_owned(), async move {
                finestra_registry::opt_out_keywords(&pool, &id)
                    .await
                    .map(Arc::new)
            })
            .await
    }

    /// The active number, `None` when no tenant has it or it (or its tenant) is suspended.
    /// Only found numbers are cached: a number added a moment ago is seen at once.
    pub async fn lookup(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<Arc<Number>>, Arc<RegistryError>> {
        if let Some(n) = self.numbers.get(phone_number_id).await {
            return Ok(n);
        }
        let found = self
            .registry
            .number(phone_number_id)
            .await
            .map_err(Arc::new)?;
        let active = found.filter(Number::is_active).map(Arc::new);
        if active.is_some() {
            self.numbers
                .insert(phone_number_id.to_owned(), active.clone())
                .await;
        }
        Ok(active)
    }

    /// The tenant owning a business account (WABA), `None` when none does.
    pub async fn by_waba(&self, waba_id: &str) -> Result<Option<AccountOwner>, Arc<RegistryError>> {
        let registry = self.registry.clone();
        let id = waba_id.to_owned();
        self.accounts
            .try_get_with(waba_id.to_owned(), async move {
                registry.tenant_by_waba(&id).await.map(|o| o.map(Arc::new))
            })
            .await
    }
}
