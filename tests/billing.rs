//! Billing against the real Postgres, Redis and broker: pricing through the service, atomic
//! reservations under concurrency, exactly-once capture from status events, releases, a
//! process killed between the ledger write and the offset commit, Redis lost mid-run, usage,
//! invoices and reconciliation.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_platform::auth::{AuthedChannel, Owner, Scope as KeyScope};
use finestra_platform::kafka::{self, Outgoing};
use finestra_platform::status::reason_of;
use finestra_proto::time::{from_micros, to_micros};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{self, Envelope, UserBlock, UserRef};
use finestra_testkit::{Scope, Started, committed, eventually, infra};
use tonic::Code;

type Client = BillingServiceClient<AuthedChannel>;

const IT_USER: &str = "393471234567";

/// One test's billing service, tenant and clients (operator, partner, tenant read).
struct Books {
    scope: Scope,
    billing: Started,
    tenant: String,
    number: String,
    operator: Client,
    partner: Client,
    tenant_read: Client,
}

impl Books {
    async fn start(name: &str) -> anyhow::Result<Self> {
        let scope = Scope::new();
        infra().await?;
        scope.create_topics().await?;
        let (tenant, number, _) = scope.tenant_with_number(name, 1).await?;
        let billing = finestra_testkit::start_billing(&scope, "billing").await?;
        let url = billing.running.grpc_url();
        let operator_key = scope.key(Owner::Operator, &[KeyScope::Admin]).await?;
        let partner_key = scope
            .key(
                Owner::Partner {
                    partner_id: scope.partner_id(),
                },
                &[KeyScope::Admin],
            )
            .await?;
        let read_key = scope.tenant_key(name, &[KeyScope::Read]).await?;
        Ok(Self {
            operator: Client::new(
                finestra_testkit::authed_channel(url.clone(), &operator_key).await?,
            ),
            partner: Client::new(
                finestra_testkit::authed_channel(url.clone(), &partner_key).await?,
            ),
            tenant_read: Client::new(finestra_testkit::authed_channel(url, &read_key).await?),
            scope,
            billing,
            tenant,
            number,
        })
    }

    async fn top_up(&self, amount: i64, id: &str) -> anyhow::Result<v1::Wallet> {
        Ok(self
            .partner
            .clone()
            .top_up(v1::TopUpRequest {
                tenant_id: self.tenant.clone(),
                amount_micros: amount,
                top_up_id: id.into(),
                note: "test".into(),
            })
            .await?
            .into_inner())
    }

    fn reserve_request(&self, message_id: &str, category: &str, user: &str) -> v1::ReserveRequest {
        v1::ReserveRequest {
            tenant_id: self.tenant.clone(),
            message_id: message_id.into(),
            phone_number_id: self.number.clone(),
            recipient: user.into(),
            free_form: category.is_empty(),
            category: category.into(),
            csw_open: false,
            fep_open: false,
            accepted_at: None,
        }
    }

    async fn reserve(
        &self,
        message_id: &str,
        category: &str,
    ) -> Result<v1::ReserveResponse, tonic::Status> {
        self.operator
            .clone()
            .reserve(self.reserve_request(message_id, category, IT_USER))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn wallet(&self) -> anyhow::Result<v1::Wallet> {
        Ok(self
            .tenant_read
            .clone()
            .get_wallet(v1::GetWalletRequest {
                tenant_id: self.tenant.clone(),
            })
            .await?
            .into_inner())
    }

    async fn reconcile(&self) -> anyhow::Result<v1::ReconcileReport> {
        Ok(self
            .operator
            .clone()
            .reconcile(v1::ReconcileRequest {
                tenant_id: self.tenant.clone(),
            })
            .await?
            .into_inner())
    }

    async fn charges(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT reference, amount FROM billing.ledger
              WHERE tenant_id = $1 AND kind = 'charge' ORDER BY reference",
        )
        .bind(&self.tenant)
        .fetch_all(&infra().await?.pool)
        .await?)
    }

    /// Publishes status events of the tenant's messages (as ingest would), in this order.
    async fn statuses(&self, events: &[(&str, &str)]) -> anyhow::Result<()> {
        let topic = self.scope.topics().status;
        let records: Vec<Outgoing<'_>> = events
            .iter()
            .map(|(message_id, status)| Outgoing {
                traceparent: None,
                topic: &topic,
                key: kafka::conversation_key(&self.tenant, &self.number, IT_USER),
                envelope: status_event(&self.tenant, &self.number, message_id, status),
            })
            .collect();
        let producer = kafka::producer(&infra().await?.brokers)?;
        // One at a time, so the order on the partition is the order given.
        for r in records {
            kafka::publish_all(&producer, std::slice::from_ref(&r)).await?;
        }
        Ok(())
    }

    /// Publishes statuses in one `MessageStatuses` record, as ingest packs a webhook's.
    async fn packed_statuses(&self, events: &[(&str, &str)]) -> anyhow::Result<()> {
        let topic = self.scope.topics().status;
        let envelope = finestra_proto::packing::pack(
            events
                .iter()
                .map(|(m, status)| status_event(&self.tenant, &self.number, m, status))
                .collect(),
        )
        .ok_or_else(|| anyhow::anyhow!("statuses pack"))?;
        let record = Outgoing {
            traceparent: None,
            topic: &topic,
            key: kafka::conversation_key(&self.tenant, &self.number, IT_USER),
            envelope,
        };
        let producer = kafka::producer(&infra().await?.brokers)?;
        kafka::publish_all(&producer, std::slice::from_ref(&record)).await?;
        Ok(())
    }
}

fn status_event(tenant: &str, number: &str, message_id: &str, status: &str) -> Envelope {
    finestra_e2e::chain::status_event(
        tenant,
        number,
        message_id,
        &format!("wamid.{message_id}"),
        IT_USER,
        status,
    )
}

fn assert_reason(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    match r {
        Ok(v) => panic!("expected {reason}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert_eq!(reason_of(&s).as_deref(), Some(reason), "{s:?}");
        }
    }
}

async fn approved_template(tenant: &str, name: &str, category: &str) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(
        "INSERT INTO accounts.templates (template_id, tenant_id, name, language, category, body,
             parameter_count, status)
         VALUES ($1 || ':' || $2, $1, $2, 'en', $3, 'Hello {{1}}', 1, 'APPROVED')
         RETURNING template_id",
    )
    .bind(tenant)
    .bind(name)
    .bind(category)
    .fetch_one(&infra().await?.pool)
    .await?)
}

/// Sets the pair's window in the window service's record (as if the user had written).
async fn set_window(
    tenant: &str,
    number: &str,
    user: &str,
    csw_until: Option<i64>,
    fep_until: Option<i64>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO windows.pair_state (tenant_id, phone_number_id, user_key, csw_until, fep_until)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, phone_number_id, user_key)
           DO UPDATE SET csw_until = excluded.csw_until, fep_until = excluded.fep_until",
    )
    .bind(tenant)
    .bind(number)
    .bind(user)
    .bind(csw_until)
    .bind(fep_until)
    .execute(&infra().await?.pool)
    .await?;
    Ok(())
}

/// The default card's cost of a category in a market.
async fn default_cost(b: &Books, category: &str, market: &str) -> anyhow::Result<i64> {
    let cards = b
        .tenant_read
        .clone()
        .list_rate_cards(v1::ListRateCardsRequest {})
        .await?
        .into_inner()
        .cards;
    let card = cards
        .iter()
        .find(|c| c.version == "2025-07-01")
        .ok_or_else(|| anyhow::anyhow!("the default card is listed"))?;
    card.prices
        .iter()
        .find(|p| p.category == category && p.market == market)
        .map(|p| p.micros)
        .ok_or_else(|| anyhow::anyhow!("{category} {market} is priced"))
}

#[tokio::test(flavor = "multi_thread")]
async fn quotes_price_by_window_category_market_and_partner_markup() -> anyhow::Result<()> {
    let b = Books::start("quote").await?;
    let marketing = approved_template(&b.tenant, "offer", "MARKETING").await?;
    approved_template(&b.tenant, "receipt", "UTILITY").await?;
    b.partner
        .clone()
        .set_markup(v1::SetMarkupRequest {
            partner_id: b.scope.partner_id(),
            markup: Some(v1::Markup {
                category: String::new(),
                basis_points: 1_000,
                fixed_micros: 0,
            }),
        })
        .await?;
    b.partner
        .clone()
        .set_markup(v1::SetMarkupRequest {
            partner_id: b.scope.partner_id(),
            markup: Some(v1::Markup {
                category: "marketing".into(),
                basis_points: 0,
                fixed_micros: 5_000,
            }),
        })
        .await?;
    let quote = |user: &str, free_form: bool, template_id: &str, name: &str| {
        let mut c = b.tenant_read.clone();
        let req = v1::QuoteMessageRequest {
            tenant_id: b.tenant.clone(),
            phone_number_id: b.number.clone(),
            user: user.into(),
            free_form,
            template_id: template_id.into(),
            template_name: name.into(),
            template_language: "en".into(),
        };
        async move { c.quote_message(req).await.map(tonic::Response::into_inner) }
    };
    let it_marketing = default_cost(&b, "MARKETING", "IT").await?;
    let it_utility = default_cost(&b, "UTILITY", "IT").await?;

    // No window: a free-form message cannot be sent, so it is not priced.
    assert_reason(
        quote(IT_USER, true, "", "").await,
        Code::FailedPrecondition,
        "WINDOW_CLOSED",
    );
    // Templates are charged, marketing with its fixed markup, utility with 10 %.
    let q = quote(IT_USER, false, &marketing, "").await?;
    assert_eq!(
        (q.cost_micros, q.price_micros, q.free, q.market.as_str()),
        (it_marketing, it_marketing + 5_000, false, "IT")
    );
    assert_eq!(
        (q.card_version.as_str(), q.currency.as_str()),
        ("2025-07-01", "EUR")
    );
    assert_eq!(q.markup, "5000µ fixed");
    let q = quote(IT_USER, false, "", "receipt").await?;
    assert_eq!(
        (q.cost_micros, q.price_micros),
        (it_utility, it_utility + it_utility / 10),
        "utility outside the window, by name and language"
    );
    assert!(!q.csw_open);

    // Inside the window: utility and service are free; marketing is still charged.
    let now = finestra_testkit::now_secs() * 1_000_000;
    set_window(
        &b.tenant,
        &b.number,
        IT_USER,
        Some(now + 3_600_000_000),
        None,
    )
    .await?;
    let q = quote(IT_USER, false, "", "receipt").await?;
    assert_eq!(
        (q.free, q.free_reason.as_str(), q.price_micros),
        (true, "UTILITY_IN_WINDOW", 0)
    );
    assert!(q.csw_open && q.csw_until.is_some());
    let q = quote(IT_USER, true, "", "").await?;
    assert_eq!(
        (q.free, q.free_reason.as_str(), q.category.as_str()),
        (true, "SERVICE", "SERVICE")
    );
    let q = quote(IT_USER, false, &marketing, "").await?;
    assert_eq!(
        q.price_micros,
        it_marketing + 5_000,
        "marketing is charged in the window"
    );

    // A free entry point makes everything free, marketing included.
    let fep_user = "5511988880000";
    set_window(
        &b.tenant,
        &b.number,
        fep_user,
        None,
        Some(now + 3_600_000_000),
    )
    .await?;
    let q = quote(fep_user, false, &marketing, "").await?;
    assert_eq!(
        (q.free_reason.as_str(), q.market.as_str(), q.price_micros),
        ("FREE_ENTRY_POINT", "BR", 0)
    );

    // Each market has its own price.
    for (user, market) in [
        ("5511988880001", "BR"),
        ("919800000001", "IN"),
        ("14155550100", "NA"),
        ("4915112345678", "DE"),
        ("447700900000", "GB"),
        ("33612345678", "OTHER"),
    ] {
        let q = quote(user, false, &marketing, "").await?;
        assert_eq!(q.market, market, "{user}");
        assert_eq!(
            q.cost_micros,
            default_cost(&b, "MARKETING", market).await?,
            "{user}"
        );
    }

    // Reserve prices the same way and records cost, price and card version.
    let r = b
        .operator
        .clone()
        .reserve(v1::ReserveRequest {
            csw_open: true,
            ..b.reserve_request("m-util", "UTILITY", IT_USER)
        })
        .await?
        .into_inner();
    let rq = r.quote.ok_or_else(|| anyhow::anyhow!("a quote"))?;
    assert_eq!(
        (rq.free_reason.as_str(), rq.price_micros),
        ("UTILITY_IN_WINDOW", 0)
    );
    let stored: (i64, i64, String, String) = sqlx::query_as(
        "SELECT cost, price, card_version, markup FROM billing.reservations
          WHERE tenant_id = $1 AND message_id = 'm-util'",
    )
    .bind(&b.tenant)
    .fetch_one(&infra().await?.pool)
    .await?;
    assert_eq!(stored, (0, 0, "2025-07-01".into(), "none".into()));

    // Refusals: a template paused for its quality, another tenant's number.
    sqlx::query("UPDATE accounts.templates SET status = 'PAUSED' WHERE template_id = $1")
        .bind(&marketing)
        .execute(&infra().await?.pool)
        .await?;
    assert_reason(
        quote(IT_USER, false, &marketing, "").await,
        Code::FailedPrecondition,
        "TEMPLATE_PAUSED",
    );
    let mut c = b.tenant_read.clone();
    assert_reason(
        c.quote_message(v1::QuoteMessageRequest {
            tenant_id: b.tenant.clone(),
            phone_number_id: "pn-not-ours".into(),
            user: IT_USER.into(),
            free_form: true,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    b.billing.stop().await;
    Ok(())
}

/// The source of a card like the default one, with another version, start and IT marketing
/// price.
fn card_source(version: &str, from: &str, it_marketing: i64) -> String {
    let mut out = String::new();
    for line in finestra_domain::pricing::DEFAULT_CARD.lines() {
        let l = line.trim();
        if l.starts_with("version") {
            out.push_str(&format!("version = {version}\n"));
        } else if l.starts_with("effective_from") {
            out.push_str(&format!("effective_from = {from}\n"));
        } else if l.starts_with("MARKETING, IT,") {
            out.push_str(&format!("MARKETING, IT, {it_marketing}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn utc(secs: i64) -> String {
    // Civil date from days (Howard Hinnant's algorithm), for writing a card's start.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_card_prices_from_its_start_never_reprices_the_past_and_can_be_withdrawn_before()
-> anyhow::Result<()> {
    let b = Books::start("cards").await?;
    let cards = b
        .operator
        .clone()
        .list_rate_cards(v1::ListRateCardsRequest {})
        .await?
        .into_inner()
        .cards;
    let newest = cards
        .iter()
        .filter_map(|c| c.effective_from.as_ref().map(to_micros))
        .max()
        .unwrap_or(0)
        / 1_000_000;
    // Far ahead of now and of any card an earlier run added, so no other test's prices change.
    let from = newest.max(4_102_444_800) + 86_400; // after 2100-01-01
    let version = format!("test-{}", b.scope.id());
    let added = b
        .operator
        .clone()
        .add_rate_card(v1::AddRateCardRequest {
            source: card_source(&version, &utc(from), 99_999),
        })
        .await?
        .into_inner();
    assert_eq!(added.version, version);

    let at = |micros: i64| Some(from_micros(micros));
    let switch = from * 1_000_000;
    let before = b
        .operator
        .clone()
        .reserve(v1::ReserveRequest {
            accepted_at: at(switch - 1),
            ..b.reserve_request("before", "MARKETING", IT_USER)
        })
        .await;
    // The tenant has no funds: the refusal still names the price of the card in force.
    assert_reason(before, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    b.top_up(1_000_000, "cards-1").await?;
    let before = b
        .operator
        .clone()
        .reserve(v1::ReserveRequest {
            accepted_at: at(switch - 1),
            ..b.reserve_request("before", "MARKETING", IT_USER)
        })
        .await?
        .into_inner()
        .quote
        .ok_or_else(|| anyhow::anyhow!("quote"))?;
    let after = b
        .operator
        .clone()
        .reserve(v1::ReserveRequest {
            accepted_at: at(switch),
            ..b.reserve_request("after", "MARKETING", IT_USER)
        })
        .await?
        .into_inner()
        .quote
        .ok_or_else(|| anyhow::anyhow!("quote"))?;
    assert_ne!(before.card_version, version, "one µs before: the old card");
    assert_eq!(
        (after.card_version.as_str(), after.cost_micros),
        (version.as_str(), 99_999)
    );

    // Append-only: a card starting no later than the newest is refused, as is one in the past.
    for start in [from, finestra_testkit::now_secs() - 86_400] {
        assert_reason(
            b.operator
                .clone()
                .add_rate_card(v1::AddRateCardRequest {
                    source: card_source(&format!("{version}-late-{start}"), &utc(start), 1),
                })
                .await,
            Code::FailedPrecondition,
            "CARD_NOT_APPENDABLE",
        );
    }
    assert_reason(
        b.operator
            .clone()
            .add_rate_card(v1::AddRateCardRequest {
                source: "version = x\n".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_reason(
        b.partner
            .clone()
            .add_rate_card(v1::AddRateCardRequest {
                source: card_source("partner", &utc(from + 86_400), 1),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // A card that has not started can be withdrawn: by an operator, with a reason, audited.
    let withdraw = |version: &str, reason: &str| v1::WithdrawRateCardRequest {
        version: version.into(),
        reason: reason.into(),
    };
    assert_reason(
        b.partner
            .clone()
            .withdraw_rate_card(withdraw(&version, "a mistake"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_reason(
        b.operator
            .clone()
            .withdraw_rate_card(withdraw(&version, " "))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_reason(
        b.operator
            .clone()
            .withdraw_rate_card(withdraw(&format!("{version}-none"), "a mistake"))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let now = finestra_testkit::now_secs() * 1_000_000;
    let in_force = cards
        .iter()
        .find(|c| c.effective_from.as_ref().map(to_micros).unwrap_or(i64::MAX) <= now)
        .ok_or_else(|| anyhow::anyhow!("no card in force"))?;
    assert_reason(
        b.operator
            .clone()
            .withdraw_rate_card(withdraw(&in_force.version, "a mistake"))
            .await,
        Code::FailedPrecondition,
        "CARD_STARTED",
    );
    let gone = b
        .operator
        .clone()
        .withdraw_rate_card(withdraw(&version, "priced in the wrong unit"))
        .await?
        .into_inner();
    assert_eq!(gone.version, version);
    let listed = b
        .operator
        .clone()
        .list_rate_cards(v1::ListRateCardsRequest {})
        .await?
        .into_inner()
        .cards;
    assert!(listed.iter().all(|c| c.version != version), "withdrawn");
    let (by, reason): (String, String) = sqlx::query_as(
        "SELECT withdrawn_by, reason FROM billing.rate_card_withdrawals WHERE version = $1",
    )
    .bind(&version)
    .fetch_one(&infra().await?.pool)
    .await?;
    assert_eq!(reason, "priced in the wrong unit");
    assert!(!by.is_empty(), "the withdrawing key is recorded");
    // Its start is free again for a corrected card, which prices from then on.
    let corrected = format!("{version}-fixed");
    b.operator
        .clone()
        .add_rate_card(v1::AddRateCardRequest {
            source: card_source(&corrected, &utc(from), 88_888),
        })
        .await?;
    let priced = b
        .operator
        .clone()
        .reserve(v1::ReserveRequest {
            accepted_at: at(switch),
            ..b.reserve_request("after-fix", "MARKETING", IT_USER)
        })
        .await?
        .into_inner()
        .quote
        .ok_or_else(|| anyhow::anyhow!("quote"))?;
    assert_eq!(
        (priced.card_version.as_str(), priced.cost_micros),
        (corrected.as_str(), 88_888)
    );
    b.operator
        .clone()
        .withdraw_rate_card(withdraw(&corrected, "the test is over"))
        .await?;
    b.billing.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_reserves_against_funds_for_a_hundred() -> anyhow::Result<()> {
    let b = Books::start("crowd").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(100 * price, "crowd-1").await?;
    // Several connections, as dispatch would use.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(b.operator.clone());
    }
    let sampler = {
        let (tenant, pool) = (b.tenant.clone(), infra().await?.pool.clone());
        tokio::spawn(async move {
            let mut lowest = i64::MAX;
            for _ in 0..200 {
                let available: Option<i64> = sqlx::query_scalar(
                    "SELECT balance + credit_limit - reserved FROM billing.wallets WHERE tenant_id = $1",
                )
                .bind(&tenant)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
                lowest = lowest.min(available.unwrap_or(i64::MAX));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lowest
        })
    };
    let calls = (0..1_000).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let req = b.reserve_request(&format!("m{i}"), "MARKETING", IT_USER);
        tokio::spawn(async move { c.reserve(req).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut ok = 0;
    let mut refused = 0;
    for r in results {
        match r? {
            Ok(_) => ok += 1,
            Err(s) if reason_of(&s).as_deref() == Some("INSUFFICIENT_FUNDS") => refused += 1,
            Err(s) => anyhow::bail!("unexpected {s:?}"),
        }
    }
    assert_eq!((ok, refused), (100, 900));
    let w = b.wallet().await?;
    assert_eq!(
        (w.balance_micros, w.reserved_micros, w.available_micros),
        (100 * price, 100 * price, 0)
    );
    assert!(sampler.await? >= 0, "available never went negative");
    // A retried reservation is answered, not reserved twice; a different charge is a conflict.
    let again = b.reserve("m0", "MARKETING").await;
    let again = match again {
        Ok(r) => r,
        // m0 may have been among the refused.
        Err(_) => b.reserve(&first_reserved(&b).await?, "MARKETING").await?,
    };
    assert!(again.replayed);
    assert_reason(
        b.reserve(&first_reserved(&b).await?, "UTILITY").await,
        Code::AlreadyExists,
        "IDEMPOTENCY_CONFLICT",
    );
    let report = b.reconcile().await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert_eq!(report.open_reservations, 100);
    b.billing.stop().await;
    Ok(())
}

async fn first_reserved(b: &Books) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT message_id FROM billing.reservations WHERE tenant_id = $1 ORDER BY message_id LIMIT 1",
    )
    .bind(&b.tenant)
    .fetch_one(&infra().await?.pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_five_times_or_read_first_charges_once_and_failed_releases() -> anyhow::Result<()>
{
    let b = Books::start("capture").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(10 * price, "capture-1").await?;
    for m in ["a", "b", "c"] {
        b.reserve(m, "MARKETING").await?;
    }
    b.reserve("free", "").await?; // a service message: recorded at 0
    // a's first three statuses in one packed record (a webhook carrying them together),
    // the rest one record each.
    b.packed_statuses(&[("a", "sent"), ("a", "delivered"), ("a", "delivered")])
        .await?;
    b.statuses(&[
        ("a", "delivered"),
        ("a", "delivered"),
        ("a", "delivered"),
        ("b", "read"),
        ("b", "delivered"),
        ("c", "failed"),
        ("c", "delivered"),
        ("free", "delivered"),
    ])
    .await?;
    let charges = eventually("three charges", WAIT, || async {
        let c = b.charges().await?;
        Ok((c.len() == 3).then_some(c))
    })
    .await?;
    assert_eq!(
        charges,
        vec![
            ("a".to_owned(), -price),
            ("b".to_owned(), -price),
            ("free".to_owned(), 0)
        ],
        "one entry per delivered message; c failed first and stays released"
    );
    let group = b.scope.group("billing");
    let topic = b.scope.topics().status;
    eventually("offsets committed", WAIT, || async {
        Ok((committed(&group, &topic).await? == 9).then_some(()))
    })
    .await?;
    let w = b.wallet().await?;
    assert_eq!((w.balance_micros, w.reserved_micros), (8 * price, 0));
    let report = b.reconcile().await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert_eq!((report.captured_messages, report.open_reservations), (3, 0));

    // Release is idempotent and never undoes a capture.
    let mut op = b.operator.clone();
    let release = |m: &str| v1::ReleaseRequest {
        tenant_id: b.tenant.clone(),
        message_id: m.into(),
    };
    assert_eq!(
        op.release(release("a")).await?.into_inner().state,
        "captured"
    );
    b.reserve("d", "MARKETING").await?;
    assert_eq!(
        op.release(release("d")).await?.into_inner().state,
        "released"
    );
    assert_eq!(
        op.release(release("d")).await?.into_inner().state,
        "released"
    );
    assert_eq!(
        op.release(release("nope")).await?.into_inner().state,
        "unknown"
    );
    assert_eq!(b.wallet().await?.available_micros, 8 * price);

    // Usage, invoice (with CSV) and the partner rollup show the delivered messages.
    let now = finestra_testkit::now_secs() * 1_000_000;
    let usage = b
        .tenant_read
        .clone()
        .list_usage(v1::ListUsageRequest {
            tenant_id: b.tenant.clone(),
            from: Some(from_micros(now - 3_600_000_000)),
            to: Some(from_micros(now + 3_600_000_000)),
            group_by: vec![
                "number".into(),
                "category".into(),
                "market".into(),
                "day".into(),
            ],
        })
        .await?
        .into_inner();
    let rows: Vec<(String, String, i64, i64, i64)> = usage
        .rows
        .iter()
        .map(|r| {
            assert_eq!(r.phone_number_id, b.number);
            assert_eq!(r.day.len(), 10);
            (
                r.category.clone(),
                r.market.clone(),
                r.messages,
                r.charged_messages,
                r.price_micros,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("MARKETING".into(), "IT".into(), 2, 2, 2 * price),
            ("SERVICE".into(), "IT".into(), 1, 0, 0)
        ]
    );
    let month =
        sqlx::query_scalar::<_, String>("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")
            .fetch_one(&infra().await?.pool)
            .await?;
    let invoice = b
        .tenant_read
        .clone()
        .get_invoice(v1::GetInvoiceRequest {
            tenant_id: b.tenant.clone(),
            month: month.clone(),
            csv: true,
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            invoice.total_price_micros,
            invoice.top_ups_micros,
            invoice.lines.len()
        ),
        (2 * price, 10 * price, 2)
    );
    assert!(
        invoice
            .csv
            .contains(&format!("{},{month},MARKETING,IT,2,2,EUR,", b.tenant)),
        "{}",
        invoice.csv
    );
    let rollup = b
        .partner
        .clone()
        .get_partner_rollup(v1::GetPartnerRollupRequest {
            partner_id: b.scope.partner_id(),
            month,
        })
        .await?
        .into_inner();
    assert_eq!(rollup.lines.len(), 1);
    assert_eq!(rollup.total_price_micros, 2 * price);
    assert_eq!(rollup.margin_micros, 0, "no markup set");
    let history = b
        .tenant_read
        .clone()
        .list_wallet_history(v1::ListWalletHistoryRequest {
            tenant_id: b.tenant.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(history.entries.len(), 2);
    assert!(!history.next_page_token.is_empty());
    b.billing.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_leaves_settling_to_statuses_and_old_reservations_expire() -> anyhow::Result<()> {
    let b = Books::start("block").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(10 * price, "block-1").await?;
    b.reserve("queued", "MARKETING").await?;
    b.reserve("handed", "MARKETING").await?;
    b.statuses(&[("handed", "sent")]).await?;
    let producer = kafka::producer(&infra().await?.brokers)?;
    let user_topic = b.scope.topics().user;
    let block = Envelope {
        event_id: format!("block:{}", b.scope.id()),
        tenant_id: b.tenant.clone(),
        occurred_at: Some(from_micros(finestra_testkit::now_secs() * 1_000_000)),
        recorded_at: None,
        payload: Some(Payload::UserBlock(UserBlock {
            phone_number_id: b.number.clone(),
            user: Some(UserRef {
                wa_id: IT_USER.into(),
                ..UserRef::default()
            }),
            blocked: true,
        })),
    };
    // The block comes after `sent` was applied (another topic: no order between them).
    let pool = infra().await?.pool.clone();
    eventually("sent applied", WAIT, || async {
        let sent: bool = sqlx::query_scalar(
            "SELECT sent FROM billing.reservations WHERE tenant_id = $1 AND message_id = 'handed'",
        )
        .bind(&b.tenant)
        .fetch_one(&pool)
        .await?;
        Ok(sent.then_some(()))
    })
    .await?;
    kafka::publish_all(
        &producer,
        &[Outgoing {
            traceparent: None,
            topic: &user_topic,
            key: kafka::conversation_key(&b.tenant, &b.number, IT_USER),
            envelope: block,
        }],
    )
    .await?;
    let state = |m: &'static str| {
        let (pool, tenant) = (pool.clone(), b.tenant.clone());
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT state FROM billing.reservations WHERE tenant_id = $1 AND message_id = $2",
            )
            .bind(&tenant)
            .bind(m)
            .fetch_one(&pool)
            .await
        }
    };
    // The block itself releases nothing (a message in flight may be delivered yet): dispatch
    // fails what it still holds for the user, and that `failed` status releases it.
    b.statuses(&[("queued", "failed")]).await?;
    eventually(
        "the queued message released by its failed status",
        WAIT,
        || async { Ok((state("queued").await? == "released").then_some(())) },
    )
    .await?;
    assert_eq!(
        state("handed").await?,
        "open",
        "the provider has it: its status decides"
    );

    // A reservation never delivered is released after 30 days.
    let old = finestra_testkit::now_secs() * 1_000_000 - 31 * 24 * 3_600 * 1_000_000;
    b.operator
        .clone()
        .reserve(v1::ReserveRequest {
            accepted_at: Some(from_micros(old)),
            ..b.reserve_request("ancient", "MARKETING", IT_USER)
        })
        .await?;
    let hot = hot_wallets(&infra().await?.redis);
    let now = finestra_domain::Timestamp::from_micros(finestra_testkit::now_secs() * 1_000_000);
    finestra_billing::sweep_once(&pool, &hot, now.plus_hours(-30 * 24), now).await?;
    assert_eq!(state("ancient").await?, "released");
    assert_eq!(
        state("handed").await?,
        "open",
        "a recent reservation is kept"
    );
    let w = b.wallet().await?;
    assert_eq!((w.balance_micros, w.reserved_micros), (10 * price, price));
    let report = b.reconcile().await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    b.billing.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_lost_mid_run_rebuilds_reservations_and_the_books_reconcile() -> anyhow::Result<()> {
    let b = Books::start("flush").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(80 * price, "flush-1").await?;
    let run = |range: std::ops::Range<usize>| {
        futures::future::join_all(range.map(|i| {
            let mut c = b.operator.clone();
            let req = b.reserve_request(&format!("f{i}"), "MARKETING", IT_USER);
            async move { c.reserve(req).await.is_ok() }
        }))
    };
    let first = run(0..50).await.into_iter().filter(|ok| *ok).count();
    assert!(b.scope.lose_redis().await? > 0, "the hot wallet is lost");
    let second = run(50..150).await.into_iter().filter(|ok| *ok).count();
    assert_eq!(
        (first, second),
        (50, 30),
        "the funds for 80, across the loss"
    );
    b.statuses(&[("f1", "delivered"), ("f2", "failed")]).await?;
    eventually("captured", WAIT, || async {
        Ok((b.charges().await?.len() == 1).then_some(()))
    })
    .await?;
    // The failed status releases in its own batch, maybe after the capture's.
    let report = eventually("f1 captured and f2 released", WAIT, || async {
        let report = b.reconcile().await?;
        Ok((report.open_reservations == 78).then_some(report))
    })
    .await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    b.billing.stop().await;
    Ok(())
}

/// The hot wallet of a test's tenant, as the billing service under test keeps it.
fn hot_wallets(redis: &redis::aio::ConnectionManager) -> finestra_billing::hot::HotWallets {
    finestra_billing::hot::HotWallets::new(redis.clone(), "fin", Duration::from_secs(600))
}

fn capture(tenant: &str, message_id: &str) -> finestra_billing::reservations::Settlement {
    finestra_billing::reservations::Settlement {
        tenant_id: tenant.to_owned(),
        message_id: message_id.to_owned(),
        end: finestra_billing::reservations::End::Capture,
        at: finestra_testkit::now_secs() * 1_000_000,
        reason: "delivered".into(),
    }
}

/// The race `make chaos` met after a FLUSHALL, played step by step: a reload reads its
/// Postgres snapshot, a capture then commits (the hash is not there to end the reservation
/// in), and the reload loads the snapshot it read before. The hash must not hold the captured
/// reservation nor the balance from before the charge.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_from_a_snapshot_older_than_a_capture_holds_no_captured_reservation()
-> anyhow::Result<()> {
    let b = Books::start("reload-race").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(10 * price, "reload-race-1").await?;
    b.reserve("kept", "MARKETING").await?;
    b.reserve("charged", "MARKETING").await?;
    let infra = infra().await?;
    let hot = hot_wallets(&infra.redis);

    let snapshot = finestra_billing::pg::snapshot(&infra.pool, &b.tenant).await?;
    assert_eq!(
        snapshot.open.len(),
        2,
        "both reservations are open when read"
    );
    hot.forget(&b.tenant).await?; // Redis lost the wallet
    finestra_billing::settle::settle(&infra.pool, &hot, &[capture(&b.tenant, "charged")]).await?;
    hot.load(&b.tenant, &snapshot).await?;

    let cached = hot.cached(&b.tenant).await?.expect("the wallet is loaded");
    assert_eq!(
        cached.open.keys().collect::<Vec<_>>(),
        ["kept"],
        "the captured reservation is not held again"
    );
    assert_eq!(
        (cached.balance, cached.reserved),
        (9 * price, price),
        "the balance is charged as Postgres charged it"
    );
    let report = b.reconcile().await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    b.billing.stop().await;
    Ok(())
}

/// A reservation's confirmation into the hash that arrives after the reservation was captured
/// (a slow writer) does not put it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_arriving_after_the_capture_does_not_hold_funds_again() -> anyhow::Result<()>
{
    let b = Books::start("late-confirm").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(10 * price, "late-confirm-1").await?;
    b.reserve("late", "MARKETING").await?;
    let infra = infra().await?;
    let hot = hot_wallets(&infra.redis);

    finestra_billing::settle::settle(&infra.pool, &hot, &[capture(&b.tenant, "late")]).await?;
    hot.confirm(&[(b.tenant.as_str(), "late", price)]).await?;

    let cached = hot.cached(&b.tenant).await?.expect("the wallet is loaded");
    assert!(cached.open.is_empty(), "{:?}", cached.open);
    assert_eq!((cached.balance, cached.reserved), (9 * price, 0));
    let report = b.reconcile().await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    b.billing.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_a_tampered_balance() -> anyhow::Result<()> {
    let b = Books::start("tamper").await?;
    b.top_up(1_000, "tamper-1").await?;
    assert!(b.reconcile().await?.differences.is_empty());
    sqlx::query("UPDATE billing.wallets SET balance = balance + 1 WHERE tenant_id = $1")
        .bind(&b.tenant)
        .execute(&infra().await?.pool)
        .await?;
    let report = b.reconcile().await?;
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    let d = &report.differences[0];
    assert_eq!((d.expected, d.actual), (1_000, 1_001));
    // Put it back so the database stays consistent for a full reconcile.
    sqlx::query("UPDATE billing.wallets SET balance = balance - 1 WHERE tenant_id = $1")
        .bind(&b.tenant)
        .execute(&infra().await?.pool)
        .await?;
    b.billing.stop().await;
    Ok(())
}

fn spawn_billing(
    scope: &Scope,
    group: &str,
    crash_after: u32,
) -> anyhow::Result<std::process::Child> {
    Ok(
        std::process::Command::new(finestra_testkit::workspace_binary("finestra-billing")?)
            .envs(finestra_testkit::store_env())
            .env("FINESTRA_TOPIC_SUFFIX", format!(".{}", scope.id()))
            .env("FINESTRA_BILLING_CONSUMER_GROUP", group)
            .env("FINESTRA_BILLING_MAX_BATCH", "50")
            .env(
                "FINESTRA_BILLING_CRASH_AFTER_BATCHES",
                crash_after.to_string(),
            )
            .env("FINESTRA_GRPC_ADDR", "127.0.0.1:0")
            .env("FINESTRA_METRICS_ADDR", "127.0.0.1:0")
            .env("FINESTRA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(billing_log(scope, crash_after))?)
            .spawn()?,
    )
}

/// Where a billing process started by [`spawn_billing`] writes its log.
fn billing_log(scope: &Scope, crash_after: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("finestra-billing-{}-{crash_after}.log", scope.id()))
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_killed_between_the_ledger_write_and_the_commit_loses_and_doubles_nothing()
-> anyhow::Result<()> {
    let scope = Scope::new();
    let infra = infra().await?;
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("crash", 1).await?;
    let n: i64 = 400;
    let price = 1_000;
    finestra_billing::pg::top_up(
        &infra.pool,
        &tenant,
        "crash-1",
        n * price,
        "EUR",
        "",
        finestra_domain::Timestamp::from_micros(0),
    )
    .await?;
    let rows: Vec<_> = (0..n)
        .map(|i| marketing_reservation(&tenant, &number, &format!("k{i}"), price))
        .collect();
    finestra_billing::reservations::insert_batch(&infra.pool, &rows).await?;
    let topic = scope.topics().status;
    let producer = kafka::producer(&infra.brokers)?;
    let records: Vec<Outgoing<'_>> = (0..n)
        .map(|i| Outgoing {
            traceparent: None,
            topic: &topic,
            key: kafka::conversation_key(&tenant, &number, IT_USER),
            envelope: status_event(&tenant, &number, &format!("k{i}"), "delivered"),
        })
        .collect();
    kafka::publish_all(&producer, &records).await?;

    let group = scope.group("billing-process");
    let charges = || {
        let (pool, tenant) = (infra.pool.clone(), tenant.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM billing.ledger WHERE tenant_id = $1 AND kind = 'charge'",
            )
            .bind(&tenant)
            .fetch_one(&pool)
            .await
        }
    };
    // The failpoint aborts the process right after its first batch is durable in Postgres,
    // before Redis and before the offset commit.
    // A process that could not start (a busy machine can time a connection out) is started
    // again: what is tested is the abort after the write.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut first = spawn_billing(&scope, &group, 1)?;
        let exit = eventually("the process ended", Duration::from_secs(90), || {
            let status = first.try_wait();
            async move { Ok(status?) }
        })
        .await?;
        use std::os::unix::process::ExitStatusExt as _;
        if exit.signal() == Some(6) {
            break; // SIGABRT: the failpoint
        }
        let log = std::fs::read_to_string(billing_log(&scope, 1)).unwrap_or_default();
        anyhow::ensure!(
            attempts < 3 && charges().await? == 0,
            "the billing process ended without its failpoint ({exit}):\n{log}"
        );
        eprintln!("billing did not reach its failpoint ({exit}); starting it again:\n{log}");
    }
    let written = charges().await?;
    assert!(
        written > 0 && written < n,
        "a batch was written ({written} of {n})"
    );
    assert_eq!(committed(&group, &topic).await?, 0, "and never committed");

    // After the dead member's session expired (10 s), a successor replays. A deliberate wait
    // for the broker's clock: on tansu 0.6 a successor that joins sooner can be left with no
    // partitions (README, "Dev broker"), so joining cannot serve as the probe.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut second = spawn_billing(&scope, &group, 0)?;
    let done = eventually(
        "every status committed",
        Duration::from_secs(120),
        || async { Ok((committed(&group, &topic).await? == n).then_some(())) },
    )
    .await;
    second.kill()?;
    second.wait()?;
    done?;
    assert_eq!(
        charges().await?,
        n,
        "each delivered message charged once: none lost, none doubled"
    );
    let w = finestra_billing::pg::wallet(&infra.pool, &tenant).await?;
    assert_eq!((w.balance, w.reserved), (0, 0));
    let hot = hot_wallets(&infra.redis);
    let report = finestra_billing::reconcile::run(&infra.pool, &hot, Some(&tenant)).await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn crossing_the_low_balance_threshold_tells_the_tenant_once() -> anyhow::Result<()> {
    let b = Books::start("low").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(10 * price, "low-1").await?;
    let w = b
        .partner
        .clone()
        .set_credit_limit(v1::SetCreditLimitRequest {
            tenant_id: b.tenant.clone(),
            credit_limit_micros: 2 * price,
            low_balance_threshold_micros: 5 * price,
        })
        .await?
        .into_inner();
    assert_eq!(
        w.available_micros,
        12 * price,
        "the credit limit is headroom"
    );
    for i in 0..9 {
        b.reserve(&format!("l{i}"), "MARKETING").await?;
    }
    let topic = b.scope.topics().billing;
    let events = eventually("a low-balance event", WAIT, || async {
        let events = finestra_testkit::read_all(&topic).await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(events.len(), 1, "once per crossing: {events:?}");
    match &events[0].payload {
        Some(Payload::WalletLowBalance(l)) => {
            assert_eq!(
                l.available_micros,
                4 * price,
                "crossed by the 8th reservation"
            );
            assert_eq!(l.threshold_micros, 5 * price);
            assert_eq!(events[0].tenant_id, b.tenant);
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    // Postpaid: the credit limit lets the balance go negative, never past it.
    for i in 9..12 {
        b.reserve(&format!("l{i}"), "MARKETING").await?;
    }
    assert_reason(
        b.reserve("l12", "MARKETING").await,
        Code::FailedPrecondition,
        "INSUFFICIENT_FUNDS",
    );
    b.billing.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_batch_answers_each_reservation_on_its_own() -> anyhow::Result<()> {
    let b = Books::start("batch").await?;
    let price = default_cost(&b, "MARKETING", "IT").await?;
    b.top_up(3 * price, "batch-1").await?;
    b.reserve("x0", "MARKETING").await?;
    let batch = |ids: &[(&str, &str)]| v1::ReserveBatchRequest {
        reservations: ids
            .iter()
            .map(|(m, c)| b.reserve_request(m, c, IT_USER))
            .collect(),
    };
    let results = b
        .operator
        .clone()
        .reserve_batch(batch(&[
            ("x0", "MARKETING"), // a retry: replayed
            ("x1", "MARKETING"),
            ("x2", "MARKETING"),
            ("x3", "MARKETING"), // no funds left
            ("x0", "UTILITY"),   // same id, another charge
            ("x4", ""),          // free-form: free, always reserved
        ]))
        .await?
        .into_inner()
        .results;
    let summary: Vec<(bool, bool, &str)> = results
        .iter()
        .map(|r| {
            (
                r.reserved.is_some(),
                r.reserved.as_ref().is_some_and(|x| x.replayed),
                r.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(summary[0], (true, true, ""), "the retry is replayed");
    // Funds for two of x1..x3 (which two depends on the order they reach the writer).
    let mut middle = summary[1..4].to_vec();
    middle.sort();
    assert_eq!(
        middle,
        vec![
            (false, false, "INSUFFICIENT_FUNDS"),
            (true, false, ""),
            (true, false, "")
        ]
    );
    assert_eq!(summary[4], (false, false, "IDEMPOTENCY_CONFLICT"));
    assert_eq!(
        summary[5],
        (true, false, ""),
        "a free message needs no funds"
    );
    assert!(
        results[1..4]
            .iter()
            .any(|r| r.code == Code::FailedPrecondition as i32)
    );
    let w = b.wallet().await?;
    assert_eq!((w.reserved_micros, w.available_micros), (3 * price, 0));
    assert_reason(
        b.tenant_read
            .clone()
            .reserve_batch(batch(&[("y", "")]))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert!(b.reconcile().await?.differences.is_empty());
    b.billing.stop().await;
    Ok(())
}

/// A marketing template to an Italian user at `price`, as acceptance reserves it.
fn marketing_reservation(
    tenant: &str,
    number: &str,
    message_id: &str,
    price: i64,
) -> finestra_billing::reservations::ReservationRow {
    finestra_billing::reservations::ReservationRow {
        tenant_id: tenant.to_owned(),
        message_id: message_id.to_owned(),
        phone_number_id: number.to_owned(),
        recipient: IT_USER.into(),
        category: "MARKETING".into(),
        market: "IT".into(),
        card_version: "2025-07-01".into(),
        currency: "EUR".into(),
        cost: price,
        price,
        markup: "none".into(),
        free_reason: String::new(),
        accepted_at: 0,
    }
}

/// A reservation batch adds its prices to the wallet's `reserved` whether the wallet row is
/// new, there already, or gone since (made again).
#[tokio::test(flavor = "multi_thread")]
async fn reservation_batches_count_into_the_wallet_row_new_existing_or_made_again()
-> anyhow::Result<()> {
    use finestra_billing::reservations::insert_batch;
    let scope = Scope::new();
    let infra = infra().await?;
    let (tenant, number, _) = scope.tenant_with_number("known-wallet", 1).await?;
    let row = |i: u32, price: i64| marketing_reservation(&tenant, &number, &format!("w{i}"), price);
    let reserved = || async {
        sqlx::query_scalar::<_, i64>("SELECT reserved FROM billing.wallets WHERE tenant_id = $1")
            .bind(&tenant)
            .fetch_optional(&infra.pool)
            .await
    };
    // No wallet row yet: the batch makes it.
    insert_batch(&infra.pool, &[row(1, 100), row(2, 200)]).await?;
    assert_eq!(reserved().await?, Some(300));
    // There now: counted into the same row (a replayed message adds nothing).
    insert_batch(&infra.pool, &[row(3, 50), row(1, 100)]).await?;
    assert_eq!(reserved().await?, Some(350));
    // The tenant's billing rows are gone (wallet and reservations
    // alike, so the books still agree): the wallet is made again with this batch's sum.
    for table in ["billing.reservations", "billing.wallets"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(&tenant)
            .execute(&infra.pool)
            .await?;
    }
    insert_batch(&infra.pool, &[row(4, 7)]).await?;
    assert_eq!(reserved().await?, Some(7));
    insert_batch(&infra.pool, &[row(5, 3)]).await?;
    assert_eq!(reserved().await?, Some(10));
    Ok(())
}
