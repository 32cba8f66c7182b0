//! Readiness: gRPC health (and `/readyz`) says `NOT_SERVING` until Postgres, Redis and the
//! broker each answered a real round trip, goes back to `NOT_SERVING` when one stops
//! answering, and the moment shutdown begins, so an orchestrator stops routing before the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::shutdown::Shutdown;

/// A dependency whose round trip decides readiness.
#[derive(Clone)]
pub enum Dependency {
    Postgres(sqlx::PgPool),
    /// A client, not a connection: the check opens its own, so health can watch Redis
    /// before the service managed to connect.
    Redis(redis::Client),
    Kafka(FutureProducer),
}

impl Dependency {
    fn name(&self) -> &'static str {
        match self {
            Dependency::Postgres(_) => "postgres",
            Dependency::Redis(_) => "redis",
            Dependency::Kafka(_) => "kafka",
        }
    }

    async fn check(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(3);
        match self {
            Dependency::Postgres(pool) => {
                let q = sqlx::query!("SELECT 1 AS one").fetch_one(pool);
                match tokio::time::timeout(timeout, q).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".into()),
                }
            }
            Dependency::Redis(client) => {
                let ping = async {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                };
                match tokio::time::timeout(timeout, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".into()),
                }
            }
            Dependency::Kafka(producer) => {
                let producer = producer.clone();
                tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(None, timeout)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        }
    }
}

/// Shared readiness flag of one service.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The gRPC health service of a process, `NOT_SERVING` until [`watch`] finds every dependency.
pub type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// Creates the health service (initially `NOT_SERVING` for `""` and every name in
/// `services`) and the task that keeps it true.
pub async fn watch(
    services: &[&'static str],
    dependencies: Vec<Dependency>,
    shutdown: Shutdown,
) -> (Readiness, HealthService, tokio::task::JoinHandle<()>) {
    let reporter = HealthReporter::new();
    let service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
    );
    let names: Vec<&'static str> = std::iter::once("")
        .chain(services.iter().copied())
        .collect();
    set_all(&reporter, &names, ServingStatus::NotServing).await;
    let readiness = Readiness::default();
    let flag = readiness.clone();
    let task = tokio::spawn(async move {
        loop {
            let mut failures = Vec::new();
            for dep in &dependencies {
                if let Err(e) = dep.check().await {
                    failures.push(format!("{}: {e}", dep.name()));
                }
            }
            let ready = failures.is_empty() && !shutdown.is_triggered();
            if ready != flag.is_ready() {
                if ready {
                    tracing::info!("all dependencies answer: SERVING");
                } else {
                    tracing::warn!(?failures, "a dependency does not answer: NOT_SERVING");
                }
                flag.0.store(ready, Ordering::SeqCst);
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                set_all(&reporter, &names, status).await;
            }
            let pause = if ready {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        flag.0.store(false, Ordering::SeqCst);
        set_all(&reporter, &names, ServingStatus::NotServing).await;
    });
    (readiness, service, task)
}

async fn set_all(reporter: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}
