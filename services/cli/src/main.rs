//! `finestra`: the operator and admin CLI. Control-plane commands talk to the accounts service
//! over gRPC with an API key (`FINESTRA_ENDPOINT`, `FINESTRA_API_KEY`); `bootstrap`, `migrate`,
//! `topics` and `dev` work on the stores directly, for whoever runs the installation.

mod billing;
mod dispatch;
mod sim;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use finestra_platform::auth::{AuthedChannel, Bearer, Owner, Scope};
use finestra_platform::config::env_string;
use finestra_proto::v1::accounts_service_client::AccountsServiceClient;
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::{self, GetWindowRequest, ListOpenWindowsRequest, Window};
use finestra_registry::Registry;

#[derive(Parser)]
#[command(name = "finestra", version, about = "Finestra operator and admin CLI")]
struct Cli {
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Api {
    /// The accounts service's gRPC endpoint.
    #[arg(
        long,
        env = "FINESTRA_ENDPOINT",
        default_value = "http://127.0.0.1:7050"
    )]
    endpoint: String,
    /// The API key to act with.
    #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
    api_key: String,
}

#[derive(Subcommand)]
enum OpsCommand {
    /// Drop the history tables' months before the last N (window events, messages, tenant
    /// events, webhook deliveries) and create the coming months' partitions. The ledger is
    /// kept forever unless --ledger-keep-months is given; its dropped months' balance is
    /// carried forward, so the books still reconcile.
    Retention {
        /// Months of history kept, the current one included.
        #[arg(long)]
        keep_months: u32,
        /// Months of ledger kept (default: forever).
        #[arg(long)]
        ledger_keep_months: Option<u32>,
        /// Say what would be dropped; drop nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Apply the accounts schema's migrations.
    Migrate,
    /// Create the event topics (existing ones are left alone).
    Topics {
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Operations on the stores directly.
    Ops {
        #[command(subcommand)]
        command: OpsCommand,
    },
    /// Create an operator key (printed once). Refused when one exists, unless --another.
    Bootstrap {
        /// `fin_live_` in production, `fin_test_` elsewhere.
        #[arg(long, default_value = "fin_live_")]
        prefix: String,
        /// Create one more operator key although one exists (needs database access anyway).
        #[arg(long)]
        another: bool,
    },
    /// Partners (BSPs).
    Partner {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: PartnerCommand,
    },
    /// Tenants (businesses).
    Tenant {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Business phone numbers.
    Number {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: NumberCommand,
    },
    /// API keys.
    Key {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Message templates.
    Template {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Customer-service windows.
    Window {
        /// The window service's gRPC endpoint.
        #[arg(
            long,
            env = "FINESTRA_WINDOW_ENDPOINT",
            default_value = "http://127.0.0.1:7052"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: WindowCommand,
    },
    /// Billing: quotes, wallets, top-ups, usage, invoices, rate cards, reconciliation.
    Billing {
        /// The billing service's gRPC endpoint.
        #[arg(
            long,
            env = "FINESTRA_BILLING_ENDPOINT",
            default_value = "http://127.0.0.1:7053"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: billing::BillingCommand,
    },
    /// Send a message (text, template, document, image) under the channel's rules.
    Send {
        /// The dispatch service's gRPC endpoint.
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: dispatch::SendCommand,
    },
    /// A tenant's events, as a resumable stream.
    Events {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: dispatch::EventsCommand,
    },
    /// Sent messages and their statuses.
    Message {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: dispatch::MessageCommand,
    },
    /// Play the simulator's users: write to a number, block or unblock it.
    Sim {
        /// The simulator's HTTP address.
        #[arg(
            long,
            env = "FINESTRA_SIM_URL",
            default_value = "http://127.0.0.1:8090"
        )]
        url: String,
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Development helpers that play the provider.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand)]
enum PartnerCommand {
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum TenantCommand {
    Create {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// 250, 2000, 10000, 100000 (default 250).
        #[arg(long, default_value_t = 0)]
        tier: u32,
        /// The provider's business account id (its template webhooks name it).
        #[arg(long)]
        waba_id: Option<String>,
    },
    List {
        #[arg(long)]
        partner: String,
    },
    Suspend {
        #[arg(long)]
        id: String,
    },
    /// Shows a tenant's limits; with any of --rate/--burst/--weight, sets those (the partner or
    /// the operator; 0 goes back to the platform's default, an omitted flag keeps its value).
    Limits {
        #[arg(long)]
        id: String,
        /// SendMessage calls per second, sustained (1..100000).
        #[arg(long)]
        rate: Option<u32>,
        /// Calls that may come back to back above the rate (1..1000000).
        #[arg(long)]
        burst: Option<u32>,
        /// Share when tenants contend (1..100).
        #[arg(long)]
        weight: Option<u32>,
    },
}

#[derive(Subcommand)]
enum NumberCommand {
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        display: String,
        /// The app secret that signs this number's webhooks.
        #[arg(long, env = "FINESTRA_APP_SECRET", hide_env_values = true)]
        app_secret: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key for a partner (operator) or a tenant; the secret is printed once.
    Create {
        #[arg(long, conflicts_with = "tenant")]
        partner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Comma-separated: read, send, admin.
        #[arg(long, default_value = "read")]
        scopes: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    List {
        #[arg(long, conflicts_with = "tenant")]
        partner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key; every service refuses it within seconds.
    Revoke {
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Subcommand)]
enum TemplateCommand {
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        language: String,
        /// MARKETING, UTILITY or AUTHENTICATION.
        #[arg(long)]
        category: String,
        /// With positional parameters {{1}}..{{n}}.
        #[arg(long)]
        body: String,
        #[arg(long, default_value = "")]
        header: String,
        #[arg(long, default_value = "")]
        footer: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Operator: apply a provider review (APPROVED, REJECTED, PAUSED, UNPAUSED, DISABLED,
    /// RECATEGORISED).
    Review {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        event: String,
        #[arg(long, default_value = "")]
        new_category: String,
    },
}

#[derive(Subcommand)]
enum WindowCommand {
    /// The window of one (number, user) pair.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        /// wa_id (E.164 digits) or business-scoped user id.
        #[arg(long)]
        user: String,
    },
    /// Open windows of a number.
    ListOpen {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Post a signed Cloud API webhook with a user's text message, as the provider would.
    SendText {
        /// Ingest's webhook URL.
        #[arg(
            long,
            env = "FINESTRA_WEBHOOK_URL",
            default_value = "http://127.0.0.1:8080/webhooks/cloud-api"
        )]
        url: String,
        #[arg(long)]
        phone_number_id: String,
        /// The user's wa_id.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "Demo User")]
        name: String,
        #[arg(long)]
        text: String,
        /// How long ago the user sent it, in minutes (the provider timestamp).
        #[arg(long, default_value_t = 0)]
        minutes_ago: i64,
        /// The message id; a fresh one by default.
        #[arg(long)]
        wamid: Option<String>,
        /// Sign with this secret instead of the number's registered one.
        #[arg(long)]
        app_secret: Option<String>,
    },
}

fn database_url() -> String {
    env_string(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/finestra",
    )
}

async fn pool() -> anyhow::Result<finestra_registry::PgPool> {
    let url = database_url();
    finestra_registry::connect(&url)
        .await
        // Not the URL itself: it may carry a password.
        .context("connecting to the database (FINESTRA_DATABASE_URL)")
}

async fn channel(endpoint: &str, key: &str) -> anyhow::Result<AuthedChannel> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer::new(key)?,
    ))
}

async fn accounts(api: &Api) -> anyhow::Result<AccountsServiceClient<AuthedChannel>> {
    Ok(AccountsServiceClient::new(
        channel(&api.endpoint, &api.api_key).await?,
    ))
}

/// One line with the status's reason, e.g. `NOT_FOUND: no such tenant`.
/// Walks a listing page by page: `fetch` gets the page token ("" first) and answers the page's
/// items and the next token ("" after the last page); `each` sees every item.
async fn for_each_page<T, F, Fut>(mut fetch: F, mut each: impl FnMut(&T)) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await.map_err(rpc_error)?;
        items.iter().for_each(&mut each);
        if next.is_empty() {
            return Ok(());
        }
        token = next;
    }
}

fn rpc_error(s: tonic::Status) -> anyhow::Error {
    let reason =
        finestra_platform::status::reason_of(&s).unwrap_or_else(|| format!("{:?}", s.code()));
    anyhow::anyhow!("{reason}: {}", s.message())
}

fn parse_scopes(list: &str) -> anyhow::Result<Vec<i32>> {
    list.split(',')
        .map(|s| match s.trim() {
            "read" => Ok(v1::Scope::Read as i32),
            "send" => Ok(v1::Scope::Send as i32),
            "admin" => Ok(v1::Scope::Admin as i32),
            other => anyhow::bail!("unknown scope {other:?} (read, send, admin)"),
        })
        .collect()
}

fn status_name(s: i32) -> &'static str {
    match v1::Status::try_from(s) {
        Ok(v1::Status::Active) => "active",
        Ok(v1::Status::Suspended) => "suspended",
        _ => "?",
    }
}

fn scope_names(scopes: &[i32]) -> String {
    scopes
        .iter()
        .map(|s| match v1::Scope::try_from(*s) {
            Ok(v1::Scope::Read) => "read",
            Ok(v1::Scope::Send) => "send",
            Ok(v1::Scope::Admin) => "admin",
            _ => "?",
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn fmt_ts(ts: Option<&finestra_proto::prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

fn window_json(w: &Window) -> serde_json::Value {
    let ts = |t: Option<&finestra_proto::prost_types::Timestamp>| t.map(|t| t.seconds);
    serde_json::json!({
        "tenant_id": w.tenant_id, "phone_number_id": w.phone_number_id, "user": w.user,
        "open": w.open, "csw_until": ts(w.csw_until.as_ref()),
        "fep_open": w.fep_open, "fep_until": ts(w.fep_until.as_ref()), "fep_eligible": w.fep_eligible,
        "last_inbound_message_id": w.last_inbound_message_id,
        "marketing_opt_out": w.marketing_opt_out, "blocked": w.blocked,
    })
}

fn print_window(w: &Window) {
    let state = if w.open {
        format!("OPEN until {}", fmt_ts(w.csw_until.as_ref()))
    } else if w.csw_until.is_some() {
        format!("CLOSED since {}", fmt_ts(w.csw_until.as_ref()))
    } else {
        "CLOSED (the user never wrote)".to_owned()
    };
    println!(
        "window {} / {} / {}: {state}",
        w.tenant_id, w.phone_number_id, w.user
    );
    if !w.last_inbound_message_id.is_empty() {
        println!(
            "  last user message {} at {}",
            w.last_inbound_message_id,
            fmt_ts(w.last_inbound_at.as_ref())
        );
    }
    if w.fep_open {
        println!(
            "  free entry point open until {}",
            fmt_ts(w.fep_until.as_ref())
        );
    } else if w.fep_eligible {
        println!("  came from an ad: a reply now starts a 72 h free entry point");
    }
    if w.marketing_opt_out {
        println!("  the user stopped marketing messages");
    }
    if w.blocked {
        println!("  the user blocked this number");
    }
}

fn template_json(t: &v1::Template) -> serde_json::Value {
    serde_json::json!({
        "template_id": t.template_id, "tenant_id": t.tenant_id, "name": t.name, "language": t.language,
        "category": t.category, "status": t.status, "parameter_count": t.parameter_count, "pauses": t.pauses,
        "body": t.body,
    })
}

fn print_template(t: &v1::Template, json: bool) {
    if json {
        println!("{}", template_json(t));
    } else {
        println!(
            "{:<24} {:<20} {:<6} {:<15} {:<9} {} parameter(s)",
            t.template_id, t.name, t.language, t.category, t.status, t.parameter_count
        );
    }
}

#[tokio::main]
async fn main() {
    // One line, with the cause chain; no backtrace for an operator's typo.
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Migrate => {
            finestra_registry::migrate(&pool().await?).await?;
            println!("accounts migrations applied");
        }
        Command::Ops {
            command:
                OpsCommand::Retention {
                    keep_months,
                    ledger_keep_months,
                    dry_run,
                },
        } => {
            anyhow::ensure!(keep_months >= 1, "--keep-months must be at least 1");
            anyhow::ensure!(
                ledger_keep_months.is_none_or(|m| m >= 1),
                "--ledger-keep-months must be at least 1"
            );
            let policy = finestra_platform::retention::Policy {
                keep_months,
                ledger_keep_months,
                dry_run,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_micros() as i64;
            let report = finestra_platform::retention::run(&pool().await?, policy, now).await?;
            let verb = if dry_run { "would drop" } else { "dropped" };
            for d in &report {
                println!(
                    "{}: keeping {:04}-{:02} on; {verb} {} monthly partition(s){}{}",
                    d.table,
                    d.first_kept.year,
                    d.first_kept.month,
                    d.partitions.len(),
                    if d.partitions.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.partitions.join(", "))
                    },
                    if d.default_rows > 0 {
                        format!(
                            " and {} older row(s) of the default partition",
                            d.default_rows
                        )
                    } else {
                        String::new()
                    }
                );
            }
            if ledger_keep_months.is_none() {
                println!("billing.ledger: kept forever (--ledger-keep-months N to bound it)");
            }
        }
        Command::Topics { partitions } => {
            let brokers = env_string("KAFKA_BROKERS", "127.0.0.1:9092");
            let topics = finestra_platform::Topics::with_suffix(&env_string("TOPIC_SUFFIX", ""));
            finestra_platform::kafka::ensure_topics(&brokers, &topics.all(), partitions).await?;
            println!("topics ready: {}", topics.all().join(", "));
        }
        Command::Bootstrap { prefix, another } => {
            let pool = pool().await?;
            finestra_registry::migrate(&pool).await?;
            if !another && finestra_registry::keys::operator_key_exists(&pool).await? {
                anyhow::bail!(
                    "an operator key exists already; create further keys with it (or pass --another)"
                );
            }
            let (key, secret) = finestra_registry::keys::create(
                &pool,
                &Owner::Operator,
                &[Scope::Admin],
                "bootstrap",
                &prefix,
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key_id": key.key_id, "secret": secret})
                );
            } else {
                println!(
                    "operator key {} (shown once, store it now):\n{secret}",
                    key.key_id
                );
            }
        }
        Command::Partner { api, command } => {
            let mut c = accounts(&api).await?;
            match command {
                PartnerCommand::Create { id, name } => {
                    let p = c
                        .create_partner(v1::CreatePartnerRequest {
                            partner_id: id,
                            name,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"partner_id": p.partner_id, "name": p.name})
                        );
                    } else {
                        println!("partner {} ({}) created", p.partner_id, p.name);
                    }
                }
                PartnerCommand::List => {
                    let mut token = String::new();
                    loop {
                        let page = c
                            .list_partners(v1::ListPartnersRequest {
                                page_size: 100,
                                page_token: token,
                            })
                            .await
                            .map_err(rpc_error)?
                            .into_inner();
                        for p in &page.partners {
                            if json {
                                println!(
                                    "{}",
                                    serde_json::json!({"partner_id": p.partner_id, "name": p.name, "status": status_name(p.status)})
                                );
                            } else {
                                println!(
                                    "{:<32} {:<10} {}",
                                    p.partner_id,
                                    status_name(p.status),
                                    p.name
                                );
                            }
                        }
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                }
            }
        }
        Command::Tenant { api, command } => {
            let mut c = accounts(&api).await?;
            let print = |t: &v1::Tenant| {
                let limits = t.limits.unwrap_or_default();
                let or_default = |v: u32| {
                    if v == 0 {
                        "default".to_owned()
                    } else {
                        v.to_string()
                    }
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"tenant_id": t.tenant_id, "partner_id": t.partner_id, "name": t.name, "status": status_name(t.status), "tier": t.tier,
                            "limits": {"send_rate_per_second": limits.send_rate_per_second, "send_burst": limits.send_burst, "weight": limits.weight}})
                    );
                } else {
                    println!(
                        "{:<32} {:<20} {:<10} tier {:<7} rate {}/s burst {} weight {}  {}",
                        t.tenant_id,
                        t.partner_id,
                        status_name(t.status),
                        t.tier,
                        or_default(limits.send_rate_per_second),
                        or_default(limits.send_burst),
                        or_default(limits.weight),
                        t.name
                    );
                }
            };
            match command {
                TenantCommand::Create {
                    partner,
                    id,
                    name,
                    tier,
                    waba_id,
                } => {
                    let t = c
                        .create_tenant(v1::CreateTenantRequest {
                            partner_id: partner,
                            tenant_id: id,
                            name,
                            tier,
                            waba_id: waba_id.unwrap_or_default(),
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print(&t);
                }
                TenantCommand::List { partner } => {
                    for_each_page(
                        |page_token| {
                            let mut c = c.clone();
                            let request = v1::ListTenantsRequest {
                                partner_id: partner.clone(),
                                page_size: 100,
                                page_token,
                            };
                            async move {
                                let page = c.list_tenants(request).await?.into_inner();
                                Ok((page.tenants, page.next_page_token))
                            }
                        },
                        print,
                    )
                    .await?;
                }
                TenantCommand::Suspend { id } => {
                    let t = c
                        .set_tenant_status(v1::SetTenantStatusRequest {
                            tenant_id: id,
                            status: v1::Status::Suspended as i32,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print(&t);
                }
                TenantCommand::Limits {
                    id,
                    rate,
                    burst,
                    weight,
                } => {
                    let t = c
                        .get_tenant(v1::GetTenantRequest {
                            tenant_id: id.clone(),
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    let t = if rate.is_none() && burst.is_none() && weight.is_none() {
                        t
                    } else {
                        // An omitted flag keeps what is set.
                        let now = t.limits.unwrap_or_default();
                        c.set_tenant_limits(v1::SetTenantLimitsRequest {
                            tenant_id: id,
                            limits: Some(v1::TenantLimits {
                                send_rate_per_second: rate.unwrap_or(now.send_rate_per_second),
                                send_burst: burst.unwrap_or(now.send_burst),
                                weight: weight.unwrap_or(now.weight),
                            }),
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner()
                    };
                    print(&t);
                }
            }
        }
        Command::Number { api, command } => {
            let mut c = accounts(&api).await?;
            let print = |n: &v1::Number| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"phone_number_id": n.phone_number_id, "tenant_id": n.tenant_id, "display_phone_number": n.display_phone_number, "throughput_per_second": n.throughput_per_second})
                    );
                } else {
                    println!(
                        "{:<24} {:<20} {:<28} {} msg/s",
                        n.phone_number_id,
                        n.display_phone_number,
                        n.tenant_id,
                        n.throughput_per_second
                    );
                }
            };
            match command {
                NumberCommand::Add {
                    tenant,
                    phone_number_id,
                    display,
                    app_secret,
                } => {
                    let n = c
                        .add_number(v1::AddNumberRequest {
                            tenant_id: tenant,
                            phone_number_id,
                            display_phone_number: display,
                            app_secret,
                            throughput_per_second: 0,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print(&n);
                }
                NumberCommand::List { tenant } => {
                    for_each_page(
                        |page_token| {
                            let mut c = c.clone();
                            let request = v1::ListNumbersRequest {
                                tenant_id: tenant.clone(),
                                page_size: 1_000,
                                page_token,
                            };
                            async move {
                                let page = c.list_numbers(request).await?.into_inner();
                                Ok((page.numbers, page.next_page_token))
                            }
                        },
                        print,
                    )
                    .await?;
                }
            }
        }
        Command::Key { api, command } => {
            let mut c = accounts(&api).await?;
            let print = |k: &v1::ApiKey| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"key_id": k.key_id, "prefix": k.display_prefix, "partner_id": k.partner_id, "tenant_id": k.tenant_id, "scopes": scope_names(&k.scopes), "revoked": k.revoked_at.is_some()})
                    );
                } else {
                    let revoked = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<22} {:<14}… {:<16} {:<8} last used {}",
                        k.key_id,
                        k.display_prefix,
                        scope_names(&k.scopes),
                        revoked,
                        fmt_ts(k.last_used_at.as_ref())
                    );
                }
            };
            match command {
                KeyCommand::Create {
                    partner,
                    tenant,
                    scopes,
                    label,
                } => {
                    let created = c
                        .create_api_key(v1::CreateApiKeyRequest {
                            partner_id: partner.unwrap_or_default(),
                            tenant_id: tenant.unwrap_or_default(),
                            scopes: parse_scopes(&scopes)?,
                            label,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    let key = created.key.context("the service returned no key")?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"key_id": key.key_id, "secret": created.secret, "scopes": scope_names(&key.scopes)})
                        );
                    } else {
                        println!(
                            "key {} [{}] (shown once, store it now):\n{}",
                            key.key_id,
                            scope_names(&key.scopes),
                            created.secret
                        );
                    }
                }
                KeyCommand::List { partner, tenant } => {
                    for_each_page(
                        |page_token| {
                            let mut c = c.clone();
                            let request = v1::ListApiKeysRequest {
                                partner_id: partner.clone().unwrap_or_default(),
                                tenant_id: tenant.clone().unwrap_or_default(),
                                page_size: 1_000,
                                page_token,
                            };
                            async move {
                                let page = c.list_api_keys(request).await?.into_inner();
                                Ok((page.keys, page.next_page_token))
                            }
                        },
                        print,
                    )
                    .await?;
                }
                KeyCommand::Revoke { key_id } => {
                    let k = c
                        .revoke_api_key(v1::RevokeApiKeyRequest { key_id })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print(&k);
                }
            }
        }
        Command::Template { api, command } => {
            let mut c = accounts(&api).await?;
            match command {
                TemplateCommand::Create {
                    tenant,
                    name,
                    language,
                    category,
                    body,
                    header,
                    footer,
                } => {
                    let t = c
                        .create_template(v1::CreateTemplateRequest {
                            tenant_id: tenant,
                            name,
                            language,
                            category,
                            body,
                            header,
                            footer,
                            buttons_json: String::new(),
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_template(&t, json);
                }
                TemplateCommand::List { tenant } => {
                    for_each_page(
                        |page_token| {
                            let mut c = c.clone();
                            let request = v1::ListTemplatesRequest {
                                tenant_id: tenant.clone(),
                                page_size: 1_000,
                                page_token,
                            };
                            async move {
                                let page = c.list_templates(request).await?.into_inner();
                                Ok((page.templates, page.next_page_token))
                            }
                        },
                        |t| print_template(t, json),
                    )
                    .await?;
                }
                TemplateCommand::Show { tenant, id } => {
                    let t = c
                        .get_template(v1::GetTemplateRequest {
                            tenant_id: tenant,
                            template_id: id,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        println!("{}", template_json(&t));
                    } else {
                        print_template(&t, false);
                        println!("  {}", t.body);
                    }
                }
                TemplateCommand::Review {
                    tenant,
                    id,
                    event,
                    new_category,
                } => {
                    let t = c
                        .review_template(v1::ReviewTemplateRequest {
                            tenant_id: tenant,
                            template_id: id,
                            event,
                            new_category,
                            reviewed_at: None,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_template(&t, json);
                }
            }
        }
        Command::Sim { url, command } => sim::run(&url, command).await?,
        Command::Send {
            endpoint,
            api_key,
            command,
        } => dispatch::send(channel(&endpoint, &api_key).await?, command, json).await?,
        Command::Message {
            endpoint,
            api_key,
            command,
        } => dispatch::message(channel(&endpoint, &api_key).await?, command, json).await?,
        Command::Events {
            endpoint,
            api_key,
            command,
        } => dispatch::events(channel(&endpoint, &api_key).await?, command, json).await?,
        Command::Billing {
            endpoint,
            api_key,
            command,
        } => {
            billing::run(channel(&endpoint, &api_key).await?, command, json).await?;
        }
        Command::Window {
            endpoint,
            api_key,
            command,
        } => {
            let mut c = WindowServiceClient::new(channel(&endpoint, &api_key).await?);
            match command {
                WindowCommand::Get {
                    tenant,
                    phone_number_id,
                    user,
                } => {
                    let w = c
                        .get_window(GetWindowRequest {
                            tenant_id: tenant,
                            phone_number_id,
                            user,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        println!("{}", window_json(&w));
                    } else {
                        print_window(&w);
                    }
                }
                WindowCommand::ListOpen {
                    tenant,
                    phone_number_id,
                    page_size,
                } => {
                    let mut token = String::new();
                    loop {
                        let page = c
                            .list_open_windows(ListOpenWindowsRequest {
                                tenant_id: tenant.clone(),
                                phone_number_id: phone_number_id.clone(),
                                page_size,
                                page_token: token,
                            })
                            .await
                            .map_err(rpc_error)?
                            .into_inner();
                        for w in &page.windows {
                            if json {
                                println!("{}", window_json(w));
                            } else {
                                print_window(w);
                            }
                        }
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                }
            }
        }
        Command::Dev(DevCommand::SendText {
            url,
            phone_number_id,
            from,
            name,
            text,
            minutes_ago,
            wamid,
            app_secret,
        }) => {
            let secret = match app_secret {
                Some(s) => s,
                None => {
                    Registry::new(pool().await?)
                        .number(&phone_number_id)
                        .await?
                        .with_context(|| format!("no tenant has number {phone_number_id}"))?
                        .app_secret
                }
            };
            let now = chrono::Utc::now().timestamp();
            let wamid = wamid
                .unwrap_or_else(|| format!("wamid.dev.{}", chrono::Utc::now().timestamp_micros()));
            let msg = finestra_cloudapi::build::InboundText {
                wamid: &wamid,
                from: &from,
                profile_name: &name,
                timestamp: now - minutes_ago * 60,
                body: &text,
                referral: None,
            };
            let body = serde_json::to_vec(&finestra_cloudapi::build::text_messages(
                &phone_number_id,
                "",
                &[msg],
            ))?;
            let response = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    finestra_cloudapi::SIGNATURE_HEADER,
                    finestra_cloudapi::signature::sign(secret.as_bytes(), &body),
                )
                .body(body)
                .send()
                .await
                .with_context(|| format!("posting to {url}"))?;
            let status = response.status();
            anyhow::ensure!(status.is_success(), "ingest answered {status}");
            println!("webhook {wamid} from {from} ({minutes_ago} min ago) accepted: {status}");
        }
    }
    Ok(())
}
