//! Monthly partitions of the history tables, and retention by dropping whole months.
//!
//! Each history table is `PARTITION BY RANGE` of one time column, with one partition per
//! calendar month (UTC) named `<table>_YYYY_MM` and a `<table>_default` for anything outside
//! them. Services create the partitions of the months around now when they start; `finestra ops
//! retention --keep-months N` drops the months before the N most recent. Dropping a partition is
//! instant and leaves no bloat, which deleting rows would.

use sqlx::PgPool;

/// How a table's partition key stores time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `timestamptz`.
    Timestamp,
    /// `bigint` microseconds since the Unix epoch.
    Micros,
}

/// A table partitioned by month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Monthly {
    pub schema: &'static str,
    pub table: &'static str,
    /// The partition key.
    pub column: &'static str,
    pub key: Key,
    /// The books: kept unless retention is asked for it by name.
    pub books: bool,
}

/// Every partitioned history table of Finestra.
pub const HISTORY: [Monthly; 5] = [
    Monthly {
        schema: "windows",
        table: "window_events",
        column: "occurred_at",
        key: Key::Timestamp,
        books: false,
    },
    Monthly {
        schema: "dispatch",
        table: "messages",
        column: "accepted_at",
        key: Key::Micros,
        books: false,
    },
    Monthly {
        schema: "dispatch",
        table: "tenant_events",
        column: "occurred_at",
        key: Key::Micros,
        books: false,
    },
    Monthly {
        schema: "dispatch",
        table: "webhook_deliveries",
        column: "first_at",
        key: Key::Micros,
        books: false,
    },
    Monthly {
        schema: "billing",
        table: "ledger",
        column: "occurred_at",
        key: Key::Micros,
        books: true,
    },
];

/// A calendar month, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    /// 1..=12.
    pub month: u32,
}

impl Month {
    /// The month holding `micros` since the epoch.
    pub fn of_micros(micros: i64) -> Self {
        let days = micros.div_euclid(86_400_000_000);
        let (year, month, _) = civil_from_days(days);
        Self { year, month }
    }

    pub fn plus(self, months: i32) -> Self {
        let index = self.year * 12 + (self.month as i32 - 1) + months;
        Self {
            year: index.div_euclid(12),
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    /// Microseconds since the epoch at 00:00 UTC of the month's first day.
    pub fn start_micros(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * 86_400_000_000
    }

    /// `YYYY-MM-01`, as Postgres reads a date.
    pub fn first_day(self) -> String {
        format!("{:04}-{:02}-01", self.year, self.month)
    }

    pub fn partition_name(self, table: &str) -> String {
        format!("{table}_{:04}_{:02}", self.year, self.month)
    }

    /// The month a partition of `table` holds, from its name (`None` for the default one or a
    /// name of another shape).
    pub fn from_partition_name(table: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix(table)?.strip_prefix('_')?;
        let (y, m) = rest.split_once('_')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let month: u32 = m.parse().ok()?;
        (1..=12).contains(&month).then_some(Self {
            year: y.parse().ok()?,
            month,
        })
    }
}

/// The first month kept when the `keep` most recent months (the current one included) stay.
pub fn first_kept(now_micros: i64, keep: u32) -> Month {
    Month::of_micros(now_micros).plus(1 - keep.max(1) as i32)
}

// Howard Hinnant's civil-from-days and days-from-civil (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn bound(table: &Monthly, month: Month) -> String {
    match table.key {
        Key::Timestamp => format!("'{} 00:00:00+00'", month.first_day()),
        Key::Micros => month.start_micros().to_string(),
    }
}

/// Creates the partitions of `table` for the months `from..=to` that are missing. A month the
/// default partition already holds rows of is left there (with a warning): Postgres refuses a
/// partition that would take rows from the default.
pub async fn ensure(
    pool: &PgPool,
    table: &Monthly,
    from: Month,
    to: Month,
) -> Result<(), sqlx::Error> {
    let mut month = from;
    while month <= to {
        let name = month.partition_name(table.table);
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{name} PARTITION OF {schema}.{parent} \
             FOR VALUES FROM ({lo}) TO ({hi})",
            schema = table.schema,
            parent = table.table,
            lo = bound(table, month),
            hi = bound(table, month.plus(1)),
        );
        match sqlx::query(&sql).execute(pool).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P07") || e.code().as_deref() == Some("23505") =>
            {
                // Another process created it at the same moment.
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
                tracing::warn!(partition = %name, "not created: the default partition holds rows of that month");
            }
            Err(e) => return Err(e),
        }
        month = month.plus(1);
    }
    Ok(())
}

/// Creates last month's, this month's and the next `ahead` months' partitions of every
/// history table in `schema`. Services call it at start (and may call it daily).
pub async fn ensure_around(
    pool: &PgPool,
    schema: &str,
    now_micros: i64,
    ahead: u32,
) -> Result<(), sqlx::Error> {
    let now = Month::of_micros(now_micros);
    for table in HISTORY.iter().filter(|t| t.schema == schema) {
        ensure(pool, table, now.plus(-1), now.plus(ahead as i32)).await?;
    }
    Ok(())
}

/// Moves the rows of `<table>_unpartitioned` (what the migration that partitioned `table`
/// renamed the old table to) into the partitions of their months, then drops it, in one
/// transaction; returns how many rows moved. Nothing to do once it is gone.
pub async fn adopt(pool: &PgPool, table: &Monthly) -> Result<u64, sqlx::Error> {
    let old = format!("{}.{}_unpartitioned", table.schema, table.table);
    // Whether the table exists (its name, or NULL).
    let found: Option<String> = sqlx::query_scalar!("SELECT to_regclass($1)::text", &old)
        .fetch_one(pool)
        .await?;
    if found.is_none() {
        return Ok(0);
    }
    match move_rows(pool, table, &old).await {
        // Replicas (and test processes) start together: one adopts, the others find the
        // table gone (42P01, undefined_table) once it has.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(0),
        other => other,
    }
}

/// [`adopt`]'s work, once `old` was seen: under a lock, so that one process moves the rows.
async fn move_rows(pool: &PgPool, table: &Monthly, old: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", old)
        .execute(&mut *tx)
        .await?;
    let found: Option<String> = sqlx::query_scalar!("SELECT to_regclass($1)::text", old)
        .fetch_one(&mut *tx)
        .await?;
    if found.is_none() {
        return Ok(0);
    }
    let micros = match table.key {
        Key::Timestamp => format!(
            "(extract(epoch FROM {{}}({}))::float8 * 1e6)::bigint",
            table.column
        ),
        Key::Micros => format!("{{}}({})", table.column),
    };
    let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
        "SELECT {}, {} FROM {old}",
        micros.replace("{}", "min"),
        micros.replace("{}", "max")
    ))
    .fetch_one(&mut *tx)
    .await?;
    if let (Some(lo), Some(hi)) = (lo, hi) {
        ensure(pool, table, Month::of_micros(lo), Month::of_micros(hi)).await?;
    }
    let moved = sqlx::query(&format!(
        "INSERT INTO {}.{} SELECT * FROM {old}",
        table.schema, table.table
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(&format!("DROP TABLE {old}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(table = %format!("{}.{}", table.schema, table.table), moved, "rows moved into monthly partitions");
    Ok(moved)
}

/// Partitions `schema`'s history tables need now: rows of an old, unpartitioned table moved
/// in, and last month's to `ahead` months ahead created. For a service's `migrate` and start.
pub async fn prepare(
    pool: &PgPool,
    schema: &str,
    now_micros: i64,
    ahead: u32,
) -> Result<(), sqlx::Error> {
    for table in HISTORY.iter().filter(|t| t.schema == schema) {
        adopt(pool, table).await?;
    }
    ensure_around(pool, schema, now_micros, ahead).await
}

/// The monthly partitions of `table` that exist, oldest first.
pub async fn months(pool: &PgPool, table: &Monthly) -> Result<Vec<Month>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "relname!" FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           JOIN pg_namespace n ON n.oid = p.relnamespace
          WHERE n.nspname = $1 AND p.relname = $2"#,
        table.schema,
        table.table
    )
    .fetch_all(pool)
    .await?;
    let mut months: Vec<Month> = names
        .iter()
        .filter_map(|n| Month::from_partition_name(table.table, n))
        .collect();
    months.sort();
    Ok(months)
}

/// Drops the partitions of `table` holding months before `first_kept`; returns their names.
/// With `dry_run` nothing is dropped.
pub async fn drop_before(
    pool: &PgPool,
    table: &Monthly,
    first_kept: Month,
    dry_run: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let mut dropped = Vec::new();
    for month in months(pool, table).await? {
        if month >= first_kept {
            continue;
        }
        let name = month.partition_name(table.table);
        if !dry_run {
            sqlx::query(&format!("DROP TABLE IF EXISTS {}.{name}", table.schema))
                .execute(pool)
                .await?;
        }
        dropped.push(format!("{}.{name}", table.schema));
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month(year: i32, month: u32) -> Month {
        Month { year, month }
    }

    #[test]
    fn months_follow_the_calendar() {
        // 2026-11-25T12:00:00Z
        let now = 1_795_608_000_000_000;
        assert_eq!(Month::of_micros(now), month(2026, 11));
        assert_eq!(month(2026, 11).plus(2), month(2027, 1));
        assert_eq!(month(2026, 1).plus(-1), month(2025, 12));
        assert_eq!(month(2026, 3).plus(-27), month(2023, 12));
        assert_eq!(month(1970, 1).start_micros(), 0);
        assert_eq!(month(2026, 12).start_micros(), 1_796_083_200_000_000);
        // The last microsecond of a month belongs to it, the next one to the next month.
        let dec = month(2026, 12).start_micros();
        assert_eq!(Month::of_micros(dec - 1), month(2026, 11));
        assert_eq!(Month::of_micros(dec), month(2026, 12));
        assert_eq!(Month::of_micros(-1), month(1969, 12));
    }

    #[test]
    fn every_month_starts_where_the_previous_one_ends() {
        let mut m = month(1999, 1);
        while m < month(2101, 1) {
            let next = m.plus(1);
            assert_eq!(Month::of_micros(next.start_micros() - 1), m);
            assert_eq!(Month::of_micros(next.start_micros()), next);
            m = next;
        }
    }

    #[test]
    fn partition_names_round_trip() {
        let m = month(2026, 7);
        assert_eq!(m.partition_name("messages"), "messages_2026_07");
        assert_eq!(
            Month::from_partition_name("messages", "messages_2026_07"),
            Some(m)
        );
        assert_eq!(
            Month::from_partition_name("messages", "messages_default"),
            None
        );
        assert_eq!(
            Month::from_partition_name("messages", "messages_2026_13"),
            None
        );
        assert_eq!(
            Month::from_partition_name("tenant_events", "messages_2026_07"),
            None
        );
    }

    #[test]
    fn keeping_n_months_keeps_the_current_one_and_n_minus_one_before() {
        let now = month(2026, 11).start_micros() + 5;
        assert_eq!(first_kept(now, 1), month(2026, 11));
        assert_eq!(first_kept(now, 3), month(2026, 9));
        assert_eq!(first_kept(now, 12), month(2025, 12));
        // 0 would drop the current month: it means 1.
        assert_eq!(first_kept(now, 0), month(2026, 11));
    }
}
