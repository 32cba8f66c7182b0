//! Which tenant a Cloud API path names: a phone number id or a business account id is the
//! tenant's (the registry's word, cached briefly). The gateway only routes by it: the call it
//! makes carries the caller's key, and dispatch or accounts decide whether that key reaches the
//! tenant (another tenant's is NOT_FOUND there, exactly as over gRPC).

use std::sync::Arc;
use std::time::Duration;

use finestra_registry::Registry;
use moka::future::Cache;

use crate::errors::CloudError;

#[derive(Clone)]
pub struct Owners {
    registry: Registry,
    numbers: Cache<String, Arc<str>>,
    accounts: Cache<String, Arc<str>>,
}

impl Owners {
    pub fn new(registry: Registry, ttl: Duration) -> Self {
        let cache = || {
            Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build()
        };
        Self {
            registry,
            numbers: cache(),
            accounts: cache(),
        }
    }

    /// The tenant of a phone number id, `None` when no tenant has it. Only found owners are
    /// cached, so a number added a moment ago is seen at once.
    pub async fn of_number(&self, phone_number_id: &str) -> Result<Option<Arc<str>>, CloudError> {
        if let Some(t) = self.numbers.get(phone_number_id).await {
            return Ok(Some(t));
        }
        let number = self
            .registry
            .number(phone_number_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(number) = number else {
            return Ok(None);
        };
        let tenant: Arc<str> = number.tenant_id.into();
        self.numbers
            .insert(phone_number_id.to_owned(), tenant.clone())
            .await;
        Ok(Some(tenant))
    }

    /// The tenant of a business account (WABA) id, `None` when no active tenant has it.
    pub async fn of_account(&self, waba_id: &str) -> Result<Option<Arc<str>>, CloudError> {
        if let Some(t) = self.accounts.get(waba_id).await {
            return Ok(Some(t));
        }
        let owner = self
            .registry
            .tenant_by_waba(waba_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some((tenant, _)) = owner else {
            return Ok(None);
        };
        let tenant: Arc<str> = tenant.into();
        self.accounts
            .insert(waba_id.to_owned(), tenant.clone())
            .await;
        Ok(Some(tenant))
    }
}

fn unavailable(e: &finestra_registry::RegistryError) -> CloudError {
    tracing::warn!(error = %e, "the registry did not answer");
    CloudError::from_status(&tonic::Status::unavailable("registry unavailable"))
}
