//! A whole platform for one test (the dispatch and fairness suites): the simulator as the
//! network, ingest taking its signed webhooks, the window service, billing reserving and
//! capturing, and dispatch; Postgres, Redis and the broker are the machine's.

use finestra_platform::auth::{AuthedChannel, Owner, Scope as KeyScope};
use finestra_platform::status::reason_of;
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{self, SendMessageRequest, SendMessageResponse};
use finestra_testkit::{Scope, Started, StartedSim, eventually, infra};
use serde_json::{Value, json};
use tonic::Code;

use crate::WAIT;

pub const TOKEN: &str = "dispatch-test-token";
/// MARKETING to IT on the shipped card (crates/domain/rates/2025-07-01.card), no markup.
pub const MARKETING_IT: i64 = 69_100;
pub const UTILITY_IT: i64 = 30_000;

/// A whole platform for one test, with one tenant ("acme") and its number.
pub struct Chain {
    pub scope: Scope,
    pub ingest: Started,
    /// `None` while a test holds the window service stopped.
    pub window: Option<Started>,
    pub billing: Started,
    /// In-process dispatch (None when a test runs it as a process).
    pub dispatch: Option<Started>,
    pub dispatch_url: String,
    pub dispatch_config: finestra_dispatch::DispatchConfig,
    pub sim: StartedSim,
    pub tenant: String,
    pub number: String,
    /// A `send` key of the tenant.
    pub client: DispatchServiceClient<AuthedChannel>,
    /// An operator `admin` key.
    pub books: BillingServiceClient<AuthedChannel>,
    pub http: reqwest::Client,
}

impl Chain {
    pub async fn start(number_rate: u32) -> anyhow::Result<Self> {
        Self::start_with(number_rate, true).await
    }

    /// `in_process`: dispatch runs in this test; otherwise `client` points at
    /// `dispatch_url()` where the test runs the binary.
    pub async fn start_with(number_rate: u32, in_process: bool) -> anyhow::Result<Self> {
        Self::start_tuned(number_rate, in_process, |_| {}).await
    }

    pub async fn start_tuned(
        number_rate: u32,
        in_process: bool,
        tune: impl FnOnce(&mut finestra_dispatch::DispatchConfig),
    ) -> anyhow::Result<Self> {
        let scope = Scope::new();
        infra().await?;
        scope.create_topics().await?;
        let (tenant, number, _) = scope.tenant_with_number("acme", 1).await?;
        let ingest = finestra_testkit::start_ingest(&scope).await?;
        let window = finestra_testkit::start_window(&scope, "window", 500).await?;
        let billing = finestra_testkit::start_billing(&scope, "billing").await?;
        let sim =
            finestra_testkit::start_simulator(&scope, &ingest.running, TOKEN, number_rate).await?;
        let config = finestra_testkit::dispatch_config(
            &scope,
            &billing.running.grpc_url(),
            &sim.base_url(),
            TOKEN,
        )
        .await?;
        let send_key = scope.tenant_key("acme", &[KeyScope::Send]).await?;
        let operator = scope.key(Owner::Operator, &[KeyScope::Admin]).await?;
        let mut config = config;
        tune(&mut config);
        let dispatch_config = config.clone();
        let (dispatch, url) = if in_process {
            let d = finestra_testkit::start_dispatch_with(config).await?;
            let url = d.running.grpc_url();
            (Some(d), url)
        } else {
            (None, format!("http://127.0.0.1:{}", free_port()?))
        };
        let dispatch_url = url.clone();
        let channel = tonic::transport::Channel::from_shared(url)?.connect_lazy();
        let client =
            DispatchServiceClient::new(tonic::service::interceptor::InterceptedService::new(
                channel,
                finestra_platform::auth::Bearer::new(&send_key)?,
            ));
        let books = BillingServiceClient::new(
            finestra_testkit::authed_channel(billing.running.grpc_url(), &operator).await?,
        );
        Ok(Self {
            scope,
            ingest,
            window: Some(window),
            billing,
            dispatch,
            dispatch_url,
            dispatch_config,
            sim,
            tenant,
            number,
            client,
            books,
            http: reqwest::Client::new(),
        })
    }

    /// Starts the dispatch binary as its own process on `dispatch_url` (a chain started with
    /// `in_process: false`), for tests that kill it; `env` adds settings (a failpoint, a batch
    /// size).
    pub fn spawn_dispatch(&self, env: &[(&str, &str)]) -> anyhow::Result<std::process::Child> {
        let cfg = &self.dispatch_config;
        let addr = self.dispatch_url.trim_start_matches("http://").to_owned();
        Ok(
            std::process::Command::new(finestra_testkit::workspace_binary("finestra-dispatch")?)
                .envs(finestra_testkit::store_env())
                .env("FINESTRA_TOPIC_SUFFIX", format!(".{}", self.scope.id()))
                .env("FINESTRA_DISPATCH_WORKER_GROUP", &cfg.worker_group)
                .env("FINESTRA_DISPATCH_EVENTS_GROUP", &cfg.events_group)
                .env("FINESTRA_DISPATCH_BILLING_URL", &cfg.billing_url)
                .env("FINESTRA_DISPATCH_BILLING_KEY", &cfg.billing_key)
                .env("FINESTRA_PROVIDER_URL", &cfg.provider_url)
                .env("FINESTRA_PROVIDER_TOKEN", &cfg.provider_token)
                .env("FINESTRA_DISPATCH_RETRY_BASE_MS", "20")
                .env("FINESTRA_DISPATCH_RETRY_CAP_MS", "200")
                .env("FINESTRA_DISPATCH_FACTS_TTL_MS", "200")
                // Its webhook and re-queue sweeps keep to this test's tenants: the other tests'
                // dispatchers retry on their own schedules.
                .env(
                    "FINESTRA_DISPATCH_SWEEP_TENANT_PREFIX",
                    &cfg.sweep_tenant_prefix,
                )
                .env("FINESTRA_GRPC_ADDR", &addr)
                .env("FINESTRA_METRICS_ADDR", "127.0.0.1:0")
                .env("FINESTRA_LOG", "error")
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        )
    }

    pub async fn stop(self) {
        if let Some(d) = self.dispatch {
            d.stop().await;
        }
        self.sim.stop().await;
        self.billing.stop().await;
        if let Some(w) = self.window {
            w.stop().await;
        }
        self.ingest.stop().await;
    }

    pub async fn sim(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}/sim/v1/{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "sim {path}: {}", r.status());
        Ok(r.json().await?)
    }

    pub async fn sim_stats(&self, number: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/sim/v1/stats/{number}", self.sim.base_url()))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Stops the window service (what arrives meanwhile waits in its topics).
    pub async fn stop_window(&mut self) {
        if let Some(w) = self.window.take() {
            w.stop().await;
        }
    }

    /// Starts the window service again; it resumes from its committed offsets.
    pub async fn start_window(&mut self) -> anyhow::Result<()> {
        if self.window.is_none() {
            self.window = Some(finestra_testkit::start_window(&self.scope, "window", 500).await?);
        }
        Ok(())
    }

    /// The user writes `seconds_ago` (through the network and ingest); returns its wamid.
    pub async fn user_writes(
        &self,
        user: &str,
        seconds_ago: i64,
        referral: bool,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "phone_number_id": self.number, "from": user, "name": "Giulia",
            "text": "Ciao!", "seconds_ago": seconds_ago,
        });
        if referral {
            body["referral_source_id"] = json!("ad-42");
        }
        let said = self.sim("say", body).await?;
        Ok(said["wamid"].as_str().unwrap_or_default().to_owned())
    }

    /// The user writes `seconds_ago`; returns once the window service recorded it.
    pub async fn user_says(
        &self,
        user: &str,
        seconds_ago: i64,
        referral: bool,
    ) -> anyhow::Result<()> {
        let wamid = self.user_writes(user, seconds_ago, referral).await?;
        let infra = infra().await?;
        // Its history row (not "the newest message": two in one second tie by id).
        eventually("the window service records the message", WAIT, || async {
            let found: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM windows.window_events WHERE tenant_id = $1 AND message_id = $2",
            )
            .bind(&self.tenant)
            .bind(&wamid)
            .fetch_optional(&infra.pool)
            .await?;
            Ok(found.map(|_| ()))
        })
        .await
    }

    /// The file the network announced with the user's message `wamid` (its media id), as the
    /// tenant's event stream tells it.
    pub async fn announced_media(&self, wamid: &str) -> anyhow::Result<v1::InboundMedia> {
        let mut stream = self
            .client
            .clone()
            .stream_events(v1::StreamEventsRequest {
                tenant_id: self.tenant.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.message())
                .await
                .map_err(|_| anyhow::anyhow!("no inbound message {wamid} told"))??
                .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
            if let Some(v1::envelope::Payload::InboundMessage(m)) =
                next.event.and_then(|e| e.payload)
                && m.message_id == wamid
            {
                return m
                    .media
                    .ok_or_else(|| anyhow::anyhow!("{wamid} carried no file"));
            }
        }
    }

    pub async fn window(&self, user: &str) -> anyhow::Result<finestra_domain::WindowState> {
        let infra = infra().await?;
        Ok(finestra_registry::windows::read(
            &infra.redis,
            &infra.pool,
            "fin",
            &self.tenant,
            &self.number,
            user,
        )
        .await?)
    }

    /// Adds an approved template straight to the control plane's table, and to the network
    /// (submitted through its Cloud API and approved there).
    pub async fn template(&self, name: &str, category: &str, params: i32) -> anyhow::Result<()> {
        self.template_with_status(name, category, params, "APPROVED")
            .await
    }

    pub async fn template_with_status(
        &self,
        name: &str,
        category: &str,
        params: i32,
        status: &str,
    ) -> anyhow::Result<()> {
        let infra = infra().await?;
        let body = (1..=params).fold("Ciao".to_owned(), |b, i| format!("{b} {{{{{i}}}}}"));
        sqlx::query(
            "INSERT INTO accounts.templates
                (template_id, tenant_id, name, language, category, body, parameter_count, status)
             VALUES ($1, $2, $3, 'it', $4, $5, $6, $7)",
        )
        .bind(format!("tpl-{}-{name}", self.scope.id()))
        .bind(&self.tenant)
        .bind(name)
        .bind(category)
        .bind(&body)
        .bind(params)
        .bind(status)
        .execute(&infra.pool)
        .await?;
        // The network has it too, in the same state (a PENDING one it has not reviewed yet:
        // Finestra refuses it before the network could).
        if status != "PENDING" {
            let waba = self.scope.waba_id("acme");
            self.sim
                .template(&waba, name, category, &body, status)
                .await?;
        }
        Ok(())
    }

    pub async fn top_up(&self, amount: i64) -> anyhow::Result<()> {
        self.books
            .clone()
            .top_up(v1::TopUpRequest {
                tenant_id: self.tenant.clone(),
                amount_micros: amount,
                top_up_id: format!("t-{amount}-{}", rand_suffix()),
                note: "test".into(),
            })
            .await?;
        Ok(())
    }

    pub async fn wallet(&self) -> anyhow::Result<v1::Wallet> {
        Ok(self
            .books
            .clone()
            .get_wallet(v1::GetWalletRequest {
                tenant_id: self.tenant.clone(),
            })
            .await?
            .into_inner())
    }

    pub fn request(&self, to: &str, key: &str, content: Content) -> SendMessageRequest {
        SendMessageRequest {
            tenant_id: self.tenant.clone(),
            phone_number_id: self.number.clone(),
            to: to.into(),
            idempotency_key: key.into(),
            send_at: None,
            send_at_local: String::new(),
            content: Some(content),
        }
    }

    pub async fn send(
        &self,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse, tonic::Status> {
        self.client
            .clone()
            .send_message(req)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn text(
        &self,
        to: &str,
        key: &str,
        body: &str,
    ) -> Result<SendMessageResponse, tonic::Status> {
        self.send(self.request(to, key, text(body))).await
    }

    pub async fn template_send(
        &self,
        to: &str,
        key: &str,
        name: &str,
        params: &[&str],
    ) -> Result<SendMessageResponse, tonic::Status> {
        self.send(self.request(to, key, template(name, params)))
            .await
    }

    pub async fn message(&self, id: &str) -> anyhow::Result<v1::Message> {
        Ok(self
            .client
            .clone()
            .get_message(v1::GetMessageRequest {
                tenant_id: self.tenant.clone(),
                message_id: id.into(),
            })
            .await?
            .into_inner())
    }

    /// A status of message `id` (network id `wamid`) to `user`, as ingest publishes it.
    pub fn status(&self, id: &str, wamid: &str, user: &str, status: &str) -> v1::Envelope {
        status_event(&self.tenant, &self.number, id, wamid, user, status)
    }

    /// Waits until the message has one of `statuses`.
    pub async fn settles(&self, id: &str, statuses: &[&str]) -> anyhow::Result<v1::Message> {
        eventually(&format!("{id} reaches {statuses:?}"), WAIT, || async {
            let m = self.message(id).await?;
            Ok(statuses.contains(&m.status.as_str()).then_some(m))
        })
        .await
    }

    /// Waits until billing has settled every reservation (nothing reserved).
    pub async fn books_settled(&self) -> anyhow::Result<v1::Wallet> {
        eventually(
            "every reservation is captured or released",
            WAIT,
            || async {
                let w = self.wallet().await?;
                Ok((w.reserved_micros == 0).then_some(w))
            },
        )
        .await
    }

    pub async fn reservations(&self) -> anyhow::Result<i64> {
        let infra = infra().await?;
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM billing.reservations WHERE tenant_id = $1")
                .bind(&self.tenant)
                .fetch_one(&infra.pool)
                .await?;
        Ok(n)
    }

    pub async fn charges(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let infra = infra().await?;
        Ok(sqlx::query_as(
            "SELECT reference, amount FROM billing.ledger
              WHERE tenant_id = $1 AND kind = 'charge' ORDER BY reference",
        )
        .bind(&self.tenant)
        .fetch_all(&infra.pool)
        .await?)
    }

    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let report = self
            .books
            .clone()
            .reconcile(v1::ReconcileRequest {
                tenant_id: self.tenant.clone(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            report.differences.is_empty(),
            "reconcile: {:?}",
            report.differences
        );
        Ok(())
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn rand_suffix() -> u64 {
    use rand::Rng as _;
    rand::rng().random()
}

pub fn text(body: &str) -> Content {
    Content::Text(v1::TextContent {
        body: body.into(),
        preview_url: false,
    })
}

pub fn template(name: &str, params: &[&str]) -> Content {
    Content::Template(v1::TemplateContent {
        name: name.into(),
        language: "it".into(),
        parameters: params.iter().map(|p| (*p).to_owned()).collect(),
    })
}

pub fn reason(r: &Result<SendMessageResponse, tonic::Status>) -> (Code, String) {
    match r {
        Ok(ok) => (Code::Ok, ok.message_id.clone()),
        Err(s) => (s.code(), reason_of(s).unwrap_or_default()),
    }
}

/// A `MessageStatus` event as ingest publishes it: message `id` (Finestra's, echoed as
/// callback data) of `tenant`'s `number`, network id `wamid`, to `user`, now.
pub fn status_event(
    tenant: &str,
    number: &str,
    id: &str,
    wamid: &str,
    user: &str,
    status: &str,
) -> v1::Envelope {
    v1::Envelope {
        event_id: format!("st:{wamid}:{status}"),
        tenant_id: tenant.to_owned(),
        occurred_at: Some(finestra_proto::time::from_micros(
            finestra_testkit::now_secs() * 1_000_000,
        )),
        recorded_at: None,
        payload: Some(v1::envelope::Payload::MessageStatus(v1::MessageStatus {
            phone_number_id: number.to_owned(),
            message_id: wamid.to_owned(),
            status: status.to_owned(),
            recipient: Some(v1::UserRef {
                wa_id: user.to_owned(),
                ..v1::UserRef::default()
            }),
            callback_data: id.to_owned(),
            ..v1::MessageStatus::default()
        })),
    }
}
