//! Prices messages: the rate book (reloaded from Postgres), the partner's markups (cached
//! briefly), and, for quotes, the window and the template as the window and accounts services
//! store them. `Reserve` and `QuoteMessage` both end in `finestra_domain::pricing::price`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use finestra_domain::pricing::{
    self, MarkupPlan, MessageKind, Quote, RateBook, RateCard, WindowAt,
};
use finestra_domain::send::TemplateFacts;
use finestra_domain::{Timestamp, WindowState};
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

pub use finestra_registry::windows::WindowReadError;

/// The template a quote asks about: by id, or else by name and language.
#[derive(Clone, Copy, Debug)]
pub struct TemplateAsked<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub language: &'a str,
}

/// What a quote is decided on, read as dispatch reads it for a send: the tenant and number
/// through the accounts schema's read model, the window through the window service's (Redis
/// hash, else Postgres), the template as stored.
#[derive(Clone, Debug, Default)]
pub struct SendFacts {
    pub tenant_active: bool,
    /// The number exists, is the tenant's and is active.
    pub number_active: bool,
    pub window: WindowState,
    /// The tenant's own block and suppression list (dispatch's contacts).
    pub contact: finestra_registry::contacts::ContactFlags,
    pub template: Option<TemplateFacts>,
}

pub async fn send_facts(
    pool: &PgPool,
    redis: &ConnectionManager,
    prefix: &str,
    tenant_id: &str,
    phone_number_id: &str,
    user: &str,
    template: Option<TemplateAsked<'_>>,
) -> Result<SendFacts, WindowReadError> {
    let tenant_active = finestra_registry::tenant_send_facts(pool, tenant_id)
        .await?
        .is_some_and(|t| t.active);
    let number_active = finestra_registry::number_send_facts(pool, phone_number_id)
        .await?
        .is_some_and(|n| n.tenant_id == tenant_id && n.status == "active");
    if !number_active {
        return Ok(SendFacts {
            tenant_active,
            ..SendFacts::default()
        });
    }
    let window =
        finestra_registry::windows::read(redis, pool, prefix, tenant_id, phone_number_id, user)
            .await?;
    let contact = finestra_registry::contacts::flags(pool, tenant_id, user).await?;
    let template = match template {
        Some(t) => finestra_registry::template_send_facts_by_id_or_name(
            pool, tenant_id, t.id, t.name, t.language,
        )
        .await?
        .and_then(|row| row.facts()),
        None => None,
    };
    Ok(SendFacts {
        tenant_active,
        number_active,
        window,
        contact,
        template,
    })
}
