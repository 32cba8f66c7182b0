//! `finestra`: the operator and admin CLI. Control-plane commands talk to the accounts service
//! over gRPC with an API key (`FINESTRA_ENDPOINT`, `FINESTRA_API_KEY`); `bootstrap`, `migrate`,
//! `topics` and `dev` work on the stores directly, for whoever runs the installation.

mod accounts;
mod billing;
mod campaigns;
mod contacts;
mod dispatch;
mod sim;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use finestra_platform::auth::{AuthedChannel, Bearer, Owner, Scope};
use finestra_platform::config::SharedSettings;
use finestra_proto::v1::accounts_service_client::AccountsServiceClient;
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::{self, GetWindowRequest, ListOpenWindowsRequest, Window};
use finestra_registry::Registry;

use crate::accounts::{KeyCommand, NumberCommand, PartnerCommand, TemplateCommand, TenantCommand};

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
    /// Media: upload a file to send by id, save a file a user sent.
    Media {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: dispatch::MediaCommand,
    },
    /// A tenant's contacts: import a CSV, list, show, block.
    Contacts {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: contacts::ContactsCommand,
    },
    /// A tenant's segments (saved filters over its contacts): create, list.
    Segment {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: contacts::SegmentCommand,
    },
    /// A tenant's template campaigns: create, quote, launch, pause, resume, cancel, watch,
    /// report.
    Campaign {
        #[arg(
            long,
            env = "FINESTRA_DISPATCH_ENDPOINT",
            default_value = "http://127.0.0.1:7054"
        )]
        endpoint: String,
        #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: campaigns::CampaignCommand,
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

async fn pool() -> anyhow::Result<finestra_registry::PgPool> {
    let url = SharedSettings::from_env()?.database_url;
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

/// A channel without a per-call deadline (a long upload).
async fn streaming_channel(endpoint: &str, key: &str) -> anyhow::Result<AuthedChannel> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(5))
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
            let shared = SharedSettings::from_env()?;
            let topics = finestra_platform::Topics::with_suffix(&shared.topic_suffix);
            finestra_platform::kafka::ensure_topics(
                &shared.kafka_brokers,
                &topics.all(),
                partitions,
            )
            .await?;
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
        Command::Partner { api, command } => accounts::partner(&api, command, json).await?,
        Command::Tenant { api, command } => accounts::tenant(&api, command, json).await?,
        Command::Number { api, command } => accounts::number(&api, command, json).await?,
        Command::Key { api, command } => accounts::key(&api, command, json).await?,
        Command::Template { api, command } => accounts::template(&api, command, json).await?,
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
        Command::Media {
            endpoint,
            api_key,
            command,
        } => dispatch::media(channel(&endpoint, &api_key).await?, command, json).await?,
        Command::Contacts {
            endpoint,
            api_key,
            command,
        } => {
            // An import streams as long as the file takes: no per-call deadline.
            let channel = streaming_channel(&endpoint, &api_key).await?;
            contacts::contacts(channel, command, json).await?
        }
        Command::Segment {
            endpoint,
            api_key,
            command,
        } => contacts::segment(channel(&endpoint, &api_key).await?, command, json).await?,
        Command::Campaign {
            endpoint,
            api_key,
            command,
        } => {
            // A watch follows the campaign as long as it runs: no per-call deadline.
            let channel = streaming_channel(&endpoint, &api_key).await?;
            campaigns::campaign(channel, command, json).await?
        }
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
