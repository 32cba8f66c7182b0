//! The control plane's facts a send is decided on, read through the accounts schema's read
//! model (`finestra_registry`) with short caches (FINESTRA_DISPATCH_FACTS_TTL_MS, default 2 s): a
//! suspended number, a changed tier or a paused template takes effect within that time.

use std::collections::HashSet;
use std::sync::Arc;

use finestra_domain::frequency::FrequencyCap;
use std::time::Duration;

use finestra_domain::fairness::TenantLimits;
use finestra_domain::send::TemplateFacts;
use finestra_registry::TenantSendFacts;
use sqlx::PgPool;

/// A business number as dispatch needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberFacts {
    pub tenant_id: String,
    pub active: bool,
    /// Messages per second the network allows this number.
    pub throughput_per_second: i64,
}

#[derive(Clone)]
pub struct Facts {
    pool: PgPool,
    numbers: moka::future::Cache<String, Option<Arc<NumberFacts>>>,
    tenants: moka::future::Cache<String, Option<TenantSendFacts>>,
    templates: moka::future::Cache<(String, String, String), Option<TemplateFacts>>,
    /// Each tenant's blocked and opted-out contacts (dispatch's own): one read per tenant
    /// per TTL, dropped at once on this replica when the tenant blocks or unblocks.
    contacts: moka::future::Cache<String, Arc<ContactFlags>>,
}

/// The contacts a send must know of, of one tenant.
#[derive(Debug, Default)]
pub struct ContactFlags {
    blocked: HashSet<String>,
    opted_out: HashSet<String>,
}

/// What the tenant's contacts say of one user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContactFacts {
    /// The tenant blocked the user itself.
    pub blocked: bool,
    /// The user is on the tenant's suppression list (no marketing).
    pub opted_out: bool,
}

impl Facts {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            numbers: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            tenants: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            templates: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            contacts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// What the tenant's contacts say of this user (docs/rules.md §3). Concurrent misses of
    /// a tenant share one query.
    pub async fn contact(
        &self,
        tenant_id: &str,
        user: &str,
    ) -> Result<ContactFacts, Arc<sqlx::Error>> {
        let pool = self.pool.clone();
        let id = tenant_id.to_owned();
        let flags = self
            .contacts
            .try_get_with(tenant_id.to_owned(), async move {
                let mut flags = ContactFlags::default();
                for f in crate::contacts::store::flagged(&pool, &id).await? {
                    if f.blocked {
                        flags.blocked.insert(f.user_key.clone());
                    }
                    if f.opted_out {
                        flags.opted_out.insert(f.user_key);
                    }
                }
                Ok::<_, sqlx::Error>(Arc::new(flags))
            })
            .await?;
        let user = user.trim_start_matches('+');
        Ok(ContactFacts {
            blocked: flags.blocked.contains(user),
            opted_out: flags.opted_out.contains(user),
        })
    }

    /// Forgets a tenant's contact flags on this replica (it just changed them).
    pub async fn forget_contacts(&self, tenant_id: &str) {
        self.contacts.invalidate(tenant_id).await;
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn number(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<Arc<NumberFacts>>, sqlx::Error> {
        if let Some(found) = self.numbers.get(phone_number_id).await {
            return Ok(found);
        }
        let facts = finestra_registry::number_send_facts(&self.pool, phone_number_id)
            .await?
            .map(|n| {
                Arc::new(NumberFacts {
                    tenant_id: n.tenant_id,
                    active: n.status == "active",
                    throughput_per_second: i64::from(n.throughput_per_second),
                })
            });
        self.numbers
            .insert(phone_number_id.to_owned(), facts.clone())
            .await;
        Ok(facts)
    }

    /// What sends are decided on of a tenant (state, tier, limits); `None` for an unknown
    /// tenant. Every send reads it first, so concurrent misses share one query.
    pub async fn tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantSendFacts>, Arc<sqlx::Error>> {
        let pool = self.pool.clone();
        let id = tenant_id.to_owned();
        self.tenants
            .try_get_with(tenant_id.to_owned(), async move {
                finestra_registry::tenant_send_facts(&pool, &id).await
            })
            .await
    }

    /// The tenant's tier: distinct users per rolling 24 h it may message first; `None` is
    /// unlimited.
    pub async fn tier(&self, tenant_id: &str) -> Result<Option<i64>, Arc<sqlx::Error>> {
        Ok(self.tenant(tenant_id).await?.and_then(|t| t.tier))
    }

    /// The tenant's limits as set by its partner (0 fields: the platform's defaults).
    /// The tenant's marketing frequency cap: as its partner set it, else the platform's.
    pub async fn frequency_cap(
        &self,
        tenant_id: &str,
        platform: FrequencyCap,
    ) -> Result<FrequencyCap, Arc<sqlx::Error>> {
        Ok(self.tenant(tenant_id).await?.map_or(platform, |t| {
            FrequencyCap::of_tenant(t.marketing_cap, t.marketing_cap_days, platform)
        }))
    }

    pub async fn limits(&self, tenant_id: &str) -> Result<TenantLimits, Arc<sqlx::Error>> {
        Ok(self
            .tenant(tenant_id)
            .await?
            .map(|t| t.limits)
            .unwrap_or_default())
    }

    /// The tenant's live template `name` in `language`, as stored (the send rules decide
    /// what its status means now).
    pub async fn template(
        &self,
        tenant_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<TemplateFacts>, sqlx::Error> {
        let cache_key = (tenant_id.to_owned(), name.to_owned(), language.to_owned());
        if let Some(facts) = self.templates.get(&cache_key).await {
            return Ok(facts);
        }
        let facts = finestra_registry::template_send_facts(&self.pool, tenant_id, name, language)
            .await?
            .and_then(|row| row.facts());
        self.templates.insert(cache_key, facts).await;
        Ok(facts)
    }
}
