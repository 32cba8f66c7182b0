//! The billing gRPC service. Every call is authorized first (NOT_FOUND for what is out of the
//! caller's reach, PERMISSION_DENIED for a missing scope or role), then validated, then served.

use finestra_domain::wallet::{MAX_AMOUNT_MICROS, is_acceptable_amount};
use std::sync::Arc;

use finestra_domain::pricing::{FreeBecause, MessageKind, Micros, Quote as DomainQuote, WindowAt};
use finestra_domain::send::{self, Asked, Facts as SendFacts};
use finestra_domain::{Clock, Timestamp};
use finestra_platform::auth::{self, Authenticator, Authorized, Principal, Scope};
use finestra_platform::paging::{after, page_size, paginate};
use finestra_platform::status::Reason;
use finestra_platform::status::{
    internal, invalid_argument, not_found, refusal, required, with_reason,
};
use finestra_proto::time::{from_micros, to_micros};
use finestra_proto::v1::billing_service_server::BillingService;
use finestra_proto::v1::{
    AddRateCardRequest, GetInvoiceRequest, GetMarkupRequest, GetPartnerRollupRequest,
    GetWalletRequest, Invoice, InvoiceLine, ListRateCardsRequest, ListRateCardsResponse,
    ListUsageRequest, ListUsageResponse, ListWalletHistoryRequest, ListWalletHistoryResponse,
    Markup, Markups, PartnerRollup, PartnerRollupLine, Price, Quote, QuoteMessageRequest, RateCard,
    ReconcileDifference, ReconcileReport, ReconcileRequest, ReleaseRequest, ReleaseResponse,
    ReserveBatchRequest, ReserveBatchResponse, ReserveRequest, ReserveResponse, ReserveResult,
    SetCreditLimitRequest, SetMarkupRequest, TopUpRequest, UsageRow, Wallet, WalletEntry,
    WithdrawRateCardRequest,
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
        other => internal("pricing", &other),
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
            Err(e) => Err(internal("reserving", &e)),
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
        let Authorized {
            tenant,
            request: req,
            ..
        } = self.auth.authorize(request, Scope::Read).await?;
        let number = required("phone_number_id", &req.phone_number_id)?;
        let user = required("user", &req.user)?.trim().trim_start_matches('+');
        let asked = if req.free_form {
            Asked::FreeForm
        } else if req.template_id.is_empty() && req.template_name.is_empty() {
            return Err(invalid_argument(
                "template_id",
                "free_form, template_id or template_name is required",
            ));
        } else {
            Asked::Template
        };
        // The facts SendMessage decides on, read the same way, and the same decision
        // (docs/rules.md §2): a quote refuses what a send would refuse and prices what it would
        // price, including the free entry point a reply would start.
        let facts = pricer::send_facts(
            &self.pool,
            &self.redis,
            &self.redis_prefix,
            &req.tenant_id,
            number,
            user,
            (asked == Asked::Template).then_some(pricer::TemplateAsked {
                id: &req.template_id,
                name: &req.template_name,
                language: &req.template_language,
            }),
        )
        .await
        .map_err(|e| finestra_platform::status::store("reading the send's facts", &e))?;
        let now = self.clock.now();
        let admitted = send::admit_quote(
            asked,
            &SendFacts {
                tenant_active: facts.tenant_active,
                number_active: facts.number_active,
                recipient: user,
                window: &facts.window,
                template: facts.template,
                now,
            },
        )
        .map_err(|r| refusal(&r, &[("tenant_id", &req.tenant_id)]))?;
        let kind = match admitted.category {
            Some(category) => MessageKind::Template {
                category: category.as_str().to_owned(),
            },
            None => MessageKind::FreeForm,
        };
        let open = admitted.priced_window();
        let window = WindowFacts {
            csw_until: facts.window.csw_until,
            fep_until: facts.window.fep_until,
        };
        let q = self
            .pricer
            .price(&tenant.partner_id, now, user, &kind, open)
            .await
            .map_err(|e| pricing_status(e, &req.tenant_id))?;
        Ok(Response::new(quote_of(&q, window, now, open)))
    }

    async fn get_wallet(
        &self,
        request: Request<GetWalletRequest>,
    ) -> Result<Response<Wallet>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let w = pg::wallet(&self.pool, &req.tenant_id)
            .await
            .map_err(store("reading a wallet"))?;
        Ok(self.wallet_response(&req.tenant_id, &w))
    }

    async fn list_wallet_history(
        &self,
        request: Request<ListWalletHistoryRequest>,
    ) -> Result<Response<ListWalletHistoryResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = page_size(req.page_size)?;
        let after_token = after(&req.page_token)?;
        // Newest first; the token is the last entry id returned.
        let before: i64 = if after_token.is_empty() {
            i64::MAX
        } else {
            after_token
                .parse()
                .map_err(|_| invalid_argument("page_token", "not a token this service issued"))?
        };
        #[derive(sqlx::FromRow)]
        struct Entry {
            entry_id: i64,
            kind: String,
            reference: String,
            amount: i64,
            occurred_at: i64,
            category: String,
            market: String,
            card_version: String,
            free_reason: String,
            note: String,
        }
        let rows: Vec<Entry> = sqlx::query_as(
            "SELECT entry_id, kind, reference, amount, occurred_at, category, market,
                    card_version, free_reason, note
               FROM billing.ledger WHERE tenant_id = $1 AND entry_id < $2
              ORDER BY entry_id DESC LIMIT $3",
        )
        .bind(&req.tenant_id)
        .bind(before)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(store("reading the ledger"))?;
        let keyed: Vec<(String, Entry)> = rows
            .into_iter()
            .map(|e| (e.entry_id.to_string(), e))
            .collect();
        let (page, next_page_token) = paginate(keyed, size, |(k, _)| k);
        Ok(Response::new(ListWalletHistoryResponse {
            entries: page
                .into_iter()
                .map(|(_, e)| WalletEntry {
                    kind: e.kind.to_ascii_uppercase(),
                    reference: e.reference,
                    amount_micros: e.amount,
                    occurred_at: Some(from_micros(e.occurred_at)),
                    category: e.category,
                    market: e.market,
                    card_version: e.card_version,
                    free_reason: e.free_reason,
                    note: e.note,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn top_up(&self, request: Request<TopUpRequest>) -> Result<Response<Wallet>, Status> {
        let Authorized {
            principal: p,
            request: req,
            ..
        } = self.auth.authorize(request, Scope::Read).await?;
        partner_or_operator(&p, &req.tenant_id)?;
        let top_up_id = required("top_up_id", &req.top_up_id)?;
        if req.amount_micros <= 0 || !is_acceptable_amount(req.amount_micros) {
            return Err(invalid_argument(
                "amount_micros",
                format!("a top-up is a positive amount of at most {MAX_AMOUNT_MICROS} µ"),
            ));
        }
        let currency = self.pricer.currency();
        let w = pg::top_up(
            &self.pool,
            &req.tenant_id,
            top_up_id,
            req.amount_micros,
            &currency,
            &req.note,
            self.clock.now(),
        )
        .await
        .map_err(store("crediting a top-up"))?;
        // The hot wallet reloads with the new balance.
        self.hot
            .forget(&req.tenant_id)
            .await
            .map_err(|e| internal("refreshing the hot wallet", &e))?;
        Ok(Response::new(wallet_of(&req.tenant_id, currency, &w)))
    }

    async fn set_credit_limit(
        &self,
        request: Request<SetCreditLimitRequest>,
    ) -> Result<Response<Wallet>, Status> {
        let Authorized {
            principal: p,
            request: req,
            ..
        } = self.auth.authorize(request, Scope::Read).await?;
        partner_or_operator(&p, &req.tenant_id)?;
        for (field, amount) in [
            ("credit_limit_micros", req.credit_limit_micros),
            (
                "low_balance_threshold_micros",
                req.low_balance_threshold_micros,
            ),
        ] {
            if !is_acceptable_amount(amount) {
                return Err(invalid_argument(
                    field,
                    format!("{field} is 0..={MAX_AMOUNT_MICROS} µ"),
                ));
            }
        }
        let w = pg::set_credit_limit(
            &self.pool,
            &req.tenant_id,
            req.credit_limit_micros,
            req.low_balance_threshold_micros,
        )
        .await
        .map_err(store("setting a credit limit"))?;
        self.hot
            .forget(&req.tenant_id)
            .await
            .map_err(|e| internal("refreshing the hot wallet", &e))?;
        Ok(self.wallet_response(&req.tenant_id, &w))
    }

    async fn list_usage(
        &self,
        request: Request<ListUsageRequest>,
    ) -> Result<Response<ListUsageResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let (Some(from), Some(to)) = (req.from.as_ref(), req.to.as_ref()) else {
            return Err(invalid_argument("from", "from and to are required"));
        };
        let (from, to) = (
            Timestamp::from_micros(to_micros(from)),
            Timestamp::from_micros(to_micros(to)),
        );
        if to <= from {
            return Err(invalid_argument("to", "to must be after from"));
        }
        let by = GroupBy::parse(req.group_by.iter().map(String::as_str)).map_err(|bad| {
            invalid_argument(
                "group_by",
                format!("cannot group by {bad:?}: use number, category, market or day"),
            )
        })?;
        let rows = reports::usage(&self.pool, &req.tenant_id, from, to, by)
            .await
            .map_err(store("reading usage"))?;
        Ok(Response::new(ListUsageResponse {
            rows: rows
                .into_iter()
                .map(|r| UsageRow {
                    phone_number_id: r.phone_number_id,
                    category: r.category,
                    market: r.market,
                    day: r.day,
                    messages: r.messages,
                    charged_messages: r.charged_messages,
                    cost_micros: r.cost,
                    price_micros: r.price,
                })
                .collect(),
            currency: self.pricer.currency(),
        }))
    }

    async fn get_invoice(
        &self,
        request: Request<GetInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        let Authorized {
            tenant,
            request: req,
            ..
        } = self.auth.authorize(request, Scope::Read).await?;
        let (from, to) = month_of(&req.month)?;
        let by = GroupBy {
            category: true,
            market: true,
            ..GroupBy::default()
        };
        let lines = reports::usage(&self.pool, &req.tenant_id, from, to, by)
            .await
            .map_err(store("reading usage"))?;
        let top_ups = reports::top_ups(&self.pool, &req.tenant_id, from, to)
            .await
            .map_err(store("reading top-ups"))?;
        let currency = self.pricer.currency();
        let csv = if req.csv {
            reports::invoice_csv(&req.tenant_id, &req.month, &currency, &lines)
        } else {
            String::new()
        };
        Ok(Response::new(Invoice {
            tenant_id: req.tenant_id.clone(),
            partner_id: tenant.partner_id.clone(),
            month: req.month,
            currency,
            total_cost_micros: lines.iter().map(|l| l.cost).sum(),
            total_price_micros: lines.iter().map(|l| l.price).sum(),
            lines: lines
                .into_iter()
                .map(|l| InvoiceLine {
                    category: l.category,
                    market: l.market,
                    messages: l.messages,
                    charged_messages: l.charged_messages,
                    cost_micros: l.cost,
                    price_micros: l.price,
                })
                .collect(),
            top_ups_micros: top_ups,
            csv,
        }))
    }

    async fn get_partner_rollup(
        &self,
        request: Request<GetPartnerRollupRequest>,
    ) -> Result<Response<PartnerRollup>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let partner_id = required("partner_id", &req.partner_id)?;
        if !p.sees_partner(partner_id) {
            return Err(not_found("partner_id", partner_id));
        }
        p.require(Scope::Read)?;
        let (from, to) = month_of(&req.month)?;
        let rows = reports::partner_rollup(&self.pool, partner_id, from, to)
            .await
            .map_err(store("reading the rollup"))?;
        let total_cost: Micros = rows.iter().map(|r| r.cost).sum();
        let total_price: Micros = rows.iter().map(|r| r.price).sum();
        Ok(Response::new(PartnerRollup {
            partner_id: partner_id.to_owned(),
            month: req.month.clone(),
            currency: self.pricer.currency(),
            lines: rows
                .into_iter()
                .map(|r| PartnerRollupLine {
                    tenant_id: r.tenant_id,
                    messages: r.messages,
                    charged_messages: r.charged_messages,
                    cost_micros: r.cost,
                    price_micros: r.price,
                })
                .collect(),
            total_cost_micros: total_cost,
            total_price_micros: total_price,
            margin_micros: total_price - total_cost,
        }))
    }

    async fn list_rate_cards(
        &self,
        request: Request<ListRateCardsRequest>,
    ) -> Result<Response<ListRateCardsResponse>, Status> {
        auth::principal(&request)?;
        self.pricer
            .reload()
            .await
            .map_err(|e| internal("reading rate cards", &e))?;
        Ok(Response::new(ListRateCardsResponse {
            cards: self.pricer.cards().iter().map(card_of).collect(),
        }))
    }

    async fn add_rate_card(
        &self,
        request: Request<AddRateCardRequest>,
    ) -> Result<Response<RateCard>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "adding a rate card", Scope::Admin)?;
        let req = request.into_inner();
        let not_before = self.clock.now().plus_micros(self.card_margin_micros);
        let card = pg::add_card(&self.pool, &req.source, not_before)
            .await
            .map_err(|e| card_status("adding a rate card", e))?;
        self.pricer
            .reload()
            .await
            .map_err(|e| internal("reloading rate cards", &e))?;
        tracing::info!(version = %card.version, "rate card added");
        Ok(Response::new(card_of(&card)))
    }

    async fn withdraw_rate_card(
        &self,
        request: Request<WithdrawRateCardRequest>,
    ) -> Result<Response<RateCard>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "withdrawing a rate card", Scope::Admin)?;
        let req = request.into_inner();
        let version = required("version", &req.version)?;
        let reason = required("reason", &req.reason)?.trim();
        if reason.chars().count() > 500 {
            return Err(invalid_argument("reason", "at most 500 characters"));
        }
        let not_before = self.clock.now().plus_micros(self.card_margin_micros);
        let card = pg::withdraw_card(&self.pool, version, not_before, &p.key_id, reason)
            .await
            .map_err(|e| card_status("withdrawing a rate card", e))?;
        self.pricer
            .reload()
            .await
            .map_err(|e| internal("reloading rate cards", &e))?;
        tracing::warn!(version = %card.version, key_id = %p.key_id, reason, "rate card withdrawn");
        Ok(Response::new(card_of(&card)))
    }

    async fn set_markup(
        &self,
        request: Request<SetMarkupRequest>,
    ) -> Result<Response<Markups>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let partner_id = required("partner_id", &req.partner_id)?;
        if !p.sees_partner(partner_id) {
            return Err(not_found("partner_id", partner_id));
        }
        p.require(Scope::Admin)?;
        let m = req
            .markup
            .ok_or_else(|| invalid_argument("markup", "markup is required"))?;
        if m.basis_points > 0 && m.fixed_micros > 0 {
            return Err(invalid_argument(
                "markup",
                "a markup is basis points or a fixed amount, not both",
            ));
        }
        if !is_acceptable_amount(m.fixed_micros) || m.basis_points > 100_000 {
            return Err(invalid_argument(
                "markup",
                format!("basis points are 0..=100000 and a fixed amount 0..={MAX_AMOUNT_MICROS} µ"),
            ));
        }
        let category = match m.category.trim() {
            "" | "*" => "*".to_owned(),
            c => c.to_ascii_uppercase(),
        };
        pg::set_markup(
            &self.pool,
            partner_id,
            &category,
            m.basis_points,
            m.fixed_micros,
        )
        .await
        .map_err(store("setting a markup"))?;
        self.pricer.forget_markups(partner_id).await;
        Ok(Response::new(self.markups_of(partner_id).await?))
    }

    async fn get_markup(
        &self,
        request: Request<GetMarkupRequest>,
    ) -> Result<Response<Markups>, Status> {
        let p = auth::principal(&request)?;
        let req = request.into_inner();
        let partner_id = required("partner_id", &req.partner_id)?;
        if !p.sees_partner(partner_id) {
            return Err(not_found("partner_id", partner_id));
        }
        p.require(Scope::Read)?;
        Ok(Response::new(self.markups_of(partner_id).await?))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "Reserve (internal)", Scope::Send)?;
        Ok(Response::new(self.reserve_one(request.into_inner()).await?))
    }

    async fn reserve_batch(
        &self,
        request: Request<ReserveBatchRequest>,
    ) -> Result<Response<ReserveBatchResponse>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "ReserveBatch (internal)", Scope::Send)?;
        let reservations = request.into_inner().reservations;
        if reservations.len() > MAX_BATCH {
            return Err(invalid_argument(
                "reservations",
                format!("at most {MAX_BATCH} reservations per call"),
            ));
        }
        // Concurrently: they share the writer's next batches.
        let results =
            futures::future::join_all(reservations.into_iter().map(|r| self.reserve_one(r))).await;
        Ok(Response::new(ReserveBatchResponse {
            results: results
                .into_iter()
                .map(|r| match r {
                    Ok(reserved) => ReserveResult {
                        reserved: Some(reserved),
                        ..ReserveResult::default()
                    },
                    Err(status) => ReserveResult {
                        reserved: None,
                        reason: finestra_platform::status::reason_of(&status).unwrap_or_default(),
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    },
                })
                .collect(),
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "Release (internal)", Scope::Send)?;
        let req = request.into_inner();
        let tenant_id = required("tenant_id", &req.tenant_id)?;
        let message_id = required("message_id", &req.message_id)?;
        let batch = [Settlement {
            tenant_id: tenant_id.to_owned(),
            message_id: message_id.to_owned(),
            end: End::Release,
            at: self.clock.now().micros(),
            reason: "released".into(),
        }];
        settle::settle(&self.pool, &self.hot, &batch)
            .await
            .map_err(|e| internal("releasing", &e))?;
        let state = reservations::get(&self.pool, tenant_id, message_id)
            .await
            .map_err(store("reading a reservation"))?
            .map_or_else(|| "unknown".to_owned(), |(_, s)| s);
        Ok(Response::new(ReleaseResponse { state }))
    }

    async fn reconcile(
        &self,
        request: Request<ReconcileRequest>,
    ) -> Result<Response<ReconcileReport>, Status> {
        let p = auth::principal(&request)?;
        operator_only(&p, "Reconcile", Scope::Read)?;
        let req = request.into_inner();
        let tenant = (!req.tenant_id.is_empty()).then_some(req.tenant_id.as_str());
        let r = reconcile::run(&self.pool, &self.hot, tenant)
            .await
            .map_err(|e| internal("reconciling", &e))?;
        Ok(Response::new(ReconcileReport {
            tenants_checked: r.tenants_checked,
            differences: r
                .differences
                .into_iter()
                .map(|d| ReconcileDifference {
                    tenant_id: d.tenant_id,
                    check: d.check.to_owned(),
                    expected: d.expected,
                    actual: d.actual,
                })
                .collect(),
            open_reservations: r.open_reservations,
            captured_messages: r.captured_messages,
            ledger_entries: r.ledger_entries,
        }))
    }
}
