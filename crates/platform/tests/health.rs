//! Health against real servers: NOT_SERVING while a dependency does not answer, SERVING once
//! all answer, NOT_SERVING again the moment shutdown begins.

use std::time::Duration;

use finestra_platform::Shutdown;
use finestra_platform::health::{self, Dependency, HealthService};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn serve(
    service: HealthService,
) -> anyhow::Result<(HealthClient<tonic::transport::Channel>, Shutdown)> {
    let (incoming, addr) = finestra_platform::grpc::bind("127.0.0.1:0".parse()?).await?;
    let stop = Shutdown::new();
    let router = tonic::transport::Server::builder().add_service(service);
    finestra_platform::service::spawn_grpc(router, incoming, stop.clone());
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok((HealthClient::new(channel), stop))
}

async fn status(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> anyhow::Result<i32> {
    Ok(client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner()
        .status)
}

fn deps(pg: &str, redis: &str, brokers: &str) -> anyhow::Result<Vec<Dependency>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(pg)?;
    Ok(vec![
        Dependency::Postgres(pool),
        Dependency::Redis(redis::Client::open(redis)?),
        Dependency::Kafka(finestra_platform::kafka::producer(brokers)?),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn not_serving_while_a_dependency_does_not_answer() -> anyhow::Result<()> {
    // Real Postgres and broker; nothing listens on port 1 for Redis.
    let deps = deps(
        "postgres://postgres@127.0.0.1:5432/finestra",
        "redis://127.0.0.1:1",
        "127.0.0.1:9092",
    )?;
    let shutdown = Shutdown::new();
    let (readiness, service, task) = health::watch(&["test.Service"], deps, shutdown.clone()).await;
    let (mut client, stop) = serve(service).await?;
    // Three rounds of checks (one every 0.5 s while not ready) must all keep it down.
    for _ in 0..3 {
        assert_eq!(
            status(&mut client, "").await?,
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            status(&mut client, "test.Service").await?,
            ServingStatus::NotServing as i32
        );
        assert!(!readiness.is_ready());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    shutdown.trigger();
    task.await?;
    stop.trigger();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn serving_once_everything_answers_and_not_serving_from_shutdown_on() -> anyhow::Result<()> {
    let deps = deps(
        "postgres://postgres@127.0.0.1:5432/finestra",
        "redis://127.0.0.1:6379",
        "127.0.0.1:9092",
    )?;
    let shutdown = Shutdown::new();
    let (readiness, service, task) = health::watch(&["test.Service"], deps, shutdown.clone()).await;
    let (mut client, stop) = serve(service).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status(&mut client, "test.Service").await? != ServingStatus::Serving as i32 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(readiness.is_ready());
    assert_eq!(
        status(&mut client, "").await?,
        ServingStatus::Serving as i32
    );

    shutdown.trigger();
    task.await?;
    assert_eq!(
        status(&mut client, "").await?,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        status(&mut client, "test.Service").await?,
        ServingStatus::NotServing as i32
    );
    assert!(!readiness.is_ready());
    stop.trigger();
    Ok(())
}
