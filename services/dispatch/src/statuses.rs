//! Message states from statuses: the network's statuses (and dispatch's own `failed` reports)
//! from `finestra.status.v1` move messages along `Progress`. The event pipeline (`events.rs`)
//! hands each batch's statuses here before it records them in the tenant event log, so a
//! status is read once by dispatch. A batch is applied in rounds, each message's statuses in
//! order of progress, so every timestamp is its own status's; the store's `WHERE` makes a
//! duplicate or stale status change nothing.

use std::collections::HashMap;

use finestra_domain::delivery::Progress;
use finestra_platform::Shutdown;
use finestra_platform::kafka;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use sqlx::PgPool;

use crate::hot::Hot;
use crate::pg::{self, StatusChange};
use finestra_provider::ProviderError;

pub struct StatusApplier {
    pub pool: PgPool,
    /// The tier counts: a failed business-initiated message reached nobody.
    pub hot: Hot,
}

const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;

/// The change a status envelope asks for, if it is about one of dispatch's messages.
fn change_of(env: &Envelope, now: i64) -> Option<StatusChange> {
    let Some(Payload::MessageStatus(s)) = &env.payload else {
        return None;
    };
    if env.tenant_id.is_empty() || s.callback_data.is_empty() {
        return None;
    }
    let progress = Progress::parse(&s.status)?;
    let at = env
        .occurred_at
        .as_ref()
        .map_or(now, finestra_proto::time::to_micros);
    let (reason, code, title) = match (progress, s.errors.first()) {
        (Progress::Failed, Some(e)) => {
            // Dispatch's own reports carry the reason as the title.
            let reason = if e.title.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && !e.title.is_empty()
            {
                e.title.clone()
            } else {
                ProviderError::from_code(400, e.code, String::new())
                    .reason
                    .to_owned()
            };
            let title = if e.message.is_empty() {
                e.title.clone()
            } else {
                e.message.clone()
            };
            (reason, e.code, title)
        }
        (Progress::Failed, None) => ("PROVIDER_ERROR".to_owned(), 0, String::new()),
        _ => (String::new(), 0, String::new()),
    };
    Some(StatusChange {
        tenant_id: env.tenant_id.clone(),
        message_id: s.callback_data.clone(),
        progress,
        at,
        provider_message_id: s.message_id.clone(),
        failure_reason: reason,
        error_code: code,
        error_title: title,
        attempts: 0,
    })
}

/// Splits changes into rounds: round i holds each message's i-th status by progress.
fn rounds(changes: Vec<StatusChange>) -> Vec<Vec<StatusChange>> {
    let mut per_message: HashMap<(String, String), Vec<StatusChange>> = HashMap::new();
    for c in changes {
        per_message
            .entry((c.tenant_id.clone(), c.message_id.clone()))
            .or_default()
            .push(c);
    }
    let mut out: Vec<Vec<StatusChange>> = Vec::new();
    for (_, mut list) in per_message {
        list.sort_by_key(|c| c.progress.rank());
        list.dedup_by_key(|c| c.progress);
        for (i, c) in list.into_iter().enumerate() {
            if out.len() <= i {
                out.push(Vec::new());
            }
            out[i].push(c);
        }
    }
    out
}

impl StatusApplier {
    /// Takes the users of failed business-initiated messages out of the tier count (or back
    /// to their newest other send). Every failed status of the batch is looked at, not only
    /// those that moved now, so a batch replayed after a crash repeats it; should Redis not
    /// answer, the count stays high until it expires or is rebuilt (the rebuild skips failed
    /// messages): a tenant is refused sooner, never allowed more.
    async fn forget_failed(&self, changes: &[StatusChange], now: i64) {
        let failed: Vec<(String, String)> = changes
            .iter()
            .filter(|c| c.progress == Progress::Failed)
            .map(|c| (c.tenant_id.clone(), c.message_id.clone()))
            .collect();
        if failed.is_empty() {
            return;
        }
        let entries = match pg::failed_tier_entries(&self.pool, &failed, now - DAY_MICROS).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "reading failed messages for the tier failed");
                return;
            }
        };
        for (tenant, user, failed_at, still) in entries {
            if let Err(e) = self
                .hot
                .tier_forget_failed(&tenant, &user, failed_at, still)
                .await
            {
                tracing::warn!(error = %e, "taking a failed message out of the tier failed");
            }
        }
        // Nor does a failed marketing template count toward its user's frequency cap.
        match pg::failed_marketing(&self.pool, &failed).await {
            Ok(marketing) => {
                for (tenant, user, message_id) in marketing {
                    if let Err(e) = self.hot.cap_forget(&tenant, &user, &message_id).await {
                        tracing::warn!(error = %e, "taking a failed message out of the frequency cap failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading failed marketing messages failed"),
        }
    }

    /// Applies the statuses among `batch` to the messages, retrying a store failure until it
    /// passes; `false` when shutdown began first (the batch is then not committed).
    pub async fn apply(&self, batch: &[Envelope], now: i64, shutdown: &Shutdown) -> bool {
        let changes: Vec<StatusChange> =
            batch.iter().filter_map(|env| change_of(env, now)).collect();
        if changes.is_empty() {
            return true;
        }
        let mut attempt = 0;
        'apply: loop {
            let mut failed = false;
            for round in rounds(changes.clone()) {
                match pg::apply_statuses(&self.pool, &round, now).await {
                    Ok(moved) => metrics::counter!("finestra_dispatch_status_applied_total")
                        .increment(moved.len() as u64),
                    Err(e) => {
                        tracing::warn!(error = %e, "applying statuses failed; retrying");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                break 'apply;
            }
            tokio::select! {
                () = shutdown.wait() => return false,
                () = tokio::time::sleep(kafka::retry_backoff(attempt)) => {}
            }
            attempt += 1;
        }
        self.forget_failed(&changes, now).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(msg: &str, p: Progress) -> StatusChange {
        StatusChange {
            tenant_id: "t".into(),
            message_id: msg.into(),
            progress: p,
            at: 0,
            provider_message_id: String::new(),
            failure_reason: String::new(),
            error_code: 0,
            error_title: String::new(),
            attempts: 0,
        }
    }

    #[test]
    fn each_message_gets_one_status_per_round_in_progress_order() {
        let r = rounds(vec![
            change("a", Progress::Read),
            change("a", Progress::Sent),
            change("b", Progress::Delivered),
            change("a", Progress::Delivered),
            change("a", Progress::Sent),
        ]);
        assert_eq!(r.len(), 3);
        let a: Vec<Progress> = r
            .iter()
            .filter_map(|round| round.iter().find(|c| c.message_id == "a"))
            .map(|c| c.progress)
            .collect();
        assert_eq!(a, vec![Progress::Sent, Progress::Delivered, Progress::Read]);
        assert_eq!(r[0].len(), 2);
    }
}
