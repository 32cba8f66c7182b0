//! Ending reservations everywhere: Postgres first (the ledger, the wallet), then the hot
//! wallets in Redis. Used by the status consumer, `Release`, and the expiry sweep.

use sqlx::PgPool;

use crate::hot::{HotEnd, HotWallets};
use crate::reservations::{self, Settled, Settlement};

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Settles a batch durably, then mirrors the final states into Redis (idempotent, so a batch
/// replayed after a crash between the two repairs Redis).
pub async fn settle(
    pool: &PgPool,
    hot: &HotWallets,
    batch: &[Settlement],
) -> Result<Settled, SettleError> {
    let settled = reservations::settle(pool, batch).await?;
    sync_hot(hot, &settled).await?;
    Ok(settled)
}

pub async fn sync_hot(hot: &HotWallets, settled: &Settled) -> Result<(), SettleError> {
    let ends: Vec<(&str, &str, HotEnd)> = settled
        .ended_priced
        .iter()
        .map(|(t, m, captured)| {
            let how = if *captured {
                HotEnd::Captured
            } else {
                HotEnd::Released
            };
            (t.as_str(), m.as_str(), how)
        })
        .collect();
    hot.end(&ends).await?;
    Ok(())
}
