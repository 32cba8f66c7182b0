//! Off-the-shelf Python clients against Finestra, from PyPI (scripts/python-env.sh installs
//! them; `make test` runs it first): an unmodified Cloud API SDK (pywa) pointed at the gateway
//! by its base-URL option sends and receives through it, and the `standardwebhooks` package
//! verifies Finestra's own webhooks across a secret rotation; tests/curl/cloud_api.sh does the
//! SDK's part with curl. The scripts are in tests/python/ and tests/curl/.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use finestra_e2e::chain::{Chain, UTILITY_IT};
use finestra_e2e::facade::Facade;
use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_platform::status::reason_of;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::{CreateWebhookRequest, RotateWebhookSecretRequest, WebhookFormat};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const USER: &str = "393331110002";
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A Python script of tests/python/ speaking JSON lines on stdout and taking lines on stdin.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Script {
    /// A script of tests/python/ run by the venv's Python.
    fn python(name: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let python = workspace().join("var/test-venv/bin/python");
        anyhow::ensure!(
            python.exists(),
            "{} is missing: run scripts/python-env.sh (make test does)",
            python.display()
        );
        let mut command = Command::new(python);
        command.arg(workspace().join("tests/python").join(name));
        Self::spawn(command, env)
    }

    fn spawn(mut command: Command, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut child = command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("[python] {line}"),
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next line with `key` (others are skipped); a `failed` line fails the test.
    async fn next(&mut self, key: &str) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + SCRIPT_WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow::anyhow!("the script said no {key:?} in time"))?
                .ok_or_else(|| anyhow::anyhow!("the script ended before saying {key:?}"))?;
            if let Some(why) = line.get("failed") {
                anyhow::bail!("the script failed: {why}");
            }
            if let Some(v) = line.get(key) {
                return Ok(v.clone());
            }
        }
    }

    /// The next line with `key` whose value satisfies `want`.
    async fn next_where(
        &mut self,
        key: &str,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        loop {
            let v = self.next(key).await?;
            if want(&v) {
                return Ok(v);
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn admin(chain: &Chain) -> anyhow::Result<DispatchServiceClient<AuthedChannel>> {
    let key = chain.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    Ok(DispatchServiceClient::new(
        finestra_testkit::authed_channel(chain.dispatch_url.clone(), &key).await?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmodified_cloud_api_sdk_sends_and_receives_through_the_gateway() -> anyhow::Result<()>
{
    let f = Facade::start().await?;
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.top_up(10 * UTILITY_IT).await?;
    let (verify_token, app_secret) = ("pywa-verify-token", "the-business-app-secret");
    let mut sdk = Script::python(
        "cloud_api_sdk.py",
        &[
            ("FINESTRA_GATEWAY_URL", f.base.clone()),
            ("FINESTRA_TOKEN", f.token.clone()),
            ("FINESTRA_PHONE_ID", f.chain.number.clone()),
            ("FINESTRA_USER", USER.to_owned()),
            ("FINESTRA_SIM_URL", f.chain.sim.base_url()),
            ("FINESTRA_TEMPLATE", "order_update".to_owned()),
            ("FINESTRA_TEMPLATE_LANGUAGE", "it".to_owned()),
            ("FINESTRA_VERIFY_TOKEN", verify_token.to_owned()),
            ("FINESTRA_APP_SECRET", app_secret.to_owned()),
        ],
    )?;
    let port = sdk.next("listening").await?;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let mut dispatch = admin(&f.chain).await?;
    let webhook = |token: &str| CreateWebhookRequest {
        tenant_id: f.chain.tenant.clone(),
        url: url.clone(),
        format: WebhookFormat::CloudApi.into(),
        verify_token: token.to_owned(),
        app_secret: app_secret.to_owned(),
    };

    // The handler refuses a wrong verify token, so the endpoint is not created.
    let refused = dispatch
        .create_webhook(webhook("not-the-token"))
        .await
        .expect_err("the handshake fails");
    assert_eq!(
        (refused.code(), reason_of(&refused).as_deref()),
        (
            tonic::Code::FailedPrecondition,
            Some("WEBHOOK_NOT_VERIFIED")
        )
    );
    let created = dispatch
        .create_webhook(webhook(verify_token))
        .await?
        .into_inner();
    assert_eq!(created.format, i32::from(WebhookFormat::CloudApi));
    assert_eq!(created.secret, app_secret);
    // Its secret is the business's app secret: it is not rotated by Finestra.
    let rotated = dispatch
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            tenant_id: f.chain.tenant.clone(),
            endpoint_id: created.endpoint_id.clone(),
            overlap_seconds: 60,
        })
        .await
        .expect_err("a Cloud API endpoint is not rotated");
    assert_eq!(rotated.code(), tonic::Code::InvalidArgument);
    sdk.tell("subscribed")?;

    let done = sdk.next("done").await?;
    assert_eq!(done["from"], USER);
    assert_eq!(done["profile_name"], "Giulia");
    assert_eq!(done["read"], true);
    let text = f
        .chain
        .message(done["text_id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!((text.kind.as_str(), text.to.as_str()), ("text", USER));
    let template = f
        .chain
        .message(done["template_id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(
        (template.kind.as_str(), template.template_name.as_str()),
        ("template", "order_update")
    );
    for m in [&text, &template] {
        assert!(["DELIVERED", "READ"].contains(&m.status.as_str()), "{m:?}");
    }
    drop(sdk);
    f.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_curl_sends_and_receives_through_the_gateway() -> anyhow::Result<()> {
    let f = Facade::start().await?;
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.top_up(10 * UTILITY_IT).await?;
    let (verify_token, app_secret) = ("curl-verify-token", "curl-app-secret");
    let mut command = Command::new("bash");
    command.arg(workspace().join("tests/curl/cloud_api.sh"));
    let mut script = Script::spawn(
        command,
        &[
            ("GATEWAY_URL", f.base.clone()),
            ("TOKEN", f.token.clone()),
            ("PHONE_ID", f.chain.number.clone()),
            ("USER", USER.to_owned()),
            ("SIM_URL", f.chain.sim.base_url()),
            ("TEMPLATE", "order_update".to_owned()),
            ("TEMPLATE_LANGUAGE", "it".to_owned()),
            ("VERIFY_TOKEN", verify_token.to_owned()),
            ("APP_SECRET", app_secret.to_owned()),
        ],
    )?;
    let port = script.next("listening").await?;
    admin(&f.chain)
        .await?
        .create_webhook(CreateWebhookRequest {
            tenant_id: f.chain.tenant.clone(),
            url: format!("http://127.0.0.1:{port}/"),
            format: WebhookFormat::CloudApi.into(),
            verify_token: verify_token.to_owned(),
            app_secret: app_secret.to_owned(),
        })
        .await?;
    script.tell("subscribed")?;
    let done = script.next("done").await?;
    assert_eq!(done["from"], USER);
    assert_eq!(done["read"], "True");
    for (id, kind) in [
        (&done["text_id"], "text"),
        (&done["template_id"], "template"),
    ] {
        let m = f
            .chain
            .settles(id.as_str().unwrap_or_default(), &["DELIVERED", "READ"])
            .await?;
        assert_eq!(m.kind, kind);
    }
    drop(script);
    f.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn standardwebhooks_verifies_finestras_webhooks_across_a_secret_rotation()
-> anyhow::Result<()> {
    let chain = Chain::start(1_000).await?;
    let mut receiver = Script::python("standard_webhooks_receiver.py", &[])?;
    let port = receiver.next("listening").await?;
    let mut dispatch = admin(&chain).await?;
    let created = dispatch
        .create_webhook(CreateWebhookRequest {
            tenant_id: chain.tenant.clone(),
            url: format!("http://127.0.0.1:{port}/hook"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    let first = created.secret.clone();
    receiver.tell(&json!({"secrets": [first]}).to_string())?;
    receiver.next("secrets_set").await?;

    // Each delivery verifies with the library, and its tampered or stale copy does not.
    chain.user_writes(USER, 0, false).await?;
    let verified = receiver.next("verified").await?;
    assert_eq!(verified["by"], json!([0]), "{verified}");
    assert_eq!(verified["tampered_rejected"], true);
    assert_eq!(verified["stale_rejected"], true);

    // A rotation: while it overlaps, a delivery carries both signatures, so a receiver on the
    // new secret and one still on the old both verify it.
    let rotated = dispatch
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            tenant_id: chain.tenant.clone(),
            endpoint_id: created.endpoint_id.clone(),
            overlap_seconds: 3_600,
        })
        .await?
        .into_inner();
    let second = rotated.secret.clone();
    assert_ne!(first, second);
    receiver.tell(&json!({"secrets": [second, first]}).to_string())?;
    receiver.next("secrets_set").await?;
    chain.user_writes(USER, 0, false).await?;
    receiver
        .next_where("verified", |v| v["by"] == json!([0, 1]))
        .await?;

    // Once a second rotation retires it, the first secret verifies nothing.
    let third = dispatch
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            tenant_id: chain.tenant.clone(),
            endpoint_id: created.endpoint_id.clone(),
            overlap_seconds: 3_600,
        })
        .await?
        .into_inner()
        .secret;
    receiver.tell(&json!({"secrets": [first]}).to_string())?;
    receiver.next("secrets_set").await?;
    chain.user_writes(USER, 0, false).await?;
    receiver.next("rejected").await?;
    receiver.tell(&json!({"secrets": [third, second]}).to_string())?;
    receiver.next("secrets_set").await?;
    chain.user_writes(USER, 0, false).await?;
    receiver
        .next_where("verified", |v| v["by"] == json!([0, 1]))
        .await?;
    drop(receiver);
    chain.stop().await;
    Ok(())
}
