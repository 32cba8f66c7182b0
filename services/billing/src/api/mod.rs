//! The billing gRPC service. Every call is authorized first (NOT_FOUND for what is out of the
//! caller's reach, PERMISSION_DENIED for a missing scope or role), then validated, then served.
//! The handlers live by resource (quotes, wallets, usage, prices, the internal calls); this
//! module holds what they share and the service's one table of RPCs.

use finestra_domain::wallet::{MAX_AMOUNT_MICROS, is_acceptable_amount};
use std::sync::Arc;

use finestra_domain::pricing::{FreeBecause, MessageKind, Micros, Quote as DomainQuote, WindowAt};
use finestra_domain::send::{self, Asked, Facts as SendFacts};
use finestra_domain::{Clock, Timestamp};
use finestra_platform::auth::{self, Authenticator, Authorized, Principal, Scope};
use finestra_platform::paging::{after, page_size, paginate};
use finestra_platform::status::Reason;
use finestra_platform::status::{
    self, invalid_argument, not_found, refusal, required, with_reason,
};
use finestra_proto::time::{from_micros, to_micros};
use finestra_proto::v1::billing_service_server::BillingService;
use finestra_proto::v1::{
    AddRateCardRequest, GetInvoiceRequest, GetMarkupRequest, GetPartnerRollupRequest,
    GetWalletRequest, Invoice, InvoiceLine, ListRateCardsRequest, ListRateCardsResponse,
    ListUsageRequest, ListUsageResponse, ListWalletHistoryRequest, ListWalletHistoryResponse,
    Markup, Markups, PartnerRollup, PartnerRollupLine, Price, PriceBatchRequest,
    PriceBatchResponse, PriceResult, Quote, QuoteMessageRequest, RateCard, ReconcileDifference,
    ReconcileReport, ReconcileRequest, ReleaseRequest, ReleaseResponse, ReserveBatchRequest,
    ReserveBatchResponse, ReserveRequest, ReserveResponse, ReserveResult, SetCreditLimitRequest,
    SetMarkupRequest, TopUpRequest, UsageRow, Wallet, WalletEntry, WithdrawRateCardRequest,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status};

use crate::hot::HotWallets;
use crate::pg::{self, CardError, WalletRow};
use crate::pricer::{self, PriceError, Pricer, WindowFacts};
use crate::reports::{self, GroupBy};
use crate::reservations::{self, End, ReservationRow, Settlement};
use crate::reserve::{ReserveError, Writer};
use crate::{reconcile, settle};

mod internal;
mod prices;
mod quotes;
mod usage;
mod wallets;

pub struct BillingApi {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub redis_prefix: String,
    pub hot: HotWallets,
    pub writer: Writer,
    pub pricer: Pricer,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
    /// How far ahead of now a new rate card must start (every replica reloads within it).
    pub card_margin_micros: i64,
}

/// Most reservations one `ReserveBatch` call may carry.
pub const MAX_BATCH: usize = 1_000;

/// The partner a request names, once the key reaches it (NOT_FOUND otherwise, never
/// confirming it exists) with `scope`.
fn reach_partner<'a>(p: &Principal, partner_id: &'a str, scope: Scope) -> Result<&'a str, Status> {
    let partner_id = required("partner_id", partner_id)?;
    if !p.sees_partner(partner_id) {
        return Err(not_found("partner_id", partner_id));
    }
    p.require(scope)?;
    Ok(partner_id)
}

fn operator_only(p: &Principal, what: &str, scope: Scope) -> Result<(), Status> {
    if !p.is_operator() {
        return Err(with_reason(
            Code::PermissionDenied,
            Reason::PermissionDenied,
            format!("{what} needs an operator key"),
            &[("key_id", &p.key_id)],
        ));
    }
    p.require(scope)
}

/// Money moves on a tenant's wallet only by its partner (or the operator) with `admin`.
fn partner_or_operator(p: &Principal, tenant_id: &str) -> Result<(), Status> {
    if matches!(p.owner, auth::Owner::Tenant { .. }) {
        return Err(with_reason(
            Code::PermissionDenied,
            Reason::PermissionDenied,
            "top-ups and credit limits are set by the tenant's partner",
            &[("tenant_id", tenant_id)],
        ));
    }
    p.require(Scope::Admin)
}

/// A store failure: `UNAVAILABLE` with retry info when a retry can cure it, else `INTERNAL`.
fn store(context: &str) -> impl Fn(sqlx::Error) -> Status + '_ {
    move |e| finestra_platform::status::store(context, &e)
}

/// The status of a rate card that could not be added or withdrawn.
fn card_status(context: &str, e: CardError) -> Status {
    match e {
        CardError::Store(e) => finestra_platform::status::store(context, &e),
        CardError::DuplicateVersion(_) => with_reason(
            Code::AlreadyExists,
            Reason::AlreadyExists,
            e.to_string(),
            &[],
        ),
        CardError::TooEarly(_) | CardError::Currency { .. } => with_reason(
            Code::FailedPrecondition,
            Reason::CardNotAppendable,
            e.to_string(),
            &[],
        ),
        CardError::Started { .. } => with_reason(
            Code::FailedPrecondition,
            Reason::CardStarted,
            e.to_string(),
            &[],
        ),
        CardError::NoSuchCard(version) => not_found("rate card", &version),
        CardError::Syntax(_) | CardError::Pricing(_) => invalid_argument("source", e.to_string()),
    }
}

fn pricing_status(e: PriceError, tenant_id: &str) -> Status {
    match e {
        PriceError::Pricing(p) => with_reason(
            Code::FailedPrecondition,
            Reason::NotPriced,
            p.to_string(),
            &[("tenant_id", tenant_id)],
        ),
        other => status::store("pricing", &other),
    }
}

fn quote_of(q: &DomainQuote, window: WindowFacts, at: Timestamp, open: WindowAt) -> Quote {
    Quote {
        price_micros: q.price,
        cost_micros: q.cost,
        currency: q.currency.clone(),
        free: q.free.is_some(),
        free_reason: q
            .free
            .map(FreeBecause::as_str)
            .unwrap_or_default()
            .to_owned(),
        category: q.category.clone(),
        market: q.market.to_owned(),
        card_version: q.card_version.clone(),
        markup: q.markup.to_string(),
        csw_open: open.csw_open,
        csw_until: window.csw_until.map(|t| from_micros(t.micros())),
        fep_open: open.fep_open,
        fep_until: window.fep_until.map(|t| from_micros(t.micros())),
        priced_at: Some(from_micros(at.micros())),
    }
}

fn quote_of_row(r: &ReservationRow) -> Quote {
    Quote {
        price_micros: r.price,
        cost_micros: r.cost,
        currency: r.currency.clone(),
        free: !r.free_reason.is_empty(),
        free_reason: r.free_reason.clone(),
        category: r.category.clone(),
        market: r.market.clone(),
        card_version: r.card_version.clone(),
        markup: r.markup.clone(),
        priced_at: Some(from_micros(r.accepted_at)),
        ..Quote::default()
    }
}

fn wallet_of(tenant_id: &str, currency: String, w: &WalletRow) -> Wallet {
    Wallet {
        tenant_id: tenant_id.to_owned(),
        currency,
        balance_micros: w.balance,
        credit_limit_micros: w.credit_limit,
        reserved_micros: w.reserved,
        available_micros: w.available(),
        low_balance_threshold_micros: w.low_balance_threshold,
    }
}

fn month_of(month: &str) -> Result<(Timestamp, Timestamp), Status> {
    reports::month_range(month).ok_or_else(|| invalid_argument("month", "month must be YYYY-MM"))
}

fn card_of(c: &finestra_domain::pricing::RateCard) -> RateCard {
    RateCard {
        version: c.version.clone(),
        effective_from: Some(from_micros(c.effective_from.micros())),
        currency: c.currency.clone(),
        utility_free_in_csw: c.utility_free_in_csw,
        free_in_fep: c.free_in_fep,
        prices: c
            .prices
            .iter()
            .map(|((category, market), micros)| Price {
                category: category.clone(),
                market: market.clone(),
                micros: *micros,
            })
            .collect(),
    }
}

impl BillingApi {
    /// A tenant's wallet as the API answers it (in the rate book's currency).
    fn wallet_response(&self, tenant_id: &str, w: &WalletRow) -> Response<Wallet> {
        Response::new(wallet_of(tenant_id, self.pricer.currency(), w))
    }

    /// After a top-up or a credit change in Postgres: the hot wallet is dropped (the next
    /// reservation reloads it with the new figures), and the wallet is answered.
    async fn wallet_changed(
        &self,
        tenant_id: &str,
        w: &WalletRow,
    ) -> Result<Response<Wallet>, Status> {
        self.hot
            .forget(tenant_id)
            .await
            .map_err(|e| status::store("refreshing the hot wallet", &e))?;
        Ok(self.wallet_response(tenant_id, w))
    }

    /// One reservation (the caller is authorized already).
    async fn reserve_one(&self, req: ReserveRequest) -> Result<ReserveResponse, Status> {
        let tenant_id = required("tenant_id", &req.tenant_id)?;
        let message_id = required("message_id", &req.message_id)?;
        let number = required("phone_number_id", &req.phone_number_id)?;
        let recipient = required("recipient", &req.recipient)?
            .trim()
            .trim_start_matches('+');
        let kind = if req.free_form {
            MessageKind::FreeForm
        } else {
            MessageKind::Template {
                category: required("category", &req.category)?.to_ascii_uppercase(),
            }
        };
        let partner_id = self.partner_of(tenant_id).await?;
        let at = req.accepted_at.as_ref().map_or_else(
            || self.clock.now(),
            |t| Timestamp::from_micros(to_micros(t)),
        );
        let open = WindowAt {
            csw_open: req.csw_open,
            fep_open: req.fep_open,
        };
        let q = self
            .pricer
            .price(&partner_id, at, recipient, &kind, open)
            .await
            .map_err(|e| pricing_status(e, tenant_id))?;
        let row = ReservationRow {
            tenant_id: tenant_id.to_owned(),
            message_id: message_id.to_owned(),
            phone_number_id: number.to_owned(),
            recipient: recipient.to_owned(),
            category: q.category.clone(),
            market: q.market.to_owned(),
            card_version: q.card_version.clone(),
            currency: q.currency.clone(),
            cost: q.cost,
            price: q.price,
            markup: q.markup.to_string(),
            free_reason: q
                .free
                .map(FreeBecause::as_str)
                .unwrap_or_default()
                .to_owned(),
            accepted_at: at.micros(),
        };
        match self.writer.reserve(row).await {
            Ok(r) => {
                let mut quote = quote_of_row(&r.row);
                quote.csw_open = open.csw_open;
                quote.fep_open = open.fep_open;
                Ok(ReserveResponse {
                    quote: Some(quote),
                    replayed: r.replayed,
                    state: r.state,
                })
            }
            Err(ReserveError::InsufficientFunds { needed, available }) => Err(with_reason(
                Code::FailedPrecondition,
                Reason::InsufficientFunds,
                format!("{needed} needed, {available} available"),
                &[
                    ("tenant_id", tenant_id),
                    ("message_id", message_id),
                    ("needed_micros", &needed.to_string()),
                    ("available_micros", &available.to_string()),
                ],
            )),
            Err(ReserveError::Conflict(_)) => Err(with_reason(
                Code::AlreadyExists,
                Reason::IdempotencyConflict,
                "this message id was reserved for a different charge",
                &[("tenant_id", tenant_id), ("message_id", message_id)],
            )),
            Err(ReserveError::Unavailable(why)) => {
                tracing::warn!(error = %why, "a reservation could not be written");
                Err(status::with_reason_and_retry(
                    Code::Unavailable,
                    Reason::StoreUnavailable,
                    "the reservation could not be written; retry",
                    &[("tenant_id", tenant_id), ("message_id", message_id)],
                    status::STORE_RETRY_AFTER,
                ))
            }
        }
    }

    async fn partner_of(&self, tenant_id: &str) -> Result<String, Status> {
        self.auth
            .tenant(tenant_id)
            .await?
            .map(|t| t.partner_id.clone())
            .ok_or_else(|| not_found("tenant_id", tenant_id))
    }

    async fn markups_of(&self, partner_id: &str) -> Result<Markups, Status> {
        let plan = self
            .pricer
            .markups(partner_id)
            .await
            .map_err(store("reading markups"))?;
        let markup = |category: &str, m: &finestra_domain::pricing::Markup| {
            use finestra_domain::pricing::Markup as M;
            let (bp, fixed) = match m {
                M::None => (0, 0),
                M::BasisPoints(bp) => (*bp, 0),
                M::Fixed(f) => (0, *f),
            };
            Markup {
                category: category.to_owned(),
                basis_points: bp,
                fixed_micros: fixed,
            }
        };
        let mut markups = vec![markup("*", &plan.default)];
        markups.extend(plan.per_category.iter().map(|(c, m)| markup(c, m)));
        Ok(Markups {
            partner_id: partner_id.to_owned(),
            markups,
        })
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn quote_message(
        &self,
        request: Request<QuoteMessageRequest>,
    ) -> Result<Response<Quote>, Status> {
        quotes::quote_message(self, request).await
    }

    async fn get_wallet(
        &self,
        request: Request<GetWalletRequest>,
    ) -> Result<Response<Wallet>, Status> {
        wallets::get_wallet(self, request).await
    }

    async fn list_wallet_history(
        &self,
        request: Request<ListWalletHistoryRequest>,
    ) -> Result<Response<ListWalletHistoryResponse>, Status> {
        wallets::list_wallet_history(self, request).await
    }

    async fn top_up(&self, request: Request<TopUpRequest>) -> Result<Response<Wallet>, Status> {
        wallets::top_up(self, request).await
    }

    async fn set_credit_limit(
        &self,
        request: Request<SetCreditLimitRequest>,
    ) -> Result<Response<Wallet>, Status> {
        wallets::set_credit_limit(self, request).await
    }

    async fn list_usage(
        &self,
        request: Request<ListUsageRequest>,
    ) -> Result<Response<ListUsageResponse>, Status> {
        usage::list_usage(self, request).await
    }

    async fn get_invoice(
        &self,
        request: Request<GetInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        usage::get_invoice(self, request).await
    }

    async fn get_partner_rollup(
        &self,
        request: Request<GetPartnerRollupRequest>,
    ) -> Result<Response<PartnerRollup>, Status> {
        usage::get_partner_rollup(self, request).await
    }

    async fn list_rate_cards(
        &self,
        request: Request<ListRateCardsRequest>,
    ) -> Result<Response<ListRateCardsResponse>, Status> {
        prices::list_rate_cards(self, request).await
    }

    async fn add_rate_card(
        &self,
        request: Request<AddRateCardRequest>,
    ) -> Result<Response<RateCard>, Status> {
        prices::add_rate_card(self, request).await
    }

    async fn withdraw_rate_card(
        &self,
        request: Request<WithdrawRateCardRequest>,
    ) -> Result<Response<RateCard>, Status> {
        prices::withdraw_rate_card(self, request).await
    }

    async fn set_markup(
        &self,
        request: Request<SetMarkupRequest>,
    ) -> Result<Response<Markups>, Status> {
        prices::set_markup(self, request).await
    }

    async fn get_markup(
        &self,
        request: Request<GetMarkupRequest>,
    ) -> Result<Response<Markups>, Status> {
        prices::get_markup(self, request).await
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        internal::reserve(self, request).await
    }

    async fn reserve_batch(
        &self,
        request: Request<ReserveBatchRequest>,
    ) -> Result<Response<ReserveBatchResponse>, Status> {
        internal::reserve_batch(self, request).await
    }

    async fn price_batch(
        &self,
        request: Request<PriceBatchRequest>,
    ) -> Result<Response<PriceBatchResponse>, Status> {
        internal::price_batch(self, request).await
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        internal::release(self, request).await
    }

    async fn reconcile(
        &self,
        request: Request<ReconcileRequest>,
    ) -> Result<Response<ReconcileReport>, Status> {
        internal::reconcile(self, request).await
    }
}
