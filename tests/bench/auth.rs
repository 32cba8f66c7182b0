//! `make bench-auth`: what authentication costs. Calls/s and latency of `GetWindow` through
//! the production path (RequireKey + tenant authorization) and through the same handler work
//! without it (Redis read of the window), same process, same data, same run. Prints figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use finestra_platform::auth::{AuthedChannel, Bearer, RequireKey, Scope};
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::window_service_server::{WindowService, WindowServiceServer};
use finestra_proto::v1::{
    GetWindowRequest, ListOpenWindowsRequest, ListOpenWindowsResponse, Window,
};
use finestra_testkit::{Scope as TestScope, infra};
use finestra_window::api::{WindowApi, to_window};
use finestra_window::state::PairKey;
use hdrhistogram::Histogram;
use tonic::{Request, Response, Status};

/// The same data path as `WindowApi::get_window`, minus authentication and authorization.
struct Unauthenticated(Arc<WindowApi>);

#[tonic::async_trait]
impl WindowService for Unauthenticated {
    async fn get_window(
        &self,
        request: Request<GetWindowRequest>,
    ) -> Result<Response<Window>, Status> {
        let req = request.into_inner();
        let key = PairKey {
            tenant_id: req.tenant_id,
            phone_number_id: req.phone_number_id,
            user: req.user,
        };
        let state = self.0.state(&key).await?;
        Ok(Response::new(to_window(
            &key,
            &state,
            finestra_domain::Clock::now(self.0.clock.as_ref()),
        )))
    }

    async fn list_open_windows(
        &self,
        _: Request<ListOpenWindowsRequest>,
    ) -> Result<Response<ListOpenWindowsResponse>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }
}

fn api(pool: sqlx::PgPool, redis: redis::aio::ConnectionManager) -> WindowApi {
    WindowApi {
        hot: finestra_window::hot::HotStore::new(redis, "fin"),
        pool: pool.clone(),
        clock: finestra_testkit::system_clock(),
        auth: finestra_registry::authenticator(pool),
    }
}

async fn serve(
    router: tonic::transport::server::Router,
) -> anyhow::Result<(String, finestra_platform::Shutdown)> {
    let (incoming, addr) = finestra_platform::grpc::bind("127.0.0.1:0".parse()?).await?;
    let stop = finestra_platform::Shutdown::new();
    finestra_platform::service::spawn_grpc(router, incoming, stop.clone());
    Ok((format!("http://{addr}"), stop))
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Closed loop: `in_flight` callers over `connections` channels for `duration`, optionally
/// paced to `rate` calls/s in total.
async fn load(
    url: &str,
    key: Option<&str>,
    req: GetWindowRequest,
    in_flight: usize,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Figures> {
    let mut channels: Vec<AuthedChannel> = Vec::new();
    for _ in 0..connections {
        let ch = tonic::transport::Channel::from_shared(url.to_owned())?
            .connect()
            .await?;
        let bearer = match key {
            Some(k) => Bearer::new(k)?,
            None => Bearer::anonymous(),
        };
        channels.push(tonic::service::interceptor::InterceptedService::new(
            ch, bearer,
        ));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let mut client = WindowServiceClient::new(channels[i % connections].clone());
        let req = req.clone();
        let interval = rate.map(|r| Duration::from_secs_f64(in_flight as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(iv) = interval {
                    next += iv;
                    tokio::time::sleep_until(next.into()).await;
                }
                let t0 = Instant::now();
                if client.get_window(req.clone()).await.is_err() {
                    errors += 1;
                }
                hist.record(t0.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h)?;
        errors += e;
    }
    Ok(Figures {
        per_second: hist.len() as f64 / started.elapsed().as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

fn print(label: &str, f: &Figures) {
    println!(
        "{label:<44} {:>8.0} calls/s   p50 {:>5.2} ms   p99 {:>5.2} ms   errors {}",
        f.per_second, f.p50_ms, f.p99_ms, f.errors
    );
}

// The services under test run in this process: the same allocator as their binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let scope = TestScope::new();
    let infra = infra().await?;
    let (tenant, number, _) = scope.tenant_with_number("bench", 1).await?;
    let key = scope.tenant_key("bench", &[Scope::Read]).await?;

    let authed = Arc::new(api(infra.pool.clone(), infra.redis.clone()));
    let auth = authed.auth.clone();
    let with_auth = tonic::transport::Server::builder()
        .add_service(RequireKey::new(WindowServiceServer::from_arc(authed), auth));
    let without = tonic::transport::Server::builder().add_service(WindowServiceServer::new(
        Unauthenticated(Arc::new(api(infra.pool.clone(), infra.redis.clone()))),
    ));
    let (url_auth, stop_auth) = serve(with_auth).await?;
    let (url_plain, stop_plain) = serve(without).await?;
    let req = GetWindowRequest {
        tenant_id: tenant,
        phone_number_id: number,
        user: "393470000001".into(),
    };
    let d = Duration::from_secs(seconds);
    // Warm both paths (caches, connections) before measuring.
    load(
        &url_auth,
        Some(&key),
        req.clone(),
        4,
        1,
        Duration::from_millis(500),
        None,
    )
    .await?;
    load(
        &url_plain,
        None,
        req.clone(),
        4,
        1,
        Duration::from_millis(500),
        None,
    )
    .await?;

    println!(
        "bench-auth: GetWindow, client and server in one process, 2 cores, {seconds} s per run"
    );
    // Alternating rounds, medians: machine noise hits both sides alike.
    let mut plain_runs = Vec::new();
    let mut auth_runs = Vec::new();
    for _ in 0..3 {
        plain_runs.push(load(&url_plain, None, req.clone(), 32, 4, d / 2, None).await?);
        auth_runs.push(load(&url_auth, Some(&key), req.clone(), 32, 4, d / 2, None).await?);
    }
    let median = |mut runs: Vec<Figures>| {
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        runs.swap_remove(1)
    };
    let plain_max = median(plain_runs);
    let auth_max = median(auth_runs);
    print("without auth, max (median of 3 alternating)", &plain_max);
    print("with auth,    max (median of 3 alternating)", &auth_max);
    println!(
        "  auth costs {:.1} % of max throughput",
        100.0 * (1.0 - auth_max.per_second / plain_max.per_second)
    );
    let plain_5k = load(&url_plain, None, req.clone(), 32, 4, d, Some(5_000.0)).await?;
    let auth_5k = load(&url_auth, Some(&key), req.clone(), 32, 4, d, Some(5_000.0)).await?;
    print("without auth, paced at 5,000/s", &plain_5k);
    print("with auth,    paced at 5,000/s", &auth_5k);
    println!(
        "  at 5,000/s auth adds {:+.2} ms p50, {:+.2} ms p99",
        auth_5k.p50_ms - plain_5k.p50_ms,
        auth_5k.p99_ms - plain_5k.p99_ms
    );
    stop_auth.trigger();
    stop_plain.trigger();
    Ok(())
}
