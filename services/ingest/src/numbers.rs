//! `phone_number_id → tenant` with a short-lived cache: a webhook burst must not become one
//! Postgres query per request, and a new or changed number is seen within the TTL.

use std::sync::Arc;
use std::time::Duration;

use finestra_registry::{Number, Registry, RegistryError};
use moka::future::Cache;

#[derive(Clone)]
pub struct NumberDirectory {
    registry: Registry,
    cache: Cache<String, Option<Arc<Number>>>,
}

impl NumberDirectory {
    pub fn new(registry: Registry, ttl: Duration) -> Self {
        Self {
            registry,
            cache: Cache::builder()
                .max_capacity(100_000)
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
        self.cache
            .try_get_with(phone_number_id.to_owned(), async move {
                registry.number(&id).await.map(|n| n.map(Arc::new))
            })
            .await
    }
}
