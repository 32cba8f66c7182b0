//! Proves the books balance, per tenant, on one consistent Postgres snapshot:
//!   wallet balance        == Σ ledger amounts (top-ups − captured charges)
//!   wallet reserved       == Σ open reservations' prices
//!   Σ captured charges    == Σ prices of captured reservations, one charge entry each
//! and, where the tenant's hot wallet is cached, that Redis agrees with Postgres.

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::hot::HotWallets;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub tenant_id: String,
    pub check: &'static str,
    pub expected: i64,
    pub actual: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tenants_checked: u32,
    pub differences: Vec<Difference>,
    pub open_reservations: i64,
    pub captured_messages: i64,
    pub ledger_entries: i64,
}

#[derive(sqlx::FromRow)]
struct Books {
    tenant_id: String,
    balance: i64,
    reserved: i64,
    ledger_sum: i64,
    ledger_entries: i64,
    open_sum: i64,
    open_count: i64,
    captured_sum: i64,
    captured_count: i64,
    charged_sum: i64,
    charge_entries: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub async fn run(
    pool: &PgPool,
    hot: &HotWallets,
    tenant: Option<&str>,
) -> Result<Report, ReconcileError> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    // One tenant: every scan is an index range on its id. Every tenant: `<> ''` keeps the one
    // parameter (tenant ids are never empty).
    let filter = if tenant.is_some() {
        "tenant_id = $1"
    } else {
        "tenant_id <> $1"
    };
    let books: Vec<Books> = sqlx::query_as(&format!(
        "WITH tenants AS (
            SELECT tenant_id FROM billing.wallets WHERE {filter}
            UNION SELECT tenant_id FROM billing.reservations WHERE {filter}
            UNION SELECT tenant_id FROM billing.ledger WHERE {filter}
         )
         SELECT t.tenant_id,
                coalesce(w.balance, 0) AS balance, coalesce(w.reserved, 0) AS reserved,
                coalesce(l.sum, 0)::bigint AS ledger_sum, coalesce(l.entries, 0) AS ledger_entries,
                coalesce(l.charged, 0)::bigint AS charged_sum,
                coalesce(l.charges, 0) AS charge_entries,
                coalesce(r.open_sum, 0)::bigint AS open_sum, coalesce(r.open_count, 0) AS open_count,
                coalesce(r.captured_sum, 0)::bigint AS captured_sum,
                coalesce(r.captured_count, 0) AS captured_count
           FROM tenants t
           LEFT JOIN billing.wallets w USING (tenant_id)
           LEFT JOIN (SELECT tenant_id, sum(amount) AS sum, count(*) AS entries,
                             -sum(amount) FILTER (WHERE kind = 'charge') AS charged,
                             count(*) FILTER (WHERE kind = 'charge') AS charges
                        FROM billing.ledger WHERE {filter}
                       GROUP BY tenant_id) l USING (tenant_id)
           LEFT JOIN (SELECT tenant_id,
                             sum(price) FILTER (WHERE state = 'open') AS open_sum,
                             count(*) FILTER (WHERE state = 'open') AS open_count,
                             sum(price) FILTER (WHERE state = 'captured') AS captured_sum,
                             count(*) FILTER (WHERE state = 'captured') AS captured_count
                        FROM billing.reservations WHERE {filter}
                       GROUP BY tenant_id) r USING (tenant_id)
          ORDER BY t.tenant_id"
    ))
    .bind(tenant.unwrap_or(""))
    .fetch_all(&mut *tx)
    .await?;

    let mut report = Report::default();
    for b in &books {
        report.tenants_checked += 1;
        report.open_reservations += b.open_count;
        report.captured_messages += b.captured_count;
        report.ledger_entries += b.ledger_entries;
        let mut check = |check: &'static str, expected: i64, actual: i64| {
            if expected != actual {
                report.differences.push(Difference {
                    tenant_id: b.tenant_id.clone(),
                    check,
                    expected,
                    actual,
                });
            }
        };
        check(
            "balance == top-ups - captured charges",
            b.ledger_sum,
            b.balance,
        );
        check("reserved == open reservations", b.open_sum, b.reserved);
        check(
            "captured charges == priced delivered messages",
            b.captured_sum,
            b.charged_sum,
        );
        check(
            "one charge entry per captured message",
            b.captured_count,
            b.charge_entries,
        );
        let Some(cached) = hot.cached(&b.tenant_id).await? else {
            continue;
        };
        let open: BTreeMap<String, i64> = sqlx::query!(
            "SELECT message_id, price FROM billing.reservations
              WHERE tenant_id = $1 AND state = 'open' AND price > 0",
            &b.tenant_id,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.message_id, r.price))
        .collect();
        check(
            "redis balance == postgres balance",
            b.balance,
            cached.balance,
        );
        check(
            "redis reserved == postgres reserved",
            b.reserved,
            cached.reserved,
        );
        let differing = open
            .iter()
            .filter(|(m, p)| cached.open.get(*m) != Some(p))
            .count()
            + cached
                .open
                .keys()
                .filter(|m| !open.contains_key(*m))
                .count();
        check(
            "redis open reservations == postgres open reservations",
            0,
            differing as i64,
        );
    }
    tx.commit().await?;
    Ok(report)
}
