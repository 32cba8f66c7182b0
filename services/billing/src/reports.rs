//! Usage, invoices and the partner rollup, all read from the ledger's charge entries (free
//! messages are there at 0, so counts include them). Times are the delivery times, UTC.

use finestra_domain::Timestamp;
use sqlx::PgPool;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub phone_number_id: String,
    pub category: String,
    pub market: String,
    pub day: String,
    pub messages: i64,
    pub charged_messages: i64,
    pub cost: i64,
    pub price: i64,
}

/// Which dimensions to group by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub number: bool,
    pub category: bool,
    pub market: bool,
    pub day: bool,
}

impl GroupBy {
    /// From the request's names; an unknown one is returned as the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut g = Self::default();
        for name in names {
            match name {
                "number" => g.number = true,
                "category" => g.category = true,
                "market" => g.market = true,
                "day" => g.day = true,
                other => return Err(other.to_owned()),
            }
        }
        Ok(g)
    }
}

pub async fn usage(
    pool: &PgPool,
    tenant_id: &str,
    from: Timestamp,
    to: Timestamp,
    by: GroupBy,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    sqlx::query_as!(
        UsageRow,
        r#"SELECT CASE WHEN $4::boolean THEN phone_number_id ELSE '' END AS "phone_number_id!",
                CASE WHEN $5::boolean THEN category ELSE '' END AS "category!",
                CASE WHEN $6::boolean THEN market ELSE '' END AS "market!",
                CASE WHEN $7::boolean THEN to_char((timestamptz 'epoch' + occurred_at * interval '1 microsecond')
                                          AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                     ELSE '' END AS "day!",
                count(*) AS "messages!",
                count(*) FILTER (WHERE price > 0) AS "charged_messages!",
                coalesce(sum(cost), 0)::bigint AS "cost!",
                coalesce(sum(price), 0)::bigint AS "price!"
           FROM billing.ledger
          WHERE tenant_id = $1 AND kind = 'charge' AND occurred_at >= $2 AND occurred_at < $3
          GROUP BY 1, 2, 3, 4
          ORDER BY 1, 2, 3, 4"#,
        tenant_id,
        from.micros(),
        to.micros(),
        by.number,
        by.category,
        by.market,
        by.day,
    )
    .fetch_all(pool)
    .await
}

pub use finestra_domain::time::month_range;

/// Top-ups credited in [from, to).
pub async fn top_ups(
    pool: &PgPool,
    tenant_id: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<i64, sqlx::Error> {
    let sum: i64 = sqlx::query_scalar!(
        r#"SELECT coalesce(sum(amount), 0)::bigint AS "sum!" FROM billing.ledger
          WHERE tenant_id = $1 AND kind = 'top_up' AND occurred_at >= $2 AND occurred_at < $3"#,
        tenant_id,
        from.micros(),
        to.micros(),
    )
    .fetch_one(pool)
    .await?;
    Ok(sum)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupRow {
    pub tenant_id: String,
    pub messages: i64,
    pub charged_messages: i64,
    pub cost: i64,
    pub price: i64,
}

/// Every tenant of the partner with charges in [from, to).
pub async fn partner_rollup(
    pool: &PgPool,
    partner_id: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<RollupRow>, sqlx::Error> {
    // The partner's tenants come from the accounts schema's read model, not a join into it.
    let tenants = finestra_registry::partner_tenant_ids(pool, partner_id).await?;
    sqlx::query_as!(
        RollupRow,
        r#"SELECT l.tenant_id, count(*) AS "messages!",
                count(*) FILTER (WHERE l.price > 0) AS "charged_messages!",
                coalesce(sum(l.cost), 0)::bigint AS "cost!",
                coalesce(sum(l.price), 0)::bigint AS "price!"
           FROM billing.ledger l
          WHERE l.tenant_id = ANY($1::text[]) AND l.kind = 'charge'
            AND l.occurred_at >= $2 AND l.occurred_at < $3
          GROUP BY l.tenant_id ORDER BY l.tenant_id"#,
        &tenants,
        from.micros(),
        to.micros(),
    )
    .fetch_all(pool)
    .await
}

/// Micro-units as a decimal amount (`1234567` → `1.234567`), for CSV.
pub fn decimal(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// The invoice lines as CSV (RFC 4180; the fields never need quoting: codes and numbers).
pub fn invoice_csv(tenant_id: &str, month: &str, currency: &str, lines: &[UsageRow]) -> String {
    let mut out = String::from(
        "tenant_id,month,category,market,messages,charged_messages,currency,cost,price\n",
    );
    for l in lines {
        out.push_str(&format!(
            "{tenant_id},{month},{},{},{},{},{currency},{},{}\n",
            l.category,
            l.market,
            l.messages,
            l.charged_messages,
            decimal(l.cost),
            decimal(l.price)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_decimals() {
        let (a, b) = month_range("2026-02").expect("valid month");
        assert_eq!(a, Timestamp::from_secs(1_769_904_000));
        assert_eq!(b.micros() - a.micros(), 28 * 86_400 * 1_000_000);
        let (_, dec_end) = month_range("2025-12").expect("valid month");
        assert_eq!(dec_end, Timestamp::from_secs(1_767_225_600), "2026-01-01");
        assert!(month_range("2026-13").is_none());
        assert!(month_range("2026-1").is_none());
        assert_eq!(decimal(69_100), "0.069100");
        assert_eq!(decimal(-1_234_567), "-1.234567");
    }

    #[test]
    fn group_by_names() {
        assert_eq!(
            GroupBy::parse(["day", "market"]),
            Ok(GroupBy {
                day: true,
                market: true,
                ..GroupBy::default()
            })
        );
        assert_eq!(GroupBy::parse(["week"]), Err("week".into()));
    }
}
