//! Shared set-up of the cross-service tests: ingest and window running in-process against the
//! real servers, with one tenant and number owned by the test.

use std::time::Duration;

pub mod chain;
pub mod cluster;
pub mod facade;
pub mod load;
pub mod procstat;

use anyhow::Context as _;
use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::{GetWindowRequest, Window};
use finestra_testkit::{Scope, Started};

pub const WAIT: Duration = Duration::from_secs(30);

/// A benchmark's numeric knob from the environment (`BENCH_*`, `CHAOS_*`), or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Slice {
    pub scope: Scope,
    pub ingest: Started,
    pub window: Started,
    pub tenant: String,
    pub number: String,
    pub secret: String,
    pub http: reqwest::Client,
    /// Authenticated with a `read` key of the tenant.
    pub windows: WindowServiceClient<AuthedChannel>,
}

impl Slice {
    pub async fn start() -> anyhow::Result<Self> {
        let scope = Scope::new();
        finestra_testkit::infra().await?;
        scope.create_topics().await?;
        let (tenant, number, secret) = scope.tenant_with_number("acme", 1).await?;
        let ingest = finestra_testkit::start_ingest(&scope).await?;
        let window = finestra_testkit::start_window(&scope, "window", 500).await?;
        let key = scope.tenant_key("acme", &[KeyScope::Read]).await?;
        let windows = WindowServiceClient::new(
            finestra_testkit::authed_channel(window.running.grpc_url(), &key).await?,
        );
        Ok(Self {
            scope,
            ingest,
            window,
            tenant,
            number,
            secret,
            http: reqwest::Client::new(),
            windows,
        })
    }

    pub async fn stop(self) {
        self.ingest.stop().await;
        self.window.stop().await;
    }

    /// Posts a body signed with the number's secret.
    pub async fn post_signed(
        &self,
        body: &serde_json::Value,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let bytes = serde_json::to_vec(body)?;
        finestra_testkit::post_webhook(&self.http, &self.ingest.running, &bytes, Some(&self.secret))
            .await
    }

    /// A signed webhook with one user text message.
    pub fn text(
        &self,
        wamid: &str,
        from: &str,
        timestamp: i64,
        referral: Option<serde_json::Value>,
    ) -> serde_json::Value {
        finestra_cloudapi::build::text_messages(
            &self.number,
            "+39 02 0000 0000",
            &[finestra_cloudapi::build::InboundText {
                wamid,
                from,
                profile_name: "Test User",
                timestamp,
                body: "hello",
                referral,
            }],
        )
    }

    pub async fn window(&self, user: &str) -> anyhow::Result<Window> {
        Ok(self
            .windows
            .clone()
            .get_window(GetWindowRequest {
                tenant_id: self.tenant.clone(),
                phone_number_id: self.number.clone(),
                user: user.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Rows of this tenant's window history for `user`.
    pub async fn history_rows(&self, user: &str) -> anyhow::Result<i64> {
        let infra = finestra_testkit::infra().await?;
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM windows.window_events WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3",
        )
        .bind(&self.tenant)
        .bind(&self.number)
        .bind(user)
        .fetch_one(&infra.pool)
        .await?)
    }

    /// Waits until `user`'s history has `rows` rows (the consumer applied that many events).
    pub async fn wait_history(&self, user: &str, rows: i64) -> anyhow::Result<()> {
        finestra_testkit::eventually(&format!("{rows} history rows for {user}"), WAIT, || async {
            Ok((self.history_rows(user).await? >= rows).then_some(()))
        })
        .await
    }

    /// Waits until `user`'s window satisfies `check`, and returns it.
    pub async fn wait_window(
        &self,
        user: &str,
        check: impl Fn(&Window) -> bool,
    ) -> anyhow::Result<Window> {
        finestra_testkit::eventually(&format!("window of {user}"), WAIT, || async {
            let w = self.window(user).await?;
            Ok(check(&w).then_some(w))
        })
        .await
        .with_context(|| format!("tenant {} number {}", self.tenant, self.number))
    }
}

/// Seconds of a protobuf timestamp.
pub fn secs(ts: Option<&finestra_proto::prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds)
}
