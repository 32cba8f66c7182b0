//! The `billing` schema: rate cards, markups and wallets (reservations and the ledger are in
//! `reservations`, reports in `reports`).

use finestra_domain::Timestamp;
use finestra_domain::pricing::{self, Markup, MarkupPlan, Micros, RateBook, RateCard};
use sqlx::PgPool;

pub const SCHEMA: &str = "billing";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Migrations whose file was edited in its comments only after it had been applied, with the
/// checksum it was applied under: a database holding that checksum takes the file's new one
/// (the SQL is the same), instead of refusing to start.
const RESTATED: [(i64, &str); 1] = [(
    1,
    "5d27a967d75ed650b5afff5990d2c342c5cb19259a0f243468cb3c044b70fb778a558a37b7e39cb7b328c3e6541f74e6",
)];

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    restate_checksums(pool).await?;
    finestra_platform::stores::migrate_schema(pool, SCHEMA, &MIGRATOR).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    // The ledger's monthly partitions around now (and the rows of the ledger from before
    // partitioning moved in).
    finestra_platform::partitions::prepare(pool, SCHEMA, now, 3).await
}

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Syntax(#[from] pricing::CardSyntaxError),
    #[error(transparent)]
    Pricing(#[from] pricing::PricingError),
    #[error("a new card must start after {0} (the newest card, and now plus the reload margin)")]
    TooEarly(Timestamp),
    #[error("the card's currency {card} differs from the wallets' {wallets}")]
    Currency { card: String, wallets: String },
    #[error("a card with version {0} exists")]
    DuplicateVersion(String),
    #[error("no rate card has version {0}")]
    NoSuchCard(String),
    #[error(
        "the card starts at {starts}, not after {floor}: a card that may have priced a message stays"
    )]
    Started { starts: Timestamp, floor: Timestamp },
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

async fn restate_checksums(pool: &PgPool) -> Result<(), sqlx::Error> {
    let applied: Option<String> = sqlx::query_scalar!(
        r#"SELECT to_regclass('billing._sqlx_migrations')::text AS "applied?""#
    )
    .fetch_one(pool)
    .await?;
    if applied.is_none() {
        return Ok(());
    }
    for (version, old) in RESTATED {
        let Some(current) = MIGRATOR.iter().find(|m| m.version == version) else {
            continue;
        };
        // Stays a runtime query: `_sqlx_migrations` is made by the migrator at run time, so the
        // schema the checked queries are described against (scripts/sqlx-prepare.sh) lacks it.
        sqlx::query(
            "UPDATE billing._sqlx_migrations SET checksum = $3
              WHERE version = $1 AND encode(checksum, 'hex') = $2",
        )
        .bind(version)
        .bind(old)
        .bind(current.checksum.as_ref())
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Stores the shipped default card unless the book has one already.
pub async fn ensure_default_card(pool: &PgPool) -> Result<(), CardError> {
    let card = pricing::parse_card(pricing::DEFAULT_CARD)?;
    sqlx::query!(
        "INSERT INTO billing.rate_cards (version, effective_from, currency, source)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &card.version,
        card.effective_from.micros(),
        &card.currency,
        pricing::DEFAULT_CARD,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Every card, oldest first.
pub async fn load_book(pool: &PgPool) -> Result<(RateBook, Vec<RateCard>), CardError> {
    let sources: Vec<String> =
        sqlx::query_scalar!("SELECT source FROM billing.rate_cards ORDER BY effective_from")
            .fetch_all(pool)
            .await?;
    let cards = sources
        .iter()
        .map(String::as_str)
        .map(pricing::parse_card)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((RateBook::new(cards.clone())?, cards))
}

/// Appends a card. It must start after every existing card and no earlier than
/// `not_before` (now plus the time every replica needs to load it), in the same currency.
pub async fn add_card(
    pool: &PgPool,
    source: &str,
    not_before: Timestamp,
) -> Result<RateCard, CardError> {
    let card = pricing::parse_card(source)?;
    let mut tx = pool.begin().await?;
    // Serialises appends so two concurrent ones cannot both pass the "newest" check.
    sqlx::query!("LOCK TABLE billing.rate_cards IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let newest = sqlx::query!(
        "SELECT effective_from, currency FROM billing.rate_cards
         ORDER BY effective_from DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let floor = newest.as_ref().map_or(not_before, |n| {
        Timestamp::from_micros(n.effective_from).max(not_before)
    });
    if card.effective_from <= floor {
        return Err(CardError::TooEarly(floor));
    }
    if let Some(n) = &newest
        && n.currency != card.currency
    {
        return Err(CardError::Currency {
            card: card.currency.clone(),
            wallets: n.currency.clone(),
        });
    }
    let inserted = sqlx::query!(
        "INSERT INTO billing.rate_cards (version, effective_from, currency, source)
         VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
        &card.version,
        card.effective_from.micros(),
        &card.currency,
        source,
    )
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(CardError::DuplicateVersion(card.version));
    }
    tx.commit().await?;
    Ok(card)
}

/// Withdraws the card `version`, which must start after `not_before` (now plus the reload
/// margin: no replica has priced with it), keeping it with `by` and `reason` in
/// `rate_card_withdrawals`.
pub async fn withdraw_card(
    pool: &PgPool,
    version: &str,
    not_before: Timestamp,
    by: &str,
    reason: &str,
) -> Result<RateCard, CardError> {
    let mut tx = pool.begin().await?;
    // Serialises with appends, which check the newest card.
    sqlx::query!("LOCK TABLE billing.rate_cards IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let found = sqlx::query!(
        "SELECT effective_from, source FROM billing.rate_cards WHERE version = $1",
        version,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(found) = found else {
        return Err(CardError::NoSuchCard(version.to_owned()));
    };
    let (effective_from, source) = (found.effective_from, found.source);
    let starts = Timestamp::from_micros(effective_from);
    if starts <= not_before {
        return Err(CardError::Started {
            starts,
            floor: not_before,
        });
    }
    let card = pricing::parse_card(&source)?;
    sqlx::query!(
        "WITH gone AS (DELETE FROM billing.rate_cards WHERE version = $1 RETURNING *)
         INSERT INTO billing.rate_card_withdrawals
             (version, effective_from, currency, source, added_at, withdrawn_by, reason)
         SELECT version, effective_from, currency, source, created_at, $2::text, $3::text FROM gone",
        version,
        by,
        reason,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(card)
}

/// The partner's markups ('*' is the default).
pub async fn markups(pool: &PgPool, partner_id: &str) -> Result<MarkupPlan, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT category, basis_points, fixed_micros FROM billing.markups WHERE partner_id = $1",
        partner_id,
    )
    .fetch_all(pool)
    .await?;
    let mut plan = MarkupPlan::default();
    for row in rows {
        let (category, bp, fixed) = (row.category, row.basis_points, row.fixed_micros);
        let markup = if bp > 0 {
            Markup::BasisPoints(u32::try_from(bp).unwrap_or(0))
        } else if fixed > 0 {
            Markup::Fixed(fixed)
        } else {
            Markup::None
        };
        if category == "*" {
            plan.default = markup;
        } else {
            plan.per_category.insert(category, markup);
        }
    }
    Ok(plan)
}

pub async fn set_markup(
    pool: &PgPool,
    partner_id: &str,
    category: &str,
    basis_points: u32,
    fixed: Micros,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO billing.markups (partner_id, category, basis_points, fixed_micros)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (partner_id, category) DO UPDATE
           SET basis_points = excluded.basis_points, fixed_micros = excluded.fixed_micros",
        partner_id,
        category,
        i32::try_from(basis_points).unwrap_or(i32::MAX),
        fixed,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalletRow {
    pub balance: i64,
    pub credit_limit: i64,
    pub reserved: i64,
    pub low_balance_threshold: i64,
}

impl WalletRow {
    pub fn available(&self) -> Micros {
        self.balance
            .saturating_add(self.credit_limit)
            .saturating_sub(self.reserved)
    }
}

/// The wallet (all zero when the tenant never had one).
pub async fn wallet(pool: &PgPool, tenant_id: &str) -> Result<WalletRow, sqlx::Error> {
    Ok(sqlx::query_as!(
        WalletRow,
        "SELECT balance, credit_limit, reserved, low_balance_threshold
         FROM billing.wallets WHERE tenant_id = $1",
        tenant_id,
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or_default())
}

/// Credits a top-up once per `top_up_id` (a ledger entry, and the balance with it).
pub async fn top_up(
    pool: &PgPool,
    tenant_id: &str,
    top_up_id: &str,
    amount: Micros,
    currency: &str,
    note: &str,
    now: Timestamp,
) -> Result<WalletRow, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The key table is the top-up id's durable uniqueness, whatever month it came in.
    let inserted = sqlx::query!(
        "WITH k AS (
            INSERT INTO billing.ledger_keys (tenant_id, reference, kind) VALUES ($1, $2, 'top_up')
            ON CONFLICT DO NOTHING RETURNING tenant_id)
         INSERT INTO billing.ledger (tenant_id, reference, kind, amount, currency, note, occurred_at)
         SELECT $1, $2, 'top_up', $3::bigint, $4::text, $5::text, $6::bigint FROM k",
        tenant_id,
        top_up_id,
        amount,
        currency,
        note,
        now.micros(),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let credited = if inserted == 1 { amount } else { 0 };
    let row: WalletRow = sqlx::query_as!(
        WalletRow,
        "INSERT INTO billing.wallets (tenant_id, balance) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE
           SET balance = billing.wallets.balance + excluded.balance, updated_at = now()
         RETURNING balance, credit_limit, reserved, low_balance_threshold",
        tenant_id,
        credited,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn set_credit_limit(
    pool: &PgPool,
    tenant_id: &str,
    credit_limit: Micros,
    low_balance_threshold: Micros,
) -> Result<WalletRow, sqlx::Error> {
    sqlx::query_as!(
        WalletRow,
        "INSERT INTO billing.wallets (tenant_id, credit_limit, low_balance_threshold)
         VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE
           SET credit_limit = excluded.credit_limit,
               low_balance_threshold = excluded.low_balance_threshold, updated_at = now()
         RETURNING balance, credit_limit, reserved, low_balance_threshold",
        tenant_id,
        credit_limit,
        low_balance_threshold,
    )
    .fetch_one(pool)
    .await
}

/// The wallet and its open (priced) reservations, as one consistent snapshot, to load Redis.
pub async fn snapshot(pool: &PgPool, tenant_id: &str) -> Result<crate::hot::Snapshot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let w: WalletRow = sqlx::query_as!(
        WalletRow,
        "SELECT balance, credit_limit, reserved, low_balance_threshold
         FROM billing.wallets WHERE tenant_id = $1",
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or_default();
    let open: Vec<(String, i64)> = sqlx::query!(
        "SELECT message_id, price FROM billing.reservations
         WHERE tenant_id = $1 AND state = 'open' AND price > 0",
        tenant_id,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.message_id, r.price))
    .collect();
    tx.commit().await?;
    Ok(crate::hot::Snapshot {
        balance: w.balance,
        credit_limit: w.credit_limit,
        reserved: open.iter().map(|(_, p)| p).sum(),
        open,
    })
}
