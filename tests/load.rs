//! The load and the verdict shared by `make chaos` and the graceful-shutdown test: tenants
//! with funds and an approved template, users with open windows, an open-loop SendMessage
//! generator that retries a refused call with the same idempotency key until it is accepted,
//! and the checks afterwards (every accepted message DELIVERED or FAILED exactly once, one
//! charge per delivered paid message, windows as before).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_proto::v1;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_testkit::{Scope, infra};
use tokio::sync::Mutex;

use crate::cluster::Cluster;

pub struct Tenant {
    pub id: String,
    pub number: String,
    pub send_key: String,
    pub read_key: String,
    /// Users who wrote before the faults: their windows are open.
    pub window_users: Vec<String>,
}

/// What the load saw.
#[derive(Default)]
pub struct Load {
    pub issued: AtomicU64,
    pub accepted: AtomicU64,
    /// Calls that failed and were retried with the same idempotency key.
    pub retried_calls: AtomicU64,
    pub gave_up: AtomicU64,
    /// idempotency key → message id, for every send the platform accepted.
    pub accepted_ids: Mutex<BTreeMap<String, String>>,
    pub errors_by_code: Mutex<BTreeMap<String, u64>>,
}

/// A dispatch client of a tenant's key that reconnects by itself.
pub async fn client(url: &str, key: &str) -> anyhow::Result<DispatchServiceClient<AuthedChannel>> {
    // A lazy channel reconnects by itself after the server restarts.
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(DispatchServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            channel,
            finestra_platform::auth::Bearer::new(key)?,
        ),
    ))
}

/// The `n`th send of tenant `t_index`: a free reply now and then, else a charged template to a
/// new user (`n` below 10⁹ keeps the user a valid number).
pub fn request(t: &Tenant, t_index: usize, n: u64) -> v1::SendMessageRequest {
    // One send in 200 is a free reply inside an open window (a user is paced at one message
    // per 6 s, so replies stay well under it); the rest are charged templates to users with no
    // window.
    let (to, content) = if n.is_multiple_of(200) && !t.window_users.is_empty() {
        let user = &t.window_users[(n as usize / 200) % t.window_users.len()];
        (
            user.clone(),
            Content::Text(v1::TextContent {
                body: format!("Reply {n}"),
                preview_url: false,
            }),
        )
    } else {
        (
            format!("39{t_index:02}{n:09}"),
            Content::Template(v1::TemplateContent {
                name: "chaos_util".into(),
                language: "it".into(),
                parameters: vec![format!("A-{n}")],
            }),
        )
    };
    v1::SendMessageRequest {
        tenant_id: t.id.clone(),
        phone_number_id: t.number.clone(),
        to,
        idempotency_key: format!("chaos-{n}"),
        send_at: None,
        send_at_local: String::new(),
        content: Some(content),
    }
}

/// Sends one message until the platform accepts it (retrying with the same key) or 120 s pass.
async fn send_until_accepted(
    load: Arc<Load>,
    mut client: DispatchServiceClient<AuthedChannel>,
    req: v1::SendMessageRequest,
) {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        match client.send_message(req.clone()).await {
            Ok(answer) => {
                load.accepted.fetch_add(1, Ordering::Relaxed);
                load.accepted_ids
                    .lock()
                    .await
                    .insert(req.idempotency_key.clone(), answer.into_inner().message_id);
                return;
            }
            Err(status) => {
                load.retried_calls.fetch_add(1, Ordering::Relaxed);
                *load
                    .errors_by_code
                    .lock()
                    .await
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                if started.elapsed() > Duration::from_secs(120) {
                    load.gave_up.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A well-behaved client backs off exponentially with full jitter: thousands of
                // waiting senders retrying in lockstep would only feed a congestion collapse.
                attempt = (attempt + 1).min(5);
                let cap_ms = 250u64 << attempt;
                let unit: f64 = rand::Rng::random(&mut rand::rng());
                tokio::time::sleep(Duration::from_millis((cap_ms as f64 * unit) as u64 + 50)).await;
            }
        }
    }
}

/// A tenant with one number that only the network paces (no tier, 1,000 messages/s), an
/// approved UTILITY template `template` (one parameter) and `funds` micro-euros; returns
/// (tenant id, number id). The network learns of the number and the template when the
/// scope's numbers are registered with it (`Network::register_all`). The chaos run, the shutdown test and bench-send start from it.
pub async fn sending_tenant(
    scope: &Scope,
    name: &str,
    n: u32,
    template: &str,
    funds: i64,
) -> anyhow::Result<(String, String)> {
    let infra = infra().await?;
    let (tenant, number, _) = scope.tenant_with_number(name, n).await?;
    sqlx::query(
        "UPDATE accounts.numbers SET throughput_per_second = 1000 WHERE phone_number_id = $1",
    )
    .bind(&number)
    .execute(&infra.pool)
    .await?;
    sqlx::query("UPDATE accounts.tenants SET tier = NULL WHERE tenant_id = $1")
        .bind(&tenant)
        .execute(&infra.pool)
        .await?;
    sqlx::query(
        "INSERT INTO accounts.templates (template_id, tenant_id, name, language, category, body, parameter_count, status)
         VALUES ($1, $2, $3, 'it', 'UTILITY', 'Order {{1}} ready', 1, 'APPROVED')",
    )
    .bind(format!("tpl-{tenant}"))
    .bind(&tenant)
    .bind(template)
    .execute(&infra.pool)
    .await?;
    scope.note_template(finestra_testkit::NetworkTemplate {
        waba_id: scope.waba_id(name),
        name: template.into(),
        category: "UTILITY".into(),
        body: "Order {{1}} ready".into(),
        event: "APPROVED".into(),
    });
    finestra_billing::pg::top_up(
        &infra.pool,
        &tenant,
        "load-funds",
        funds,
        "EUR",
        "load",
        finestra_domain::Timestamp::from_micros(0),
    )
    .await?;
    Ok((tenant, number))
}

pub async fn setup_tenants(scope: &Scope, count: usize) -> anyhow::Result<Vec<Tenant>> {
    let mut tenants = Vec::new();
    for t in 0..count {
        let name = format!("chaos{t}");
        let (tenant, number) =
            sending_tenant(scope, &name, t as u32, "chaos_util", 1_000_000_000_000).await?;
        tenants.push(Tenant {
            id: tenant,
            number,
            send_key: scope.tenant_key(&name, &[KeyScope::Send]).await?,
            read_key: scope.tenant_key(&name, &[KeyScope::Read]).await?,
            window_users: (0..10).map(|u| format!("3933{t:02}{u:06}")).collect(),
        });
    }
    Ok(tenants)
}

/// The users write through the simulated network; returns each window as the service
/// answers it once every one is open.
pub async fn open_windows(
    cluster: &Cluster,
    tenants: &[Tenant],
) -> anyhow::Result<BTreeMap<(String, String), v1::Window>> {
    let http = reqwest::Client::new();
    let network = cluster.network_url()?;
    for t in tenants {
        for user in &t.window_users {
            let answer = http
                .post(format!("{network}/sim/v1/say"))
                .json(&serde_json::json!({
                    "phone_number_id": t.number, "from": user, "name": "Chaos user",
                    "text": "Hello, I need help with my order",
                }))
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "say: {}",
                answer.text().await?
            );
        }
    }
    let mut windows = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in tenants {
        let mut client = window_client(cluster, &t.read_key).await?;
        for user in &t.window_users {
            loop {
                let w = client
                    .get_window(v1::GetWindowRequest {
                        tenant_id: t.id.clone(),
                        phone_number_id: t.number.clone(),
                        user: user.clone(),
                    })
                    .await;
                if let Ok(w) = w
                    && w.get_ref().open
                {
                    windows.insert((t.id.clone(), user.clone()), w.into_inner());
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "window of {user} did not open");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(windows)
}

pub async fn window_client(
    cluster: &Cluster,
    key: &str,
) -> anyhow::Result<WindowServiceClient<AuthedChannel>> {
    let channel =
        tonic::transport::Channel::from_shared(cluster.grpc_url("window")?)?.connect_lazy();
    Ok(WindowServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            channel,
            finestra_platform::auth::Bearer::new(key)?,
        ),
    ))
}

/// The open-loop generator: `rate` sends a second over the tenants until stopped.
pub struct Generator {
    pub load: Arc<Load>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    progress: tokio::task::JoinHandle<()>,
}

impl Generator {
    /// Starts sending to dispatch at `dispatch_url`; prints a progress line every second,
    /// prefixed with `label`.
    pub async fn start(
        dispatch_url: &str,
        tenants: Arc<Vec<Tenant>>,
        rate: u64,
        label: &'static str,
    ) -> anyhow::Result<Self> {
        Self::start_at(dispatch_url, tenants, rate, label, 0).await
    }

    /// As [`Generator::start`], numbering its sends from `first` (so that a second generator
    /// of the same tenants sends new messages, not retries of the first one's).
    pub async fn start_at(
        dispatch_url: &str,
        tenants: Arc<Vec<Tenant>>,
        rate: u64,
        label: &'static str,
        first: u64,
    ) -> anyhow::Result<Self> {
        let load = Arc::new(Load::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for t in tenants.iter() {
            clients.push(client(dispatch_url, &t.send_key).await?);
        }
        let task = {
            let (load, stop) = (load.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sends = tokio::task::JoinSet::new();
                let began = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut n = first;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let due = first + (began.elapsed().as_secs_f64() * rate as f64) as u64;
                    while n < due {
                        let t_index = (n as usize) % tenants.len();
                        let req = request(&tenants[t_index], t_index, n);
                        sends.spawn(send_until_accepted(
                            load.clone(),
                            clients[t_index].clone(),
                            req,
                        ));
                        load.issued.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    while sends.try_join_next().is_some() {}
                }
                while sends.join_next().await.is_some() {}
            })
        };
        let progress = {
            let (load, stop) = (load.clone(), stop.clone());
            let began = Instant::now();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let issued = load.issued.load(Ordering::Relaxed);
                    let accepted = load.accepted.load(Ordering::Relaxed);
                    eprint!(
                        "\r[{label}] {:>6.1} s  issued {issued}, accepted {accepted}, waiting {}, retried calls {}   ",
                        began.elapsed().as_secs_f64(),
                        issued.saturating_sub(accepted),
                        load.retried_calls.load(Ordering::Relaxed)
                    );
                }
                eprintln!();
            })
        };
        Ok(Self {
            load,
            stop,
            task,
            progress,
        })
    }

    /// Stops issuing new sends and waits for the ones still retrying; returns what the load saw.
    pub async fn stop(self) -> anyhow::Result<Arc<Load>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        self.progress.await?;
        Ok(self.load)
    }
}

/// What the run left behind, checked.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub accepted: usize,
    pub delivered: i64,
    pub failed: i64,
    /// Accepted but not DELIVERED/READ/FAILED after the settle time (must be 0).
    pub lost: i64,
    /// More than one message for one idempotency key (must be 0).
    pub duplicate_messages: i64,
    pub charges: i64,
    pub paid_delivered: i64,
    /// Charges beyond one per message (must be 0).
    pub double_charges: i64,
    /// Failed messages that were charged (must be 0).
    pub failed_charged: i64,
    /// Delivered paid messages without a charge after the settle time (must be 0).
    pub uncharged: i64,
    pub windows_checked: usize,
    pub windows_differing: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicate_messages == 0
            && self.double_charges == 0
            && self.failed_charged == 0
            && self.uncharged == 0
            && self.charges == self.paid_delivered
            && self.windows_differing == 0
    }
}

/// Waits (up to `within`) until every accepted message is terminal and every delivered paid
/// one is charged, then checks the books and the windows.
pub async fn settle_and_check(
    cluster: &Cluster,
    tenants: &[Tenant],
    accepted_ids: &BTreeMap<String, String>,
    windows_before: &BTreeMap<(String, String), v1::Window>,
    within: Duration,
    label: &str,
) -> anyhow::Result<Verdict> {
    let pool = &infra().await?.pool;
    let tenant_ids: Vec<String> = tenants.iter().map(|t| t.id.clone()).collect();
    let ids: Vec<String> = accepted_ids.values().cloned().collect();
    let settle_started = Instant::now();
    let mut terminal = 0i64;
    while settle_started.elapsed() < within {
        let statuses: Vec<(String, String)> = sqlx::query_as(
            "SELECT message_id, status FROM dispatch.messages WHERE tenant_id = ANY($1)",
        )
        .bind(&tenant_ids)
        .fetch_all(pool)
        .await?;
        let terminal_ids: std::collections::HashSet<String> = statuses
            .into_iter()
            .filter(|(_, s)| matches!(s.as_str(), "DELIVERED" | "READ" | "FAILED"))
            .map(|(id, _)| id)
            .collect();
        terminal = ids.iter().filter(|id| terminal_ids.contains(*id)).count() as i64;
        eprint!(
            "\r[{label}] settled {terminal} of {} accepted     ",
            ids.len()
        );
        if terminal as usize == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!();
    // Captures trail deliveries by a moment.
    let mut uncharged = i64::MAX;
    while settle_started.elapsed() < within + Duration::from_secs(60) {
        uncharged = sqlx::query_scalar(
            "SELECT count(*) FROM dispatch.messages m
              WHERE m.tenant_id = ANY($1) AND m.status IN ('DELIVERED', 'READ') AND NOT m.free
                AND NOT EXISTS (SELECT 1 FROM billing.ledger l
                                 WHERE l.tenant_id = m.tenant_id AND l.reference = m.message_id
                                   AND l.kind = 'charge')",
        )
        .bind(&tenant_ids)
        .fetch_one(pool)
        .await?;
        if uncharged == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (delivered, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('DELIVERED', 'READ')),
                count(*) FILTER (WHERE status = 'FAILED')
           FROM dispatch.messages WHERE tenant_id = ANY($1)",
    )
    .bind(&tenant_ids)
    .fetch_one(pool)
    .await?;
    let duplicate_messages: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT tenant_id, idempotency_key FROM dispatch.messages
                                WHERE tenant_id = ANY($1) GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .bind(&tenant_ids)
    .fetch_one(pool)
    .await?;
    let (charges, double_charges, failed_charged): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) - count(DISTINCT reference),
                count(*) FILTER (WHERE EXISTS (SELECT 1 FROM dispatch.messages m
                                                WHERE m.tenant_id = l.tenant_id
                                                  AND m.message_id = l.reference
                                                  AND m.status = 'FAILED'))
           FROM billing.ledger l WHERE l.tenant_id = ANY($1) AND l.kind = 'charge' AND l.amount < 0",
    )
    .bind(&tenant_ids)
    .fetch_one(pool)
    .await?;
    let paid_delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.messages
          WHERE tenant_id = ANY($1) AND status IN ('DELIVERED', 'READ') AND NOT free",
    )
    .bind(&tenant_ids)
    .fetch_one(pool)
    .await?;
    let mut windows_differing = 0;
    for t in tenants {
        let mut client = window_client(cluster, &t.read_key).await?;
        for user in &t.window_users {
            let now = client
                .get_window(v1::GetWindowRequest {
                    tenant_id: t.id.clone(),
                    phone_number_id: t.number.clone(),
                    user: user.clone(),
                })
                .await?
                .into_inner();
            let Some(before) = windows_before.get(&(t.id.clone(), user.clone())) else {
                continue;
            };
            if now.open != before.open
                || now.csw_until != before.csw_until
                || now.blocked != before.blocked
            {
                windows_differing += 1;
                eprintln!("[{label}] window of {user}: before {before:?}, after {now:?}");
            }
        }
    }
    Ok(Verdict {
        accepted: ids.len(),
        delivered,
        failed,
        lost: ids.len() as i64 - terminal,
        duplicate_messages,
        charges,
        paid_delivered,
        double_charges,
        failed_charged,
        uncharged,
        windows_checked: windows_before.len(),
        windows_differing,
    })
}

/// The whole chain in this process, tuned for the benchmarks: every service against the
/// machine's Postgres, Redis and broker, the simulator as the network.
pub struct InProcessChain {
    pub ingest: finestra_testkit::Started,
    pub window: finestra_testkit::Started,
    pub billing: finestra_testkit::Started,
    pub sim: finestra_testkit::StartedSim,
    pub dispatch: finestra_testkit::Started,
}

impl InProcessChain {
    /// Starts it; `tune` adjusts dispatch's configuration last.
    pub async fn start(
        scope: &Scope,
        tune: impl FnOnce(&mut finestra_dispatch::DispatchConfig),
    ) -> anyhow::Result<Self> {
        let ingest = finestra_testkit::start_ingest(scope).await?;
        let window = finestra_testkit::start_window(scope, "window", 2_000).await?;
        let mut billing_config = finestra_testkit::billing_config(scope, "billing")?;
        billing_config.common.db_max_connections = 16;
        billing_config.max_batch = 5_000;
        let billing =
            finestra_testkit::start_billing_with(billing_config, finestra_testkit::system_clock())
                .await?;
        let token = "bench-token";
        let sim = finestra_testkit::start_simulator(scope, &ingest.running, token, 1_000).await?;
        let mut config = finestra_testkit::dispatch_config(
            scope,
            &billing.running.grpc_url(),
            &sim.base_url(),
            token,
        )
        .await?;
        config.common.db_max_connections = 24;
        config.accept_batch = 500;
        config.accept_parallel = std::env::var("BENCH_ACCEPT_PARALLEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        config.billing_connections = 4;
        config.max_in_flight = 100_000;
        config.send_concurrency = 512;
        config.max_batch = 2_000;
        config.facts_ttl = Duration::from_secs(5);
        tune(&mut config);
        let dispatch = finestra_testkit::start_dispatch_with(config).await?;
        Ok(Self {
            ingest,
            window,
            billing,
            sim,
            dispatch,
        })
    }

    pub async fn stop(self) {
        self.dispatch.stop().await;
        self.sim.stop().await;
        self.billing.stop().await;
        self.window.stop().await;
        self.ingest.stop().await;
    }
}

/// Reconcile differences of `tenants` (Postgres against itself and the hot wallets), summed:
/// every benchmark ends with the books of the tenants it touched.
pub async fn reconcile_differences(tenants: &[String]) -> anyhow::Result<usize> {
    let infra = infra().await?;
    let hot = finestra_billing::hot::HotWallets::new(
        infra.redis.clone(),
        "fin",
        Duration::from_secs(600),
    );
    let mut differences = 0;
    for t in tenants {
        differences += finestra_billing::reconcile::run(&infra.pool, &hot, Some(t))
            .await?
            .differences
            .len();
    }
    Ok(differences)
}

/// Waits until every message of `tenants` has settled (delivered, read or failed), printing
/// how many are still open after `label`; fails after ten minutes.
pub async fn settle(pool: &sqlx::PgPool, tenants: &[String], label: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dispatch.messages
              WHERE tenant_id = ANY($1) AND status NOT IN ('DELIVERED', 'READ', 'FAILED')",
        )
        .bind(tenants)
        .fetch_one(pool)
        .await?;
        eprint!("\r[{label}]   settling: {open:>7} open   ");
        if open == 0 {
            eprintln!();
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not every message settled within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
