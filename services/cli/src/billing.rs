//! `finestra billing …`: quotes, wallets, top-ups, usage, invoices, rate cards, markups and
//! reconciliation, over the billing service's gRPC API.

use anyhow::Context as _;
use clap::Subcommand;
use finestra_proto::prost_types::Timestamp;
use finestra_proto::time::{from_micros, to_micros};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::{self, Quote, Wallet};
use serde_json::json;

use crate::{AuthedChannel, rpc_error};

#[derive(Subcommand)]
pub enum BillingCommand {
    /// What a message would cost now, and why.
    Quote {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        /// wa_id of the recipient (its calling code gives the market).
        #[arg(long)]
        user: String,
        /// A free-form (service) message instead of a template.
        #[arg(long)]
        free_form: bool,
        #[arg(long, default_value = "")]
        template_id: String,
        /// Template name (with --language).
        #[arg(long, default_value = "")]
        template: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// A tenant's wallet.
    Wallet {
        #[arg(long)]
        tenant: String,
    },
    /// Credit a tenant's wallet (partner or operator key); idempotent by --id.
    TopUp {
        #[arg(long)]
        tenant: String,
        /// Amount in micro-units (1 EUR = 1000000).
        #[arg(long)]
        micros: i64,
        /// Your id of this top-up (e.g. the payment reference).
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Postpaid headroom and the low-balance threshold of a tenant.
    CreditLimit {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        micros: i64,
        #[arg(long, default_value_t = 0)]
        low_balance_threshold: i64,
    },
    /// Usage between two UTC dates, grouped.
    Usage {
        #[arg(long)]
        tenant: String,
        /// YYYY-MM-DD (inclusive).
        #[arg(long)]
        from: String,
        /// YYYY-MM-DD (exclusive).
        #[arg(long)]
        to: String,
        /// Comma-separated: number, category, market, day.
        #[arg(long, default_value = "category,market")]
        group_by: String,
    },
    /// A tenant's invoice for a month.
    Invoice {
        #[arg(long)]
        tenant: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
        /// Print the CSV export instead.
        #[arg(long)]
        csv: bool,
    },
    /// A partner's month across its tenants.
    Rollup {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        month: String,
    },
    /// Rate cards (append-only).
    #[command(subcommand)]
    RateCard(RateCardCommand),
    /// A partner's markup on provider cost.
    #[command(subcommand)]
    Markup(MarkupCommand),
    /// Prove the books balance; exits non-zero on any difference.
    Reconcile {
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

#[derive(Subcommand)]
pub enum RateCardCommand {
    List,
    /// Append a card from a file in the rate-card format (crates/domain/rates/*.card).
    Add {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Withdraw a card that has not started yet (audited: the card, your key, the reason).
    Withdraw {
        #[arg(long)]
        version: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum MarkupCommand {
    Get {
        #[arg(long)]
        partner: String,
    },
    /// Basis points or a fixed amount, for one category or (without --category) all others.
    Set {
        #[arg(long)]
        partner: String,
        #[arg(long, default_value = "*")]
        category: String,
        #[arg(long, default_value_t = 0)]
        bp: u32,
        #[arg(long, default_value_t = 0)]
        fixed_micros: i64,
    },
}

/// Micro-units as a decimal amount.
fn money(micros: i64, currency: &str) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06} {currency}", m / 1_000_000, m % 1_000_000)
}

fn day_start(date: &str) -> anyhow::Result<Timestamp> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .with_context(|| format!("{date:?} is not YYYY-MM-DD"))?;
    let secs = d
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp())
        .context("a valid date")?;
    Ok(from_micros(secs * 1_000_000))
}

fn quote_json(q: &Quote) -> serde_json::Value {
    json!({
        "price_micros": q.price_micros, "cost_micros": q.cost_micros, "currency": q.currency,
        "free": q.free, "free_reason": q.free_reason, "category": q.category, "market": q.market,
        "card_version": q.card_version, "markup": q.markup, "csw_open": q.csw_open,
        "fep_open": q.fep_open,
    })
}

fn print_quote(q: &Quote) {
    if q.free {
        println!(
            "free ({}): {} to {} — window {}, free entry point {}, card {}",
            q.free_reason,
            q.category,
            q.market,
            if q.csw_open { "open" } else { "closed" },
            if q.fep_open { "open" } else { "closed" },
            q.card_version
        );
    } else {
        println!(
            "{} ({} to {}: provider cost {} + markup {}; card {}; window {})",
            money(q.price_micros, &q.currency),
            q.category,
            q.market,
            money(q.cost_micros, &q.currency),
            q.markup,
            q.card_version,
            if q.csw_open { "open" } else { "closed" },
        );
    }
}

fn wallet_json(w: &Wallet) -> serde_json::Value {
    json!({
        "tenant_id": w.tenant_id, "currency": w.currency, "balance_micros": w.balance_micros,
        "credit_limit_micros": w.credit_limit_micros, "reserved_micros": w.reserved_micros,
        "available_micros": w.available_micros,
        "low_balance_threshold_micros": w.low_balance_threshold_micros,
    })
}

fn print_wallet(w: &Wallet) {
    println!(
        "{}: balance {}, credit limit {}, reserved {}, available {}",
        w.tenant_id,
        money(w.balance_micros, &w.currency),
        money(w.credit_limit_micros, &w.currency),
        money(w.reserved_micros, &w.currency),
        money(w.available_micros, &w.currency)
    );
}

pub async fn run(
    channel: AuthedChannel,
    command: BillingCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut c = BillingServiceClient::new(channel);
    match command {
        BillingCommand::Quote {
            tenant,
            phone_number_id,
            user,
            free_form,
            template_id,
            template,
            language,
        } => {
            let q = c
                .quote_message(v1::QuoteMessageRequest {
                    tenant_id: tenant,
                    phone_number_id,
                    user,
                    free_form,
                    template_id,
                    template_name: template,
                    template_language: language,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", quote_json(&q));
            } else {
                print_quote(&q);
            }
        }
        BillingCommand::Wallet { tenant } => {
            let w = c
                .get_wallet(v1::GetWalletRequest { tenant_id: tenant })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", wallet_json(&w));
            } else {
                print_wallet(&w);
            }
        }
        BillingCommand::TopUp {
            tenant,
            micros,
            id,
            note,
        } => {
            let w = c
                .top_up(v1::TopUpRequest {
                    tenant_id: tenant,
                    amount_micros: micros,
                    top_up_id: id,
                    note,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", wallet_json(&w));
            } else {
                print_wallet(&w);
            }
        }
        BillingCommand::CreditLimit {
            tenant,
            micros,
            low_balance_threshold,
        } => {
            let w = c
                .set_credit_limit(v1::SetCreditLimitRequest {
                    tenant_id: tenant,
                    credit_limit_micros: micros,
                    low_balance_threshold_micros: low_balance_threshold,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", wallet_json(&w));
            } else {
                print_wallet(&w);
            }
        }
        BillingCommand::Usage {
            tenant,
            from,
            to,
            group_by,
        } => {
            let u = c
                .list_usage(v1::ListUsageRequest {
                    tenant_id: tenant,
                    from: Some(day_start(&from)?),
                    to: Some(day_start(&to)?),
                    group_by: group_by
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for r in &u.rows {
                if json_out {
                    println!(
                        "{}",
                        json!({"phone_number_id": r.phone_number_id, "category": r.category,
                               "market": r.market, "day": r.day, "messages": r.messages,
                               "charged_messages": r.charged_messages,
                               "cost_micros": r.cost_micros, "price_micros": r.price_micros})
                    );
                } else {
                    let key: Vec<&str> = [&r.phone_number_id, &r.day, &r.category, &r.market]
                        .into_iter()
                        .map(String::as_str)
                        .filter(|s| !s.is_empty())
                        .collect();
                    println!(
                        "{:<40} {:>6} messages, {:>6} charged, cost {}, price {}",
                        if key.is_empty() {
                            "total".to_owned()
                        } else {
                            key.join(" ")
                        },
                        r.messages,
                        r.charged_messages,
                        money(r.cost_micros, &u.currency),
                        money(r.price_micros, &u.currency)
                    );
                }
            }
        }
        BillingCommand::Invoice { tenant, month, csv } => {
            let i = c
                .get_invoice(v1::GetInvoiceRequest {
                    tenant_id: tenant,
                    month,
                    csv,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if csv {
                print!("{}", i.csv);
            } else if json_out {
                let lines: Vec<serde_json::Value> = i
                    .lines
                    .iter()
                    .map(|l| {
                        json!({"category": l.category, "market": l.market, "messages": l.messages,
                               "charged_messages": l.charged_messages,
                               "cost_micros": l.cost_micros, "price_micros": l.price_micros})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"tenant_id": i.tenant_id, "partner_id": i.partner_id,
                           "month": i.month, "currency": i.currency, "lines": lines,
                           "total_cost_micros": i.total_cost_micros,
                           "total_price_micros": i.total_price_micros,
                           "top_ups_micros": i.top_ups_micros})
                );
            } else {
                println!(
                    "Invoice {} — tenant {} (partner {})",
                    i.month, i.tenant_id, i.partner_id
                );
                for l in &i.lines {
                    println!(
                        "  {:<16} {:<6} {:>6} messages ({:>6} charged)  {}",
                        l.category,
                        l.market,
                        l.messages,
                        l.charged_messages,
                        money(l.price_micros, &i.currency)
                    );
                }
                println!(
                    "  total                                           {}",
                    money(i.total_price_micros, &i.currency)
                );
                println!(
                    "  top-ups this month: {}",
                    money(i.top_ups_micros, &i.currency)
                );
            }
        }
        BillingCommand::Rollup { partner, month } => {
            let r = c
                .get_partner_rollup(v1::GetPartnerRollupRequest {
                    partner_id: partner,
                    month,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for l in &r.lines {
                println!(
                    "{:<40} {:>6} messages, cost {}, price {}",
                    l.tenant_id,
                    l.messages,
                    money(l.cost_micros, &r.currency),
                    money(l.price_micros, &r.currency)
                );
            }
            println!(
                "total: cost {}, price {}, margin {}",
                money(r.total_cost_micros, &r.currency),
                money(r.total_price_micros, &r.currency),
                money(r.margin_micros, &r.currency)
            );
        }
        BillingCommand::RateCard(RateCardCommand::List) => {
            let cards = c
                .list_rate_cards(v1::ListRateCardsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner()
                .cards;
            for card in cards {
                let from = card.effective_from.as_ref().map_or(0, to_micros) / 1_000_000;
                let from = chrono::DateTime::from_timestamp(from, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!(
                    "{} from {from} ({}, {} prices)",
                    card.version,
                    card.currency,
                    card.prices.len()
                );
            }
        }
        BillingCommand::RateCard(RateCardCommand::Add { file }) => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let card = c
                .add_rate_card(v1::AddRateCardRequest { source })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("rate card {} added", card.version);
        }
        BillingCommand::RateCard(RateCardCommand::Withdraw { version, reason }) => {
            let card = c
                .withdraw_rate_card(v1::WithdrawRateCardRequest { version, reason })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("rate card {} withdrawn", card.version);
        }
        BillingCommand::Markup(m) => {
            let markups = match m {
                MarkupCommand::Get { partner } => c
                    .get_markup(v1::GetMarkupRequest {
                        partner_id: partner,
                    })
                    .await
                    .map_err(rpc_error)?,
                MarkupCommand::Set {
                    partner,
                    category,
                    bp,
                    fixed_micros,
                } => c
                    .set_markup(v1::SetMarkupRequest {
                        partner_id: partner,
                        markup: Some(v1::Markup {
                            category,
                            basis_points: bp,
                            fixed_micros,
                        }),
                    })
                    .await
                    .map_err(rpc_error)?,
            }
            .into_inner();
            for m in markups.markups {
                println!(
                    "{} {}: {} bp, {} µ fixed",
                    markups.partner_id, m.category, m.basis_points, m.fixed_micros
                );
            }
        }
        BillingCommand::Reconcile { tenant } => {
            let r = c
                .reconcile(v1::ReconcileRequest { tenant_id: tenant })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                let diffs: Vec<serde_json::Value> = r
                    .differences
                    .iter()
                    .map(|d| json!({"tenant_id": d.tenant_id, "check": d.check, "expected": d.expected, "actual": d.actual}))
                    .collect();
                println!(
                    "{}",
                    json!({"tenants_checked": r.tenants_checked, "differences": diffs,
                           "open_reservations": r.open_reservations,
                           "captured_messages": r.captured_messages,
                           "ledger_entries": r.ledger_entries})
                );
            } else {
                println!(
                    "checked {} tenants: {} ledger entries, {} captured messages, {} open reservations",
                    r.tenants_checked, r.ledger_entries, r.captured_messages, r.open_reservations
                );
                for d in &r.differences {
                    println!(
                        "DIFFERENCE {}: {} (expected {}, found {})",
                        d.tenant_id, d.check, d.expected, d.actual
                    );
                }
            }
            if !r.differences.is_empty() {
                anyhow::bail!("{} differences", r.differences.len());
            }
            if !json_out {
                println!("the books balance");
            }
        }
    }
    Ok(())
}
