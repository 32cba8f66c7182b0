//! What starting a service returns, and why starting can fail.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("broker: {0}")]
    Bus(#[from] crate::kafka::BusError),
    #[error("binding a listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("shut down before the service finished starting")]
    Interrupted,
}

/// Retries `attempt` with capped exponential backoff until it succeeds; `None` once shutdown
/// began. For start-up steps that need a dependency which may not be up yet (health says
/// `NOT_SERVING` meanwhile).
pub async fn retry_until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &crate::Shutdown,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "{what} failed; retrying in {pause:?}"),
        }
        tokio::select! {
            () = shutdown.wait() => return None,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// A started service: its bound addresses (port 0 resolved) and the tasks it owns. Trigger the
/// service's `Shutdown`, then `wait` for the drain to finish.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The HTTP listener of services that have one (ingest's webhooks).
    pub http_addr: Option<SocketAddr>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Running {
    pub fn new(
        grpc_addr: SocketAddr,
        metrics_addr: SocketAddr,
        http_addr: Option<SocketAddr>,
    ) -> Self {
        Self {
            grpc_addr,
            metrics_addr,
            http_addr,
            tasks: Vec::new(),
        }
    }

    pub fn own(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Waits for every task to end (after shutdown was triggered).
    pub async fn wait(self) {
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "task ended abnormally");
            }
        }
    }
}

/// What every service starts before anything that waits for a dependency: gRPC health over
/// its dependencies and the admin endpoint (metrics, liveness, readiness). Both say "not
/// serving" until every dependency answers, so a service comes up observable.
pub struct Observed {
    /// Add it to the service's gRPC router.
    pub health_service: crate::health::HealthService,
    pub admin: Admin,
}

/// The admin side of [`Observed`]: where metrics are served and the tasks that serve them.
pub struct Admin {
    pub metrics_addr: SocketAddr,
    health_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

impl Admin {
    /// The started service, owning the health and admin tasks.
    pub fn running(self, grpc_addr: SocketAddr, http_addr: Option<SocketAddr>) -> Running {
        let mut running = Running::new(grpc_addr, self.metrics_addr, http_addr);
        running.own("health", self.health_task);
        running.own("admin", self.admin_task);
        running
    }
}

/// Starts health (for `service`, over `dependencies`) and the admin endpoint on
/// `metrics_addr`.
pub async fn observe(
    service: &'static str,
    metrics_addr: SocketAddr,
    dependencies: Vec<crate::health::Dependency>,
    shutdown: &crate::Shutdown,
) -> Result<Observed, StartError> {
    let (readiness, health_service, health_task) =
        crate::health::watch(&[service], dependencies, shutdown.clone()).await;
    let (metrics_addr, admin_task) =
        crate::admin::serve(metrics_addr, readiness, shutdown.clone()).await?;
    Ok(Observed {
        health_service,
        admin: Admin {
            metrics_addr,
            health_task,
            admin_task,
        },
    })
}

/// The end of a service binary after shutdown began: waits up to `grace` for the drain, flushes
/// the traces, then exits the process at once with 0 (drained) or 1 (not within the grace).
/// Exiting instead of returning skips destructors that can block for good when a dependency is
/// gone (librdkafka's consumer close waits for a group coordinator that may never answer).
pub async fn drain_and_exit(
    running: Running,
    grace: std::time::Duration,
    service: &str,
    telemetry: crate::telemetry::TelemetryGuard,
) -> ! {
    let code = match tokio::time::timeout(grace, running.wait()).await {
        Ok(()) => {
            tracing::info!("{service} stopped");
            0
        }
        Err(_) => {
            tracing::error!("{service}: the drain did not finish within {grace:?}; exiting anyway");
            1
        }
    };
    drop(telemetry);
    std::process::exit(code)
}

/// The one life of every service binary once its configuration is read and its telemetry set
/// up: SIGTERM and SIGINT trigger the shutdown, `start` brings the service up (a signal while it
/// waits for a dependency ends the process cleanly: nothing to drain), it serves until a
/// signal, then drains within `grace` and exits ([`drain_and_exit`]).
pub async fn serve_until_signalled<F, Fut>(
    service: &str,
    grace: std::time::Duration,
    telemetry: crate::telemetry::TelemetryGuard,
    start: F,
) -> Result<(), StartError>
where
    F: FnOnce(crate::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<Running, StartError>>,
{
    let shutdown = crate::Shutdown::new();
    shutdown.trigger_on_signals()?;
    let running = match start(shutdown.clone()).await {
        Ok(running) => running,
        Err(StartError::Interrupted) => return Ok(()),
        Err(e) => return Err(e),
    };
    shutdown.wait().await;
    drain_and_exit(running, grace, service, telemetry).await
}

/// Serves a tonic router on a pre-bound listener until shutdown, logging a failure instead of
/// losing it.
pub fn spawn_grpc(
    router: tonic::transport::server::Router,
    incoming: tonic::transport::server::TcpIncoming,
    shutdown: crate::Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.wait_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}
