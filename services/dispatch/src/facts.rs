//! The control plane's facts a send is decided on, read through the accounts schema's read
//! model (`finestra_registry`) with short caches (FINESTRA_DISPATCH_FACTS_TTL_MS, default 2 s): a
//! suspended number, a changed tier or a paused template takes effect within that time.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Timestamp;
use finestra_domain::fairness::TenantLimits;
use finestra_domain::send::TemplateFacts;
use finestra_domain::template::{Category, Status};
use finestra_registry::{TemplateSendFacts as TemplateRow, TenantSendFacts};
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
    templates: moka::future::Cache<(String, String, String), Option<Arc<TemplateRow>>>,
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
        }
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
    pub async fn limits(&self, tenant_id: &str) -> Result<TenantLimits, Arc<sqlx::Error>> {
        Ok(self
            .tenant(tenant_id)
            .await?
            .map(|t| t.limits)
            .unwrap_or_default())
    }

    /// The tenant's template `name` in `language`, as of `now`.
    pub async fn template(
        &self,
        tenant_id: &str,
        name: &str,
        language: &str,
        now: Timestamp,
    ) -> Result<Option<TemplateFacts>, sqlx::Error> {
        let cache_key = (tenant_id.to_owned(), name.to_owned(), language.to_owned());
        let row = match self.templates.get(&cache_key).await {
            Some(row) => row,
            None => {
                let row =
                    finestra_registry::template_send_facts(&self.pool, tenant_id, name, language)
                        .await?;
                let row = row.map(Arc::new);
                self.templates.insert(cache_key, row.clone()).await;
                row
            }
        };
        Ok(row.and_then(|r| {
            let TemplateRow {
                status,
                category,
                parameter_count: params,
                paused_until_micros: paused_until,
            } = (*r).clone();
            let status = match status.as_str() {
                "APPROVED" => Status::Approved,
                "PENDING" => Status::Pending,
                "REJECTED" => Status::Rejected,
                "DISABLED" => Status::Disabled,
                // A pause whose time is over counts as approved (docs/rules.md §4).
                "PAUSED" => match paused_until {
                    Some(until) if now.micros() >= until => Status::Approved,
                    Some(until) => Status::Paused {
                        until: Timestamp::from_micros(until),
                    },
                    None => Status::Paused { until: now },
                },
                _ => return None,
            };
            Some(TemplateFacts {
                status,
                category: Category::parse(&category)?,
                parameter_count: usize::try_from(params).unwrap_or(usize::MAX),
            })
        }))
    }
}
