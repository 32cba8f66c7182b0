//! Reservations and the ledger in Postgres: inserting reservations in batches (with the
//! wallet's `reserved`), and settling them (capture → a ledger entry and the balance; release
//! → the reservation freed), each exactly once whatever is replayed.

use std::collections::BTreeMap;

use finestra_domain::pricing::Micros;
use sqlx::{PgPool, Postgres, Transaction};

use crate::pg::WalletRow;

/// A priced message, fixed at acceptance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRow {
    pub tenant_id: String,
    pub message_id: String,
    pub phone_number_id: String,
    pub recipient: String,
    pub category: String,
    pub market: String,
    pub card_version: String,
    pub currency: String,
    pub cost: i64,
    pub price: i64,
    pub markup: String,
    pub free_reason: String,
    pub accepted_at: i64,
}

impl ReservationRow {
    /// Whether a retried reservation asks for the same thing (the time may differ).
    pub fn same_charge(&self, other: &Self) -> bool {
        self.phone_number_id == other.phone_number_id
            && self.recipient == other.recipient
            && self.category == other.category
            && self.price == other.price
    }
}

/// What inserting found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Inserted,
    /// It existed already (a retry): as stored, and its state.
    Existing {
        row: Box<ReservationRow>,
        state: String,
    },
}

/// A wallet whose available amount fell below its threshold with this batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowBalance {
    pub tenant_id: String,
    pub wallet: WalletRow,
    /// The reservation that crossed the threshold (the event's stable id).
    pub message_id: String,
}

/// Adds `sums` to the wallets' `reserved`, making a wallet row a tenant does not have yet: one
/// upsert, whose rows are taken in tenant order (the lock order of every wallet writer).
async fn add_reserved(
    tx: &mut Transaction<'_, Postgres>,
    tenants: &[String],
    sums: &[i64],
) -> Result<Vec<(String, WalletRow)>, sqlx::Error> {
    let rows = sqlx::query!(
        "INSERT INTO billing.wallets AS w (tenant_id, reserved)
         SELECT tenant_id, sum FROM unnest($1::text[], $2::bigint[]) AS d(tenant_id, sum)
          ORDER BY tenant_id
         ON CONFLICT (tenant_id) DO UPDATE
            SET reserved = w.reserved + EXCLUDED.reserved, updated_at = now()
         RETURNING w.tenant_id, w.balance, w.credit_limit, w.reserved, w.low_balance_threshold",
        tenants,
        sums,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|a| {
            (
                a.tenant_id,
                WalletRow {
                    balance: a.balance,
                    credit_limit: a.credit_limit,
                    reserved: a.reserved,
                    low_balance_threshold: a.low_balance_threshold,
                },
            )
        })
        .collect())
}

async fn lock_wallets(
    tx: &mut Transaction<'_, Postgres>,
    tenants: &[String],
) -> Result<(), sqlx::Error> {
    // One lock order for every writer (reserve batches, settlement, top-ups), so concurrent
    // batches never deadlock on wallets.
    sqlx::query!(
        r#"SELECT 1 AS "locked!" FROM billing.wallets WHERE tenant_id = ANY($1::text[])
            ORDER BY tenant_id FOR UPDATE"#,
        tenants,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts reservations (one transaction), adds the new ones' prices to their wallets'
/// `reserved`, and answers per row, in order.
pub async fn insert_batch(
    pool: &PgPool,
    rows: &[ReservationRow],
) -> Result<(Vec<Stored>, Vec<LowBalance>), sqlx::Error> {
    let col = |f: fn(&ReservationRow) -> &String| rows.iter().map(f).cloned().collect::<Vec<_>>();
    let num = |f: fn(&ReservationRow) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    let mut tx = pool.begin().await?;
    let (tenant_ids, message_ids) = (col(|r| &r.tenant_id), col(|r| &r.message_id));
    let (numbers, recipients) = (col(|r| &r.phone_number_id), col(|r| &r.recipient));
    let (categories, markets) = (col(|r| &r.category), col(|r| &r.market));
    let (card_versions, currencies) = (col(|r| &r.card_version), col(|r| &r.currency));
    let (costs, prices) = (num(|r| r.cost), num(|r| r.price));
    let (markups, free_reasons) = (col(|r| &r.markup), col(|r| &r.free_reason));
    let accepted_ats = num(|r| r.accepted_at);
    let inserted = sqlx::query!(
        "INSERT INTO billing.reservations (tenant_id, message_id, phone_number_id, recipient,
            category, market, card_version, currency, cost, price, markup, free_reason, accepted_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[],
            $12::text[], $13::bigint[])
         ON CONFLICT DO NOTHING
         RETURNING tenant_id, message_id",
        &tenant_ids,
        &message_ids,
        &numbers,
        &recipients,
        &categories,
        &markets,
        &card_versions,
        &currencies,
        &costs,
        &prices,
        &markups,
        &free_reasons,
        &accepted_ats,
    )
    .fetch_all(&mut *tx)
    .await?;
    let inserted: std::collections::HashSet<(String, String)> = inserted
        .into_iter()
        .map(|r| (r.tenant_id, r.message_id))
        .collect();

    // Reserved per tenant, and the last new message of each (for a low-balance event).
    let mut added: BTreeMap<String, (Micros, String)> = BTreeMap::new();
    let mut counted = std::collections::HashSet::new();
    for r in rows {
        let key = (r.tenant_id.clone(), r.message_id.clone());
        if r.price > 0 && inserted.contains(&key) && counted.insert(key) {
            let e = added.entry(r.tenant_id.clone()).or_default();
            e.0 += r.price;
            e.1.clone_from(&r.message_id);
        }
    }
    let mut low = Vec::new();
    if !added.is_empty() {
        let tenants: Vec<String> = added.keys().cloned().collect();
        let sums: Vec<i64> = added.values().map(|(s, _)| *s).collect();
        let after = add_reserved(&mut tx, &tenants, &sums).await?;
        for (tenant_id, wallet) in after {
            let threshold = wallet.low_balance_threshold;
            if let Some((sum, message_id)) = added.get(&tenant_id)
                && threshold > 0
                && wallet.available() < threshold
                && wallet.available() + sum >= threshold
            {
                low.push(LowBalance {
                    tenant_id,
                    wallet,
                    message_id: message_id.clone(),
                });
            }
        }
    }

    let missing: Vec<&ReservationRow> = rows
        .iter()
        .filter(|r| !inserted.contains(&(r.tenant_id.clone(), r.message_id.clone())))
        .collect();
    let mut existing: BTreeMap<(String, String), (ReservationRow, String)> = BTreeMap::new();
    if !missing.is_empty() {
        let missing_tenants: Vec<String> = missing.iter().map(|r| r.tenant_id.clone()).collect();
        let missing_messages: Vec<String> = missing.iter().map(|r| r.message_id.clone()).collect();
        let found: Vec<(String, ReservationRow)> = sqlx::query_as!(
            ExistingRow,
            "SELECT r.state, r.tenant_id, r.message_id, r.phone_number_id, r.recipient, r.category,
                    r.market, r.card_version, r.currency, r.cost, r.price, r.markup,
                    r.free_reason, r.accepted_at
             FROM billing.reservations r
             JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
               ON r.tenant_id = k.tenant_id AND r.message_id = k.message_id",
            &missing_tenants,
            &missing_messages,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|e| {
            let (row, state) = e.into_parts();
            (state, row)
        })
        .collect();
        for (state, row) in found {
            existing.insert(
                (row.tenant_id.clone(), row.message_id.clone()),
                (row, state),
            );
        }
    }
    tx.commit().await?;

    let mut first_insert = std::collections::HashSet::new();
    let answers = rows
        .iter()
        .map(|r| {
            let key = (r.tenant_id.clone(), r.message_id.clone());
            if inserted.contains(&key) && first_insert.insert(key.clone()) {
                Stored::Inserted
            } else if let Some((row, state)) = existing.get(&key) {
                Stored::Existing {
                    row: Box::new(row.clone()),
                    state: state.clone(),
                }
            } else {
                // A duplicate within this batch of a row inserted just now.
                Stored::Existing {
                    row: Box::new(r.clone()),
                    state: "open".into(),
                }
            }
        })
        .collect();
    Ok((answers, low))
}

/// A stored reservation and its state, as the checked queries select it (`state` first, then
/// the `ReservationRow` columns).
struct ExistingRow {
    state: String,
    tenant_id: String,
    message_id: String,
    phone_number_id: String,
    recipient: String,
    category: String,
    market: String,
    card_version: String,
    currency: String,
    cost: i64,
    price: i64,
    markup: String,
    free_reason: String,
    accepted_at: i64,
}

impl ExistingRow {
    fn into_parts(self) -> (ReservationRow, String) {
        (
            ReservationRow {
                tenant_id: self.tenant_id,
                message_id: self.message_id,
                phone_number_id: self.phone_number_id,
                recipient: self.recipient,
                category: self.category,
                market: self.market,
                card_version: self.card_version,
                currency: self.currency,
                cost: self.cost,
                price: self.price,
                markup: self.markup,
                free_reason: self.free_reason,
                accepted_at: self.accepted_at,
            },
            self.state,
        )
    }
}

/// How a reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Capture,
    Release,
}

/// One settlement to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub tenant_id: String,
    pub message_id: String,
    pub end: End,
    /// When it happened (the delivery time for a capture: the ledger's and usage's time).
    pub at: i64,
    /// delivered, read, failed, blocked, expired, released.
    pub reason: String,
}

/// What a settlement batch did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Reservations this batch ended (a replay ends nothing).
    pub captured: usize,
    pub released: usize,
    /// The final state of every priced reservation the batch named, for the hot wallets
    /// (tenant, message, captured?). Includes ones ended earlier, so a replay after a crash
    /// between the commit and the Redis update repairs Redis.
    pub ended_priced: Vec<(String, String, bool)>,
}

/// Ends open reservations: captures write one ledger entry each (unique per message) and
/// charge the balance; both free the reservation. One transaction; idempotent.
pub async fn settle(pool: &PgPool, batch: &[Settlement]) -> Result<Settled, sqlx::Error> {
    // The first settlement of a message in the batch wins (batch order = event order).
    let mut seen = std::collections::HashSet::new();
    let batch: Vec<&Settlement> = batch
        .iter()
        .filter(|s| seen.insert((s.tenant_id.as_str(), s.message_id.as_str())))
        .collect();
    if batch.is_empty() {
        return Ok(Settled::default());
    }
    let tenants: Vec<String> = batch.iter().map(|s| s.tenant_id.clone()).collect();
    let messages: Vec<String> = batch.iter().map(|s| s.message_id.clone()).collect();
    let states: Vec<String> = batch
        .iter()
        .map(|s| match s.end {
            End::Capture => "captured".to_owned(),
            End::Release => "released".to_owned(),
        })
        .collect();
    let ats: Vec<i64> = batch.iter().map(|s| s.at).collect();
    let reasons: Vec<String> = batch.iter().map(|s| s.reason.clone()).collect();

    let mut tx = pool.begin().await?;
    let mut wallet_tenants: Vec<String> = tenants.clone();
    wallet_tenants.sort();
    wallet_tenants.dedup();
    lock_wallets(&mut tx, &wallet_tenants).await?;
    let ended = sqlx::query!(
        r#"WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
              AS i(tenant_id, message_id, new_state, at, reason)
         ), ended AS (
            UPDATE billing.reservations r
               SET state = i.new_state, ended_at = i.at, end_reason = i.reason
              FROM input i
             WHERE r.tenant_id = i.tenant_id AND r.message_id = i.message_id AND r.state = 'open'
            RETURNING r.*
         ), keyed AS (
            INSERT INTO billing.ledger_keys (tenant_id, reference, kind)
            SELECT tenant_id, message_id, 'charge' FROM ended WHERE state = 'captured'
            ON CONFLICT DO NOTHING
            RETURNING tenant_id, reference
         ), charged AS (
            INSERT INTO billing.ledger (tenant_id, reference, kind, amount, cost, price, currency,
                card_version, category, market, phone_number_id, free_reason, markup, occurred_at)
            SELECT e.tenant_id, e.message_id, 'charge', -e.price, e.cost, e.price, e.currency,
                   e.card_version, e.category, e.market, e.phone_number_id, e.free_reason,
                   e.markup, e.ended_at
              FROM ended e
              JOIN keyed k ON k.tenant_id = e.tenant_id AND k.reference = e.message_id
             WHERE e.state = 'captured'
         )
         SELECT tenant_id AS "tenant_id!", message_id AS "message_id!", state AS "state!",
                price AS "price!"
           FROM ended"#,
        &tenants,
        &messages,
        &states,
        &ats,
        &reasons,
    )
    .fetch_all(&mut *tx)
    .await?;

    let mut settled = Settled::default();
    let mut per_tenant: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in &ended {
        let e = per_tenant.entry(row.tenant_id.clone()).or_default();
        if row.state == "captured" {
            settled.captured += 1;
            e.0 += row.price;
        } else {
            settled.released += 1;
        }
        e.1 += row.price;
    }
    per_tenant.retain(|_, (captured, ended)| *captured != 0 || *ended != 0);
    if !per_tenant.is_empty() {
        let wallet_keys: Vec<String> = per_tenant.keys().cloned().collect();
        let captured_sums: Vec<i64> = per_tenant.values().map(|v| v.0).collect();
        let ended_sums: Vec<i64> = per_tenant.values().map(|v| v.1).collect();
        sqlx::query!(
            "UPDATE billing.wallets w
                SET balance = w.balance - d.captured, reserved = w.reserved - d.ended,
                    updated_at = now()
               FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(tenant_id, captured, ended)
              WHERE w.tenant_id = d.tenant_id",
            &wallet_keys,
            &captured_sums,
            &ended_sums,
        )
        .execute(&mut *tx)
        .await?;
    }
    // The ones this batch did not end may have ended earlier (a replay): their final states
    // too, so the caller can repair Redis.
    let ended_now: std::collections::HashSet<(&str, &str)> = ended
        .iter()
        .map(|e| (e.tenant_id.as_str(), e.message_id.as_str()))
        .collect();
    let (rest_tenants, rest_messages): (Vec<String>, Vec<String>) = tenants
        .iter()
        .zip(&messages)
        .filter(|(t, m)| !ended_now.contains(&(t.as_str(), m.as_str())))
        .map(|(t, m)| (t.clone(), m.clone()))
        .unzip();
    let earlier: Vec<(String, String, String)> = if rest_tenants.is_empty() {
        Vec::new()
    } else {
        sqlx::query!(
            "SELECT r.tenant_id, r.message_id, r.state FROM billing.reservations r
               JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
                 ON r.tenant_id = k.tenant_id AND r.message_id = k.message_id
              WHERE r.state <> 'open' AND r.price > 0",
            &rest_tenants,
            &rest_messages,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.tenant_id, r.message_id, r.state))
        .collect()
    };
    tx.commit().await?;
    settled.ended_priced = ended
        .into_iter()
        .filter(|e| e.price > 0)
        .map(|e| (e.tenant_id, e.message_id, e.state))
        .chain(earlier)
        .map(|(t, m, s)| (t, m, s == "captured"))
        .collect();
    Ok(settled)
}

/// Marks reservations as sent by the provider (a later block no longer releases them). Not
/// filtered on `state` (marking an ended one is harmless), so the lookup is by primary key.
pub async fn mark_sent(pool: &PgPool, keys: &[(String, String)]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let tenants: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    let messages: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    sqlx::query!(
        "UPDATE billing.reservations r SET sent = true
           FROM unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
          WHERE r.tenant_id = k.tenant_id AND r.message_id = k.message_id AND NOT r.sent",
        &tenants,
        &messages,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Open reservations accepted before `before` (never delivered: they expire).
pub async fn expired(
    pool: &PgPool,
    before: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT tenant_id, message_id FROM billing.reservations
          WHERE state = 'open' AND accepted_at < $1 ORDER BY accepted_at LIMIT $2",
        before,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.tenant_id, r.message_id))
    .collect())
}

/// One reservation as stored, with its state.
pub async fn get(
    pool: &PgPool,
    tenant_id: &str,
    message_id: &str,
) -> Result<Option<(ReservationRow, String)>, sqlx::Error> {
    let row: Option<ExistingRow> = sqlx::query_as!(
        ExistingRow,
        "SELECT state, tenant_id, message_id, phone_number_id, recipient, category, market,
                card_version, currency, cost, price, markup, free_reason, accepted_at
           FROM billing.reservations WHERE tenant_id = $1 AND message_id = $2",
        tenant_id,
        message_id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(ExistingRow::into_parts))
}
