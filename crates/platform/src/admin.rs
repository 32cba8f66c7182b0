//! The admin HTTP endpoint of every service: `/metrics` (Prometheus), `/healthz` (alive) and
//! `/readyz` (the same readiness as gRPC health).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::health::Readiness;
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
}

/// Binds `addr` and serves until shutdown. Returns the bound address (for port 0) and the task.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    crate::metrics::prometheus();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { readiness });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    });
    Ok((local, task))
}

async fn metrics() -> (StatusCode, String) {
    match crate::metrics::prometheus() {
        Some(h) => {
            h.run_upkeep();
            (StatusCode::OK, h.render())
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "no recorder".into()),
    }
}

async fn ready(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
