//! Finestra as separate processes: every service binary started with its `FINESTRA_*`
//! environment, on ports fixed for the cluster's life (so a restarted service is found where
//! its peers expect it), killed with SIGKILL or stopped with SIGTERM one at a time. The chaos
//! run and the graceful-shutdown test drive it; a test's [`Scope`] keeps its topics, groups
//! and tenants apart from everything else on the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use finestra_testkit::Scope;

/// The services of the platform, in start order (each one's peers come before it).
pub const SERVICES: [&str; 6] = [
    "accounts",
    "ingest",
    "window",
    "billing",
    "simulator",
    "dispatch",
];

/// The addresses of one service.
#[derive(Clone, Debug)]
pub struct Ports {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// Ingest's webhooks, the simulator's network API.
    pub http: Option<SocketAddr>,
}

/// What the cluster runs against and how.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub scope: Scope,
    pub brokers: String,
    /// Where the service binaries are (`target/debug` or `target/release`).
    pub bin_dir: PathBuf,
    /// Each service's log goes to `<log_dir>/<service>.log` (appended across restarts).
    pub log_dir: PathBuf,
    /// An operator key: dispatch reserves with it, the simulator reports blocks with it.
    pub operator_key: String,
    pub provider_token: String,
    /// Seconds a service may take to drain after SIGTERM.
    pub grace_secs: u64,
}

pub struct Cluster {
    spec: ClusterSpec,
    ports: BTreeMap<&'static str, Ports>,
    taken: BTreeSet<u16>,
    children: BTreeMap<&'static str, Child>,
    http: reqwest::Client,
}

/// A free port below Linux's ephemeral range (32768–60999), chosen at random and checked by
/// binding it. Everything else on the machine (tests' in-process services on port 0, client
/// sockets) takes ephemeral ports, so between this check and the service binding it nobody
/// else grabs it — which a port-0 pick could not promise. A port in `taken` (handed out to
/// this cluster already) is never picked twice.
fn free_addr(taken: &mut BTreeSet<u16>) -> anyhow::Result<SocketAddr> {
    use rand::Rng as _;
    for _ in 0..1_000 {
        let port: u16 = rand::rng().random_range(20_000..32_000);
        if taken.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            taken.insert(port);
            return Ok(listener.local_addr()?);
        }
    }
    anyhow::bail!("no free port in 20000..32000")
}

/// A service's ports (and the ingest's and simulator's HTTP port).
fn pick_ports(service: &str, taken: &mut BTreeSet<u16>) -> anyhow::Result<Ports> {
    let http = matches!(service, "ingest" | "simulator" | "gateway")
        .then(|| free_addr(taken))
        .transpose()?;
    Ok(Ports {
        grpc: free_addr(taken)?,
        metrics: free_addr(taken)?,
        http,
    })
}

impl Cluster {
    /// Picks every service's ports; starts nothing.
    pub fn new(spec: ClusterSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let mut ports = BTreeMap::new();
        let mut taken = BTreeSet::new();
        for name in SERVICES {
            ports.insert(name, pick_ports(name, &mut taken)?);
        }
        Ok(Self {
            spec,
            ports,
            taken,
            children: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// The process id of a running service.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.children.get(service).map(Child::id)
    }

    pub fn ports(&self, service: &str) -> anyhow::Result<&Ports> {
        self.ports
            .get(service)
            .with_context(|| format!("no service {service}"))
    }

    pub fn grpc_url(&self, service: &str) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.ports(service)?.grpc))
    }

    /// Starts the Cloud API gateway over this cluster's dispatch and accounts. It is not one of
    /// `SERVICES`: the runs that kill each service leave this stateless one out.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        if !self.ports.contains_key("gateway") {
            let ports = pick_ports("gateway", &mut self.taken)?;
            self.ports.insert("gateway", ports);
        }
        self.start("gateway").await
    }

    /// The gateway's base URL (`http://` and its HTTP listener).
    pub fn gateway_url(&self) -> anyhow::Result<String> {
        let http = self.ports("gateway")?.http.context("gateway http")?;
        Ok(format!("http://{http}"))
    }

    /// The simulator's base URL (the messaging network).
    pub fn network_url(&self) -> anyhow::Result<String> {
        let http = self.ports("simulator")?.http.context("simulator http")?;
        Ok(format!("http://{http}"))
    }

    fn env(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let s = &self.spec;
        let p = self.ports(service)?;
        let scope_id = s.scope.id();
        let mut env: Vec<(&str, String)> = vec![
            ("KAFKA_BROKERS", s.brokers.clone()),
            ("DATABASE_URL", finestra_testkit::test_database_url()),
            ("REDIS_URL", finestra_testkit::test_redis_url()),
            ("TOPIC_SUFFIX", format!(".{scope_id}")),
            ("GRPC_ADDR", p.grpc.to_string()),
            ("METRICS_ADDR", p.metrics.to_string()),
            ("SHUTDOWN_GRACE_SECS", s.grace_secs.to_string()),
            (
                "DB_MAX_CONNECTIONS",
                if service == "dispatch" { "16" } else { "8" }.into(),
            ),
        ];
        let ingest = self.ports("ingest")?;
        let sim = self.ports("simulator")?;
        match service {
            "accounts" => env.extend([
                ("KEY_PREFIX", "fin_test_".into()),
                ("ACCOUNTS_CONSUMER_GROUP", s.scope.group("accounts")),
                ("ACCOUNTS_SUBMIT_TENANT_PREFIX", s.scope.tenant_prefix()),
                (
                    "PROVIDER_URL",
                    format!("http://{}", sim.http.context("simulator http")?),
                ),
                ("PROVIDER_TOKEN", s.provider_token.clone()),
            ]),
            "ingest" => env.extend([
                ("HTTP_ADDR", p.http.context("ingest http")?.to_string()),
                ("WEBHOOK_VERIFY_TOKEN", format!("verify-{scope_id}")),
            ]),
            "window" => env.extend([
                ("WINDOW_CONSUMER_GROUP", s.scope.group("window")),
                ("WINDOW_NOTICE_TENANT_PREFIX", s.scope.tenant_prefix()),
                ("WINDOW_NOTICE_EVERY_MS", "1000".into()),
            ]),
            "billing" => env.extend([("BILLING_CONSUMER_GROUP", s.scope.group("billing"))]),
            "simulator" => env.extend([
                (
                    "SIM_HTTP_ADDR",
                    p.http.context("simulator http")?.to_string(),
                ),
                (
                    "SIM_WEBHOOK_URL",
                    format!(
                        "http://{}/webhooks/cloud-api",
                        ingest.http.context("ingest http")?
                    ),
                ),
                ("SIM_ACCESS_TOKEN", s.provider_token.clone()),
                ("SIM_INGEST_URL", format!("http://{}", ingest.grpc)),
                ("SIM_INGEST_KEY", s.operator_key.clone()),
                ("SIM_NETWORK", format!("test-{scope_id}")),
                ("SIM_STATUS_DELAY_MS", "10".into()),
                ("SIM_READ_PER_MILLE", "0".into()),
                ("SIM_NUMBER_RATE", "1000".into()),
            ]),
            "dispatch" => env.extend([
                ("DISPATCH_WORKER_GROUP", s.scope.group("dispatch-worker")),
                ("DISPATCH_EVENTS_GROUP", s.scope.group("dispatch-events")),
                (
                    "DISPATCH_BILLING_URL",
                    format!("http://{}", self.ports("billing")?.grpc),
                ),
                ("DISPATCH_BILLING_KEY", s.operator_key.clone()),
                (
                    "PROVIDER_URL",
                    format!("http://{}", sim.http.context("simulator http")?),
                ),
                ("PROVIDER_TOKEN", s.provider_token.clone()),
                // Outages here last seconds: retry for about a minute and a half, not hours.
                ("DISPATCH_RETRY_BASE_MS", "200".into()),
                ("DISPATCH_RETRY_CAP_MS", "5000".into()),
                ("DISPATCH_RETRY_ATTEMPTS", "20".into()),
                ("PROVIDER_TIMEOUT_MS", "3000".into()),
                // The database is shared with other tests, whose dispatchers retry on other
                // schedules and topics: each sweeps its own tenants only.
                ("DISPATCH_SWEEP_TENANT_PREFIX", s.scope.tenant_prefix()),
                (
                    "DISPATCH_MEDIA_DIR",
                    std::env::temp_dir()
                        .join(format!("finestra-media-{scope_id}"))
                        .to_string_lossy()
                        .into_owned(),
                ),
            ]),
            "gateway" => env.extend([
                (
                    "GATEWAY_HTTP_ADDR",
                    p.http.context("gateway http")?.to_string(),
                ),
                (
                    "GATEWAY_DISPATCH_URL",
                    format!("http://{}", self.ports("dispatch")?.grpc),
                ),
                (
                    "GATEWAY_ACCOUNTS_URL",
                    format!("http://{}", self.ports("accounts")?.grpc),
                ),
            ]),
            other => anyhow::bail!("no service {other}"),
        }
        Ok(env
            .into_iter()
            .map(|(k, v)| (format!("FINESTRA_{k}"), v))
            .collect())
    }

    /// Starts `service` and waits until it is ready (gRPC health serving, or the simulator's
    /// `/healthz`).
    pub async fn start(&mut self, service: &'static str) -> anyhow::Result<()> {
        let bin = self.spec.bin_dir.join(format!("finestra-{service}"));
        anyhow::ensure!(bin.exists(), "{} is missing: build it first", bin.display());
        let log_path = self.spec.log_dir.join(format!("{service}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&bin)
            .envs(self.env(service)?)
            .env(
                "FINESTRA_LOG",
                std::env::var("FINESTRA_CLUSTER_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.children.insert(service, child);
        self.wait_ready(service, Duration::from_secs(60))
            .await
            .with_context(|| format!("{service} (log {})", log_path.display()))?;
        // Ready can be answered by the metrics listener of a process whose gRPC bind then fails.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(child) = self.children.get_mut(service)
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!(
                "{service} exited right after starting: {status} (log {})",
                log_path.display()
            );
        }
        if service == "simulator" {
            // The network knows the test's numbers and templates only once told (again after a
            // restart: it keeps them, and telling twice changes nothing).
            finestra_testkit::Network::new(&self.network_url()?, &self.spec.provider_token, 1_000)
                .register_all(&self.spec.scope)
                .await
                .context("registering the test's numbers with the network")?;
        }
        Ok(())
    }

    /// Starts every service in order. A first start that lost a port between the check and
    /// the bind (to a process outside this cluster) gets new ports and starts again: the
    /// services started after it read its ports then.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for s in SERVICES {
            let mut tries = 0;
            loop {
                match self.start(s).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 && self.lost_a_port(s) => {
                        tries += 1;
                        eprintln!("[cluster] {s}: a port was taken ({e:#}); new ports, again");
                        self.children.remove(s);
                        let fresh = pick_ports(s, &mut self.taken)?;
                        self.ports.insert(s, fresh);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether `service`'s log says a listener could not bind.
    fn lost_a_port(&self, service: &str) -> bool {
        std::fs::read_to_string(self.spec.log_dir.join(format!("{service}.log")))
            .is_ok_and(|log| log.contains("Address already in use"))
    }

    async fn ready(&self, service: &str) -> bool {
        let Ok(p) = self.ports(service) else {
            return false;
        };
        let url = match (service, p.http) {
            ("simulator", Some(http)) => format!("http://{http}/healthz"),
            _ => format!("http://{}/readyz", p.metrics),
        };
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    pub async fn wait_ready(&mut self, service: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.ready(service).await {
                return Ok(());
            }
            if let Some(child) = self.children.get_mut(service)
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("{service} exited while starting: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{service} not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no flush, no offset commit.
    pub async fn kill9(&mut self, service: &str) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(service)
            .with_context(|| format!("{service} is not running"))?;
        child.kill()?;
        wait_exit(&mut child, Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long the drain took.
    pub async fn terminate(&mut self, service: &str) -> anyhow::Result<(ExitStatus, Duration)> {
        let mut child = self
            .children
            .remove(service)
            .with_context(|| format!("{service} is not running"))?;
        let started = Instant::now();
        send_signal(child.id(), "TERM")?;
        let limit = Duration::from_secs(self.spec.grace_secs + 5);
        let status = wait_exit(&mut child, limit).await?;
        Ok((status, started.elapsed()))
    }

    /// Stops every running service with SIGTERM, in reverse start order.
    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        if self.children.contains_key("gateway") {
            self.terminate("gateway").await?;
        }
        for s in SERVICES.iter().rev() {
            if self.children.contains_key(s) {
                self.terminate(s).await?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

pub async fn wait_exit(child: &mut Child, within: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!("pid {} did not exit within {within:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tansu broker of the caller's own (SQLite engine, in `dir`), so it can be killed and
/// restarted without touching the machine's shared one.
pub struct Broker {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut broker = Self {
            addr: free_addr(&mut BTreeSet::new())?,
            dir,
            child: None,
        };
        broker.run().await?;
        Ok(broker)
    }

    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let tansu = tansu_binary()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let url = format!("tcp://{}", self.addr);
        // The SQLite path is relative to the working directory (tansu mangles absolute ones).
        let child = Command::new(tansu)
            .current_dir(&self.dir)
            // As scripts/infra.sh starts it: one runtime thread (docs/events.md).
            .env("TOKIO_WORKER_THREADS", "1")
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "tansu did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// kill -9 and start again on the same port and database.
    pub async fn kill9_and_restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            wait_exit(&mut child, Duration::from_secs(10)).await?;
        }
        tokio::time::sleep(down_for).await;
        self.run().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tansu_binary() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return Ok(cargo_bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("tansu"))
        .find(|p| p.exists())
        .context("tansu is not installed (scripts/infra.sh installs it)")
}
