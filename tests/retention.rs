//! `finestra ops retention` on a database of its own (it drops whole months of every tenant,
//! so it never runs on the database the other tests share): old months of the history tables
//! go, recent ones stay, the ledger keeps its balance through the carried-forward adjustment,
//! an old top-up id still cannot credit twice, and a second run changes nothing.

use std::process::Command;

use finestra_domain::Timestamp;
use finestra_platform::partitions::{self, HISTORY, Month};
use finestra_testkit::Scope;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

struct OwnDatabase {
    name: String,
    admin: sqlx::PgPool,
    pool: sqlx::PgPool,
}

impl OwnDatabase {
    async fn create(scope: &Scope) -> anyhow::Result<Self> {
        let name = format!("finestra_retention_{}", scope.id());
        let admin = sqlx::PgPool::connect(&format!("{SERVER}/postgres")).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        let pool = sqlx::PgPool::connect(&format!("{SERVER}/{name}")).await?;
        finestra_registry::migrate(&pool).await?;
        finestra_window::pg::migrate(&pool).await?;
        finestra_billing::pg::migrate(&pool).await?;
        finestra_dispatch::pg::migrate(&pool).await?;
        Ok(Self { name, admin, pool })
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }

    async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await?;
        Ok(())
    }
}

fn message(tenant: &str, id: &str, accepted_at: i64) -> finestra_dispatch::pg::NewMessage {
    finestra_dispatch::pg::NewMessage {
        tenant_id: tenant.into(),
        message_id: id.into(),
        idempotency_key: id.into(),
        request_hash: vec![1, 2, 3],
        phone_number_id: "pn1".into(),
        recipient: "393331234567".into(),
        kind: "text".into(),
        template_name: String::new(),
        category: "SERVICE".into(),
        body: "{}".into(),
        price_micros: 0,
        currency: "EUR".into(),
        free: true,
        free_reason: "csw".into(),
        business_initiated: false,
        starts_fep: false,
        accepted_at,
    }
}

async fn count(pool: &sqlx::PgPool, sql: &str, tenant: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(tenant).fetch_one(pool).await?)
}

async fn ledger_and_balance(pool: &sqlx::PgPool, tenant: &str) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT coalesce(sum(amount), 0)::bigint FROM billing.ledger WHERE tenant_id = $1),
                (SELECT balance FROM billing.wallets WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?)
}

fn retention(db: &OwnDatabase, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(finestra_testkit::workspace_binary("finestra")?)
        .args(["ops", "retention"])
        .args(args)
        .env("FINESTRA_DATABASE_URL", db.url())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "retention failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_old_months_and_the_books_still_balance() -> anyhow::Result<()> {
    let scope = Scope::new();
    let db = OwnDatabase::create(&scope).await?;
    let pool = &db.pool;
    let tenant = scope.tenant_id("shop");
    let now = finestra_testkit::now_secs() * 1_000_000;
    let old_month = Month::of_micros(now).plus(-14);
    let old = old_month.start_micros() + 3_600_000_000;
    for table in HISTORY.iter() {
        partitions::ensure(pool, table, old_month, old_month).await?;
    }

    // Fourteen months ago and now: messages, tenant events, window events, top-ups.
    finestra_dispatch::pg::insert(
        pool,
        &[
            message(&tenant, "m_old", old),
            message(&tenant, "m_new", now),
        ],
    )
    .await?;
    for (seq, at) in [(1i64, old), (2, now)] {
        sqlx::query(
            "INSERT INTO dispatch.tenant_events (tenant_id, seq, event_id, kind, occurred_at, envelope)
             VALUES ($1, $2, $3, 'message_status', $4, '\\x00')",
        )
        .bind(&tenant)
        .bind(seq)
        .bind(format!("ev-{seq}"))
        .bind(at)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO windows.window_events (tenant_id, event_id, occurred_at, phone_number_id, user_key, kind)
             VALUES ($1, $2, timestamptz 'epoch' + $3 * interval '1 microsecond', 'pn1', 'u1', 'user_message')",
        )
        .bind(&tenant)
        .bind(format!("in-{seq}"))
        .bind(at)
        .execute(pool)
        .await?;
    }
    let at = |micros| Timestamp::from_micros(micros);
    finestra_billing::pg::top_up(pool, &tenant, "pay-old", 1_000_000, "EUR", "", at(old)).await?;
    finestra_billing::pg::top_up(pool, &tenant, "pay-new", 500_000, "EUR", "", at(now)).await?;
    let before = ledger_and_balance(pool, &tenant).await?;
    assert_eq!(before, (1_500_000, 1_500_000));

    // The history keeps 12 months: the old month goes everywhere, ledger included (asked for).
    let dry = retention(
        &db,
        &[
            "--keep-months",
            "12",
            "--ledger-keep-months",
            "12",
            "--dry-run",
        ],
    )?;
    assert!(dry.contains("would drop 1 monthly partition"), "{dry}");
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM dispatch.messages WHERE tenant_id = $1",
            &tenant
        )
        .await?,
        2,
        "a dry run drops nothing"
    );
    let out = retention(&db, &["--keep-months", "12", "--ledger-keep-months", "12"])?;
    for table in HISTORY.iter() {
        let gone: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!(
                "{}.{}",
                table.schema,
                old_month.partition_name(table.table)
            ))
            .fetch_one(pool)
            .await?;
        assert_eq!(
            gone, None,
            "{}.{} of {old_month:?} is dropped:\n{out}",
            table.schema, table.table
        );
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM dispatch.messages WHERE tenant_id = $1")
            .bind(&tenant)
            .fetch_all(pool)
            .await?;
    assert_eq!(ids, vec!["m_new".to_owned()]);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM dispatch.message_keys WHERE tenant_id = $1",
            &tenant
        )
        .await?,
        1,
        "the old message's key goes with it"
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM dispatch.tenant_events WHERE tenant_id = $1",
            &tenant
        )
        .await?,
        1
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM windows.window_events WHERE tenant_id = $1",
            &tenant
        )
        .await?,
        1
    );

    // The books: the old top-up became one carried adjustment; the sum still is the balance.
    assert_eq!(ledger_and_balance(pool, &tenant).await?, before);
    let entries: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, reference, amount FROM billing.ledger WHERE tenant_id = $1 ORDER BY occurred_at",
    )
    .bind(&tenant)
    .fetch_all(pool)
    .await?;
    let first_kept = partitions::first_kept(now, 12);
    assert_eq!(
        entries,
        vec![
            (
                "adjustment".to_owned(),
                format!("carried:{:04}-{:02}", first_kept.year, first_kept.month),
                1_000_000
            ),
            ("top_up".to_owned(), "pay-new".to_owned(), 500_000),
        ]
    );
    // The old top-up's id is still known: repeating it credits nothing.
    let wallet =
        finestra_billing::pg::top_up(pool, &tenant, "pay-old", 1_000_000, "EUR", "", at(now))
            .await?;
    assert_eq!(wallet.balance, 1_500_000);

    // Without --ledger-keep-months the ledger is left alone; a second run drops nothing more.
    let again = retention(&db, &["--keep-months", "12"])?;
    assert!(again.contains("billing.ledger: kept forever"), "{again}");
    assert!(!again.contains("dropped 1"), "{again}");
    assert_eq!(ledger_and_balance(pool, &tenant).await?, before);
    db.drop().await?;
    Ok(())
}
