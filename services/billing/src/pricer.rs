//! Prices messages: the rate book (reloaded from Postgres), the partner's markups (cached
//! briefly), and, for quotes, the window and the template as the window and accounts services
//! store them. `Reserve` and `QuoteMessage` both end in `finestra_domain::pricing::price`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use finestra_domain::Timestamp;
use finestra_domain::pricing::{
    self, MarkupPlan, MessageKind, Quote, RateBook, RateCard, WindowAt,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::pg;

/// The priced book and the cards it was built from (for listing).
type Book = Arc<(RateBook, Vec<RateCard>)>;

#[derive(Clone)]
pub struct Pricer {
    pool: PgPool,
    book: Arc<RwLock<Book>>,
    markups: moka::future::Cache<String, Arc<MarkupPlan>>,
}

/// The window of a pair as a quote reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowFacts {
    pub csw_until: Option<Timestamp>,
    pub fep_until: Option<Timestamp>,
}

impl WindowFacts {
    pub fn at(&self, now: Timestamp) -> WindowAt {
        WindowAt {
            csw_open: self.csw_until.is_some_and(|u| now < u),
            fep_open: self.fep_until.is_some_and(|u| now < u),
        }
    }
}

impl Pricer {
    pub async fn load(pool: PgPool, markup_ttl: Duration) -> Result<Self, pg::CardError> {
        let book = pg::load_book(&pool).await?;
        Ok(Self {
            pool,
            book: Arc::new(RwLock::new(Arc::new(book))),
            markups: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(markup_ttl)
                .build(),
        })
    }

    /// Reads the cards again (after an append here or on another replica).
    pub async fn reload(&self) -> Result<(), pg::CardError> {
        let book = pg::load_book(&self.pool).await?;
        if let Ok(mut guard) = self.book.write() {
            *guard = Arc::new(book);
        }
        Ok(())
    }

    pub fn cards(&self) -> Vec<RateCard> {
        self.book.read().map(|b| b.1.clone()).unwrap_or_default()
    }

    /// The currency wallets are kept in: the newest card's.
    pub fn currency(&self) -> String {
        self.cards()
            .last()
            .map(|c| c.currency.clone())
            .unwrap_or_else(|| "EUR".into())
    }

    pub async fn markups(&self, partner_id: &str) -> Result<Arc<MarkupPlan>, sqlx::Error> {
        if let Some(plan) = self.markups.get(partner_id).await {
            return Ok(plan);
        }
        let plan = Arc::new(pg::markups(&self.pool, partner_id).await?);
        self.markups
            .insert(partner_id.to_owned(), plan.clone())
            .await;
        Ok(plan)
    }

    pub async fn forget_markups(&self, partner_id: &str) {
        self.markups.invalidate(partner_id).await;
    }

    /// Prices one message accepted at `at` for a tenant of `partner_id`.
    pub async fn price(
        &self,
        partner_id: &str,
        at: Timestamp,
        recipient: &str,
        kind: &MessageKind,
        window: WindowAt,
    ) -> Result<Quote, PriceError> {
        let plan = self.markups(partner_id).await?;
        let book = self
            .book
            .read()
            .map(|b| b.clone())
            .map_err(|_| PriceError::Poisoned)?;
        Ok(pricing::price(&book.0, at, recipient, kind, window, &plan)?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error(transparent)]
    Pricing(#[from] pricing::PricingError),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error("the rate book lock is poisoned")]
    Poisoned,
}

/// Reads a pair's window through the window service's read model (Redis hash, else Postgres;
/// `finestra_registry::windows`).
pub async fn window_of(
    redis: &ConnectionManager,
    pool: &PgPool,
    prefix: &str,
    tenant_id: &str,
    phone_number_id: &str,
    user: &str,
) -> Result<WindowFacts, WindowReadError> {
    let state =
        finestra_registry::windows::read(redis, pool, prefix, tenant_id, phone_number_id, user)
            .await?;
    Ok(WindowFacts {
        csw_until: state.csw_until,
        fep_until: state.fep_until,
    })
}

pub use finestra_registry::windows::WindowReadError;

/// A template's pricing category and review status (accounts' record), if the tenant has it.
pub async fn template_of(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    finestra_registry::template_category_and_status(pool, tenant_id, template_id, name, language)
        .await
}

/// Whether the number is the tenant's.
pub async fn number_of_tenant(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
) -> Result<bool, sqlx::Error> {
    finestra_registry::number_of_tenant(pool, tenant_id, phone_number_id).await
}
