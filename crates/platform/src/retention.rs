//! Retention of the history tables (`finestra ops retention`): whole months are dropped, never
//! rows deleted one by one. The ledger is the books and is kept forever unless the operator
//! names a period for it; dropping its old months first carries each tenant's balance of those
//! months forward as one `adjustment` entry (and forgets the reservations settled then), so
//! `balance == Σ ledger` and every reconcile check still hold afterwards.

use sqlx::PgPool;

use crate::partitions::{self, HISTORY, Month, Monthly};

/// What to keep.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Months of history kept, the current one included (at least 1).
    pub keep_months: u32,
    /// Months of ledger kept; `None` keeps the ledger forever.
    pub ledger_keep_months: Option<u32>,
    /// Report what would be dropped, drop nothing.
    pub dry_run: bool,
}

/// What one table lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub table: String,
    pub first_kept: Month,
    pub partitions: Vec<String>,
    /// Rows older than the first kept month found in the default partition (deleted).
    pub default_rows: u64,
}

/// Applies `policy` at `now_micros`; also creates the partitions of the coming months, so a
/// monthly run (a CronJob) keeps the tables ready.
pub async fn run(
    pool: &PgPool,
    policy: Policy,
    now_micros: i64,
) -> Result<Vec<Dropped>, sqlx::Error> {
    let mut report = Vec::new();
    for table in HISTORY.iter() {
        let keep = if table.books {
            match policy.ledger_keep_months {
                Some(months) => months,
                None => continue,
            }
        } else {
            policy.keep_months
        };
        if !exists(pool, table).await? {
            continue;
        }
        let now = Month::of_micros(now_micros);
        if !policy.dry_run {
            partitions::ensure(pool, table, now, now.plus(3)).await?;
        }
        let first_kept = partitions::first_kept(now_micros, keep);
        let dropped = if table.books {
            drop_books_before(pool, table, first_kept, policy.dry_run).await?
        } else {
            drop_history_before(pool, table, first_kept, policy.dry_run).await?
        };
        report.push(dropped);
    }
    Ok(report)
}

async fn exists(pool: &PgPool, table: &Monthly) -> Result<bool, sqlx::Error> {
    let qualified = format!("{}.{}", table.schema, table.table);
    let name: Option<String> = sqlx::query_scalar!("SELECT to_regclass($1)::text", &qualified)
        .fetch_one(pool)
        .await?;
    Ok(name.is_some())
}

/// `col < first kept month`, in the column's own unit.
fn older_than(table: &Monthly, first_kept: Month) -> String {
    match table.key {
        partitions::Key::Timestamp => format!(
            "{} < timestamptz '{} 00:00:00+00'",
            table.column,
            first_kept.first_day()
        ),
        partitions::Key::Micros => format!("{} < {}", table.column, first_kept.start_micros()),
    }
}

async fn drop_history_before(
    pool: &PgPool,
    table: &Monthly,
    first_kept: Month,
    dry_run: bool,
) -> Result<Dropped, sqlx::Error> {
    let default = format!("{}.{}_default", table.schema, table.table);
    let old = older_than(table, first_kept);
    let default_rows = if dry_run {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {default} WHERE {old}"))
            .fetch_one(pool)
            .await? as u64
    } else {
        sqlx::query(&format!("DELETE FROM {default} WHERE {old}"))
            .execute(pool)
            .await?
            .rows_affected()
    };
    let partitions = partitions::drop_before(pool, table, first_kept, dry_run).await?;
    if !dry_run && table.schema == "dispatch" && table.table == "messages" {
        // A key older than the messages kept may name a new message again.
        sqlx::query!(
            "DELETE FROM dispatch.message_keys WHERE accepted_at < $1",
            first_kept.start_micros()
        )
        .execute(pool)
        .await?;
    }
    Ok(Dropped {
        table: format!("{}.{}", table.schema, table.table),
        first_kept,
        partitions,
        default_rows,
    })
}

/// The ledger's old months, in one transaction: each tenant's sum of them becomes one
/// `adjustment` at the first kept month (reference `carried:<YYYY-MM>`), the reservations
/// settled before it are forgotten (their charges are in the months dropped), then the
/// months go.
async fn drop_books_before(
    pool: &PgPool,
    table: &Monthly,
    first_kept: Month,
    dry_run: bool,
) -> Result<Dropped, sqlx::Error> {
    let cutoff = first_kept.start_micros();
    let mut tx = pool.begin().await?;
    let default_rows: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM billing.ledger_default WHERE occurred_at < $1"#,
        cutoff
    )
    .fetch_one(&mut *tx)
    .await?;
    let months: Vec<Month> = partitions::months(pool, table)
        .await?
        .into_iter()
        .filter(|m| *m < first_kept)
        .collect();
    let names: Vec<String> = months
        .iter()
        .map(|m| format!("billing.{}", m.partition_name(table.table)))
        .collect();
    if dry_run {
        return Ok(Dropped {
            table: "billing.ledger".into(),
            first_kept,
            partitions: names,
            default_rows: default_rows as u64,
        });
    }
    let reference = format!("carried:{:04}-{:02}", first_kept.year, first_kept.month);
    let first_day = first_kept.first_day();
    sqlx::query!(
        "WITH sums AS (
            SELECT tenant_id, min(currency) AS currency, sum(amount)::bigint AS amount
              FROM billing.ledger WHERE occurred_at < $1 GROUP BY tenant_id
         ), keyed AS (
            INSERT INTO billing.ledger_keys (tenant_id, reference, kind)
            SELECT tenant_id, $2::text, 'adjustment' FROM sums
            ON CONFLICT DO NOTHING RETURNING tenant_id
         )
         INSERT INTO billing.ledger (tenant_id, reference, kind, amount, currency, note, occurred_at)
         SELECT s.tenant_id, $2::text, 'adjustment', s.amount, s.currency,
                'balance of the months before ' || $3::text || ', carried forward by retention', $1
           FROM sums s JOIN keyed k USING (tenant_id)",
        cutoff,
        &reference,
        &first_day
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM billing.reservations WHERE state <> 'open' AND ended_at < $1",
        cutoff
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM billing.ledger_default WHERE occurred_at < $1",
        cutoff
    )
    .execute(&mut *tx)
    .await?;
    for name in &names {
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Dropped {
        table: "billing.ledger".into(),
        first_kept,
        partitions: names,
        default_rows: default_rows as u64,
    })
}
