//! `phone_number_id → tenant` (and business account → tenant) with a short-lived cache: a
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
        }
    }

    /// The number, `None` when no tenant has it (that answer is cached too).
    pub async fn lookup(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<Arc<Number>>, Arc<RegistryError>> {
        let registry = self.registry.clone();
        let id = phone_number_id.to_owned();
        self.numbers
            .try_get_with(phone_number_id.to_owned(), async move {
                registry.number(&id).await.map(|n| n.map(Arc::new))
            })
            .await
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
