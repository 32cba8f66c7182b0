//! `finestra`: register tenants and numbers, inspect windows, and (for development) post signed
//! webhooks the way the provider does.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use finestra_platform::auth::{AuthedChannel, Bearer, Owner, Scope};
use finestra_platform::config::env_string;
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::{GetWindowRequest, ListOpenWindowsRequest, Window};
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

#[derive(Subcommand)]
enum Command {
    /// Apply the tenant registry's database migrations.
    Migrate,
    /// Create the event topics (existing ones are left alone).
    Topics {
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Create the first operator key (printed once). Refused when one exists.
    Bootstrap {
        /// `fin_live_` in production, `fin_test_` elsewhere.
        #[arg(long, default_value = "fin_live_")]
        prefix: String,
    },
    /// Partners (BSPs).
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// Tenants (businesses).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Business phone numbers.
    #[command(subcommand)]
    Number(NumberCommand),
    /// Customer-service windows.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Development helpers that play the provider.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand)]
enum PartnerCommand {
    /// Create a partner (or rename an existing one).
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key for a partner or a tenant; the secret is printed once.
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
        #[arg(long, default_value = "fin_live_")]
        prefix: String,
    },
    /// Revoke a key; every service refuses it within 5 seconds.
    Revoke {
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (or rename an existing one).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// The partner (BSP) that owns the tenant.
        #[arg(long, default_value = "default")]
        partner: String,
    },
    List,
}

#[derive(Subcommand)]
enum NumberCommand {
    /// Give a tenant a number (or update its display number and secret).
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        display: String,
        /// The app secret that signs this number's webhooks.
        #[arg(long, env = "FINESTRA_APP_SECRET")]
        app_secret: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Args)]
struct WindowTarget {
    /// The window service's gRPC endpoint.
    #[arg(
        long,
        env = "FINESTRA_WINDOW_ENDPOINT",
        default_value = "http://127.0.0.1:50052"
    )]
    endpoint: String,
    /// A key with the read scope for the tenant.
    #[arg(long, env = "FINESTRA_API_KEY", hide_env_values = true)]
    api_key: String,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    phone_number_id: String,
}

#[derive(Subcommand)]
enum WindowCommand {
    /// The window of one (number, user) pair.
    Get {
        #[command(flatten)]
        target: WindowTarget,
        /// wa_id (E.164 digits) or business-scoped user id.
        #[arg(long)]
        user: String,
    },
    /// Open windows of a number.
    ListOpen {
        #[command(flatten)]
        target: WindowTarget,
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

async fn registry() -> anyhow::Result<Registry> {
    let url = env_string(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/finestra",
    );
    let pool = sqlx_pool(&url).await?;
    Ok(Registry::new(pool))
}

async fn sqlx_pool(url: &str) -> anyhow::Result<finestra_registry::PgPool> {
    finestra_registry::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
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

async fn window_client(
    endpoint: &str,
    key: &str,
) -> anyhow::Result<WindowServiceClient<AuthedChannel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to the window service at {endpoint}"))?;
    Ok(WindowServiceClient::with_interceptor(
        channel,
        Bearer::new(key)?,
    ))
}

fn parse_scopes(list: &str) -> anyhow::Result<Vec<Scope>> {
    list.split(',')
        .map(|s| {
            Scope::parse(s.trim())
                .with_context(|| format!("unknown scope {s:?} (read, send, admin)"))
        })
        .collect()
}

/// One line with the status's reason, e.g. `INVALID_ARGUMENT: user is required`.
fn rpc_error(s: tonic::Status) -> anyhow::Error {
    let reason =
        finestra_platform::status::reason_of(&s).unwrap_or_else(|| format!("{:?}", s.code()));
    anyhow::anyhow!("{reason}: {}", s.message())
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
    match cli.command {
        Command::Migrate => {
            let url = env_string(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/finestra",
            );
            let pool = sqlx_pool(&url).await?;
            finestra_registry::migrate(&pool).await?;
            println!("registry migrations applied");
        }
        Command::Topics { partitions } => {
            let brokers = env_string("KAFKA_BROKERS", "127.0.0.1:9092");
            let topics = finestra_platform::Topics::with_suffix(&env_string("TOPIC_SUFFIX", ""));
            finestra_platform::kafka::ensure_topics(&brokers, &topics.all(), partitions).await?;
            println!("topics ready: {}", topics.all().join(", "));
        }
        Command::Bootstrap { prefix } => {
            let url = env_string(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/finestra",
            );
            let pool = sqlx_pool(&url).await?;
            finestra_registry::migrate(&pool).await?;
            if finestra_registry::keys::operator_key_exists(&pool).await? {
                anyhow::bail!("an operator key exists already; create further keys with it");
            }
            let (key, secret) = finestra_registry::keys::create(
                &pool,
                &Owner::Operator,
                &[Scope::Admin],
                "bootstrap",
                &prefix,
            )
            .await?;
            if cli.json {
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
        Command::Partner(PartnerCommand::Create { id, name }) => {
            registry().await?.put_partner(&id, &name).await?;
            println!("partner {id} ({name})");
        }
        Command::Key(KeyCommand::Create {
            partner,
            tenant,
            scopes,
            label,
            prefix,
        }) => {
            let registry = registry().await?;
            let owner = match (partner, tenant) {
                (Some(partner_id), None) => Owner::Partner { partner_id },
                (None, Some(tenant_id)) => {
                    let t = registry
                        .tenant(&tenant_id)
                        .await?
                        .with_context(|| format!("no tenant {tenant_id}"))?;
                    Owner::Tenant {
                        partner_id: t.partner_id,
                        tenant_id,
                    }
                }
                _ => anyhow::bail!("name the key's owner: --partner or --tenant"),
            };
            let (key, secret) = finestra_registry::keys::create(
                registry.pool(),
                &owner,
                &parse_scopes(&scopes)?,
                &label,
                &prefix,
            )
            .await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"key_id": key.key_id, "secret": secret, "scopes": key.scopes})
                );
            } else {
                println!(
                    "key {} [{}] (shown once):\n{secret}",
                    key.key_id,
                    key.scopes.join(",")
                );
            }
        }
        Command::Key(KeyCommand::Revoke { key_id }) => {
            let registry = registry().await?;
            let key = finestra_registry::keys::revoke(registry.pool(), &key_id)
                .await?
                .with_context(|| format!("no key {key_id}"))?;
            println!("key {} revoked", key.key_id);
        }
        Command::Tenant(TenantCommand::Add { id, name, partner }) => {
            let t = registry().await?.put_tenant(&partner, &id, &name).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"tenant_id": t.tenant_id, "name": t.name, "status": t.status})
                );
            } else {
                println!("tenant {} ({}) is {}", t.tenant_id, t.name, t.status);
            }
        }
        Command::Tenant(TenantCommand::List) => {
            for t in registry().await?.tenants().await? {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"tenant_id": t.tenant_id, "name": t.name, "status": t.status})
                    );
                } else {
                    println!("{:<32} {:<10} {}", t.tenant_id, t.status, t.name);
                }
            }
        }
        Command::Number(NumberCommand::Add {
            tenant,
            phone_number_id,
            display,
            app_secret,
        }) => {
            let n = registry()
                .await?
                .put_number(&tenant, &phone_number_id, &display, &app_secret)
                .await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"phone_number_id": n.phone_number_id, "tenant_id": n.tenant_id, "display_phone_number": n.display_phone_number})
                );
            } else {
                println!(
                    "number {} ({}) belongs to {}",
                    n.phone_number_id, n.display_phone_number, n.tenant_id
                );
            }
        }
        Command::Number(NumberCommand::List { tenant }) => {
            for n in registry().await?.numbers(&tenant).await? {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"phone_number_id": n.phone_number_id, "display_phone_number": n.display_phone_number, "status": n.status})
                    );
                } else {
                    println!(
                        "{:<24} {:<20} {}",
                        n.phone_number_id, n.display_phone_number, n.status
                    );
                }
            }
        }
        Command::Window(WindowCommand::Get { target, user }) => {
            let mut client = window_client(&target.endpoint, &target.api_key).await?;
            let w = client
                .get_window(GetWindowRequest {
                    tenant_id: target.tenant,
                    phone_number_id: target.phone_number_id,
                    user,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if cli.json {
                println!("{}", window_json(&w));
            } else {
                print_window(&w);
            }
        }
        Command::Window(WindowCommand::ListOpen { target, page_size }) => {
            let mut client = window_client(&target.endpoint, &target.api_key).await?;
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_open_windows(ListOpenWindowsRequest {
                        tenant_id: target.tenant.clone(),
                        phone_number_id: target.phone_number_id.clone(),
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for w in &page.windows {
                    if cli.json {
                        println!("{}", window_json(w));
                    } else {
                        print_window(w);
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
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
                    registry()
                        .await?
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
