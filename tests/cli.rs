//! The `finestra` binary end to end against a real accounts service: bootstrap → partner →
//! tenant → number → key → template, with JSON output for scripts and one-line errors.

use std::process::{Command, Output};

struct Cli {
    bin: std::path::PathBuf,
    endpoint: String,
}

impl Cli {
    fn run(&self, key: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .envs(finestra_testkit::store_env())
            .env("FINESTRA_ENDPOINT", &self.endpoint)
            .env_remove("FINESTRA_API_KEY");
        if let Some(k) = key {
            cmd.env("FINESTRA_API_KEY", k);
        }
        Ok(cmd.output()?)
    }

    /// Runs, requires success, returns stdout.
    fn ok(&self, key: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(key, args)?;
        anyhow::ensure!(
            out.status.success(),
            "finestra {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn field(json_line: &str, name: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(json_line.trim())?;
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no {name} in {json_line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_partner_tenant_number_key_template() -> anyhow::Result<()> {
    let scope = finestra_testkit::Scope::new();
    finestra_testkit::infra().await?;
    scope.create_topics().await?;
    let accounts = finestra_testkit::start_accounts(&scope).await?;
    let cli = Cli {
        bin: finestra_testkit::workspace_binary("finestra")?,
        endpoint: accounts.running.grpc_url(),
    };
    let id = scope.id();
    let (partner, tenant, number) = (
        format!("pcli{id}"),
        format!("tcli{id}"),
        format!("pncli{id}"),
    );

    let operator = field(
        &cli.ok(
            None,
            &["--json", "bootstrap", "--prefix", "fin_test_", "--another"],
        )?,
        "secret",
    )?;
    assert!(operator.starts_with("fin_test_"));
    let op = Some(operator.as_str());
    cli.ok(
        op,
        &["partner", "create", "--id", &partner, "--name", "CLI BSP"],
    )?;
    let created = cli.ok(
        op,
        &[
            "--json",
            "tenant",
            "create",
            "--partner",
            &partner,
            "--id",
            &tenant,
            "--name",
            "CLI Shop",
            "--waba-id",
            &format!("waba-{tenant}"),
        ],
    )?;
    assert_eq!(field(&created, "partner_id")?, partner);
    cli.ok(
        op,
        &[
            "number",
            "add",
            "--tenant",
            &tenant,
            "--phone-number-id",
            &number,
            "--display",
            "+39 02 9",
            "--app-secret",
            "cli-secret-123",
        ],
    )?;
    let listed = cli.ok(op, &["--json", "number", "list", "--tenant", &tenant])?;
    assert_eq!(field(&listed, "phone_number_id")?, number);

    let tenant_admin = field(
        &cli.ok(
            op,
            &[
                "--json", "key", "create", "--tenant", &tenant, "--scopes", "admin", "--label",
                "cli",
            ],
        )?,
        "secret",
    )?;
    let ta = Some(tenant_admin.as_str());
    let template = cli.ok(
        ta,
        &[
            "--json",
            "template",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "order_ready",
            "--language",
            "en",
            "--category",
            "UTILITY",
            "--body",
            "Order {{1}} is ready",
        ],
    )?;
    assert_eq!(field(&template, "status")?, "PENDING");
    let template_id = field(&template, "template_id")?;
    // This test runs no network: the template is kept, not submitted, and a submission or a
    // sync now is refused with the reason.
    assert!(template.contains(r#""submitted":false"#), "{template}");
    for args in [
        vec![
            "template",
            "submit",
            "--tenant",
            &tenant,
            "--id",
            &template_id,
        ],
        vec!["template", "sync", "--tenant", &tenant],
    ] {
        let refused = cli.run(ta, &args)?;
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("PROVIDER_UNAVAILABLE"),
            "{args:?}: {stderr}"
        );
    }
    let reviewed = cli.ok(
        op,
        &[
            "--json",
            "template",
            "review",
            "--tenant",
            &tenant,
            "--id",
            &template_id,
            "--event",
            "APPROVED",
        ],
    )?;
    assert_eq!(field(&reviewed, "status")?, "APPROVED");
    let shown = cli.ok(
        ta,
        &[
            "--json",
            "template",
            "show",
            "--tenant",
            &tenant,
            "--id",
            &template_id,
        ],
    )?;
    assert_eq!(field(&shown, "status")?, "APPROVED");
    let keys = cli.ok(ta, &["key", "list", "--tenant", &tenant])?;
    assert!(
        keys.contains("admin") && !keys.contains(&tenant_admin[9..]),
        "keys listed without their secret"
    );

    // Errors are one line with the reason; the tenant key cannot touch the partner level.
    let refused = cli.run(
        ta,
        &[
            "tenant",
            "create",
            "--partner",
            &partner,
            "--id",
            &format!("{tenant}x"),
            "--name",
            "X",
        ],
    )?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: NOT_FOUND:"), "{stderr}");
    let no_key = cli.run(None, &["partner", "list"])?;
    assert!(!no_key.status.success(), "a key is required");

    // Limits: shown to anyone who sees the tenant, set only above it; an omitted flag keeps
    // its value, 0 goes back to the default.
    let limits = |out: &str| -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        Ok(v["limits"].clone())
    };
    let set = cli.ok(
        op,
        &[
            "--json", "tenant", "limits", "--id", &tenant, "--rate", "50", "--burst", "80",
            "--weight", "3",
        ],
    )?;
    assert_eq!(
        limits(&set)?,
        serde_json::json!({"send_rate_per_second": 50, "send_burst": 80, "weight": 3})
    );
    let kept = cli.ok(
        op,
        &[
            "--json", "tenant", "limits", "--id", &tenant, "--weight", "0",
        ],
    )?;
    assert_eq!(
        limits(&kept)?,
        serde_json::json!({"send_rate_per_second": 50, "send_burst": 80, "weight": 0})
    );
    let seen = cli.ok(ta, &["tenant", "limits", "--id", &tenant])?;
    assert!(seen.contains("rate 50/s burst 80 weight default"), "{seen}");
    let raised = cli.run(
        ta,
        &["tenant", "limits", "--id", &tenant, "--rate", "100000"],
    )?;
    assert!(
        !raised.status.success(),
        "a tenant cannot raise its own limits"
    );
    let stderr = String::from_utf8(raised.stderr)?;
    assert!(stderr.starts_with("error: PERMISSION_DENIED:"), "{stderr}");
    let bad = cli.run(
        op,
        &["tenant", "limits", "--id", &tenant, "--weight", "1000"],
    )?;
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(
        stderr.starts_with("error: INVALID_ARGUMENT:") && stderr.contains("weight"),
        "{stderr}"
    );
    accounts.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_top_up_wallet_quote_invoice_and_reconcile() -> anyhow::Result<()> {
    let scope = finestra_testkit::Scope::new();
    finestra_testkit::infra().await?;
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("clibill", 1).await?;
    let billing = finestra_testkit::start_billing(&scope, "billing").await?;
    let cli = Cli {
        bin: finestra_testkit::workspace_binary("finestra")?,
        endpoint: String::new(),
    };
    let partner = scope
        .key(
            finestra_platform::auth::Owner::Partner {
                partner_id: scope.partner_id(),
            },
            &[finestra_platform::auth::Scope::Admin],
        )
        .await?;
    let operator = scope
        .key(
            finestra_platform::auth::Owner::Operator,
            &[finestra_platform::auth::Scope::Admin],
        )
        .await?;
    let url = billing.running.grpc_url();
    let billing_args = |rest: &[&str]| {
        let mut a = vec!["billing", "--endpoint", url.as_str()];
        a.extend_from_slice(rest);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |key: &str, rest: &[&str]| -> anyhow::Result<Output> {
        let args = billing_args(rest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.run(Some(key), &refs)
    };
    let ok = |key: &str, rest: &[&str]| -> anyhow::Result<String> {
        let out = run(key, rest)?;
        anyhow::ensure!(
            out.status.success(),
            "{rest:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    for _ in 0..2 {
        // The same top-up id twice: credited once.
        ok(
            &partner,
            &[
                "top-up", "--tenant", &tenant, "--micros", "2500000", "--id", "pay-1",
            ],
        )?;
    }
    let wallet: serde_json::Value =
        serde_json::from_str(ok(&partner, &["--json", "wallet", "--tenant", &tenant])?.trim())?;
    assert_eq!(wallet["balance_micros"], 2_500_000);
    // No window with this user: a free-form message cannot be sent, so it has no price.
    let out = run(
        &partner,
        &[
            "quote",
            "--tenant",
            &tenant,
            "--phone-number-id",
            &number,
            "--user",
            "393471234567",
            "--free-form",
        ],
    )?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WINDOW_CLOSED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let month = chrono_month();
    let invoice = ok(
        &partner,
        &["invoice", "--tenant", &tenant, "--month", &month],
    )?;
    assert!(
        invoice.contains("top-ups this month: 2.500000 EUR"),
        "{invoice}"
    );
    let reconciled = ok(&operator, &["reconcile", "--tenant", &tenant])?;
    assert!(reconciled.contains("the books balance"), "{reconciled}");

    // A difference makes reconcile exit non-zero and name it.
    let pool = finestra_testkit::infra().await?.pool.clone();
    sqlx::query("UPDATE billing.wallets SET reserved = reserved + 7 WHERE tenant_id = $1")
        .bind(&tenant)
        .execute(&pool)
        .await?;
    let out = run(&operator, &["reconcile", "--tenant", &tenant])?;
    sqlx::query("UPDATE billing.wallets SET reserved = reserved - 7 WHERE tenant_id = $1")
        .bind(&tenant)
        .execute(&pool)
        .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reserved == open reservations"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A tenant key cannot top up its own wallet.
    let own = scope
        .tenant_key("clibill", &[finestra_platform::auth::Scope::Admin])
        .await?;
    let out = run(
        &own,
        &[
            "top-up", "--tenant", &tenant, "--micros", "1", "--id", "self",
        ],
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    billing.stop().await;
    Ok(())
}

fn chrono_month() -> String {
    let secs = finestra_testkit::now_secs();
    // Civil year and month of now (UTC).
    let days = secs.div_euclid(86_400) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}")
}
