//! The capture consumer: status events (`delivered`/`read` → capture, `failed` → release,
//! `sent` → marked). A user's block releases nothing here: dispatch fails the messages still
//! queued to a blocked user with a `failed` status (USER_BLOCKED), which releases them, while a
//! message the network already took is decided by its own status; releasing on the block itself
//! raced the `sent` status of a message in flight and let a delivered message go uncharged. Offsets are committed only after the batch is durable in Postgres and
//! mirrored in Redis, so a crash re-delivers it and the replay changes nothing.

use finestra_domain::Clock;
use finestra_domain::delivery::{Progress, Settles};
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer, Outgoing};
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use std::sync::Arc;

use crate::hot::HotWallets;
use crate::reservations::{self, End, Settlement};
use crate::settle::{self, SettleError};

pub struct Loop {
    pub consumer: BatchConsumer,
    pub pool: PgPool,
    pub hot: HotWallets,
    pub producer: FutureProducer,
    pub dlq_topic: String,
    pub clock: Arc<dyn Clock>,
    /// Test failpoint: abort the process after this many batches were written to Postgres,
    /// before Redis and the offset commit (proves a crash there loses and doubles nothing).
    pub crash_after_batches: Option<u64>,
}

/// What one record asks of billing.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Settle(Settlement),
    Sent(String, String),
    Nothing,
}

fn action_of(envelope: &Envelope, now: i64) -> Action {
    let at = envelope
        .occurred_at
        .as_ref()
        .map_or(now, finestra_proto::time::to_micros);
    let tenant_id = envelope.tenant_id.clone();
    match &envelope.payload {
        Some(Payload::MessageStatus(s)) => {
            // Dispatch sends Finestra's message id as biz_opaque_callback_data; a status
            // without it is keyed by the provider's id.
            let message_id = if s.callback_data.is_empty() {
                s.message_id.clone()
            } else {
                s.callback_data.clone()
            };
            if tenant_id.is_empty() || message_id.is_empty() {
                return Action::Nothing;
            }
            let Some(progress) = Progress::parse(&s.status) else {
                return Action::Nothing;
            };
            let end = match progress.settles() {
                Some(Settles::Capture) => End::Capture,
                Some(Settles::Release) => End::Release,
                None if progress == Progress::Sent => {
                    return Action::Sent(tenant_id, message_id);
                }
                None => return Action::Nothing,
            };
            Action::Settle(Settlement {
                tenant_id,
                message_id,
                end,
                at,
                reason: s.status.clone(),
            })
        }
        _ => Action::Nothing,
    }
}

/// The span of one traced settlement, child of the status webhook's trace: `billing.capture` or
/// `billing.release`.
fn settlement_span(s: &Settlement, traceparent: &str) -> tracing::Span {
    let span = match s.end {
        End::Capture => {
            tracing::info_span!("billing.capture", message_id = %s.message_id, tenant_id = %s.tenant_id)
        }
        End::Release => {
            tracing::info_span!("billing.release", message_id = %s.message_id, tenant_id = %s.tenant_id)
        }
    };
    finestra_platform::trace::adopt(&span, Some(traceparent));
    span
}

impl Loop {
    pub async fn run(self, shutdown: Shutdown) {
        let group = self.consumer.group_id().to_owned();
        let mut batches_written = 0u64;
        // The last batch committed without waiting: committed again, synchronously, on the
        // way out.
        let mut last_committed = Vec::new();
        loop {
            let Some(batch) = self.consumer.next_batch_until_shutdown(&shutdown).await else {
                break;
            };
            let now = self.clock.now().micros();
            let mut actions = Vec::with_capacity(batch.len());
            let mut poison = Vec::new();
            // Traced statuses: one span per settlement, open while its batch is written.
            let mut spans = Vec::new();
            for m in &batch {
                match kafka::decode_all(m) {
                    Ok(envelopes) => {
                        for envelope in envelopes {
                            let action = action_of(&envelope, now);
                            if let (Action::Settle(s), Some(tp)) = (&action, kafka::traceparent(m))
                            {
                                spans.push(settlement_span(s, tp));
                            }
                            actions.push(action);
                        }
                    }
                    Err(e) => poison.push(kafka::dead_letter(m, &group, e.to_string())),
                }
            }
            let mut attempt = 0;
            let done = loop {
                match self.apply(&actions, &poison, &mut batches_written).await {
                    Ok(()) => break true,
                    Err(e) => {
                        metrics::counter!("finestra_billing_settle_failures_total").increment(1);
                        tracing::error!(error = %e, attempt, "settling a batch failed; retrying");
                        tokio::select! {
                            () = shutdown.wait() => break false,
                            () = tokio::time::sleep(kafka::retry_backoff(attempt)) => {}
                        }
                        attempt += 1;
                    }
                }
            };
            drop(spans);
            if !done {
                break;
            }
            // Not waiting for the broker here saves a round trip per batch; a lost commit only
            // replays an idempotent batch.
            if let Err(e) = self.consumer.commit_async(&batch) {
                tracing::warn!(error = %e, "offset commit failed; the batch will be replayed");
            }
            last_committed = batch;
        }
        if let Err(e) = self.consumer.commit(&last_committed).await {
            tracing::warn!(error = %e, "the final offset commit failed; the last batch will be replayed");
        }
        tracing::info!(group, "billing consumer stopped");
    }

    async fn apply(
        &self,
        actions: &[Action],
        poison: &[Envelope],
        batches_written: &mut u64,
    ) -> Result<(), ApplyError> {
        let mut settlements = Vec::new();
        let mut sent = Vec::new();
        for a in actions {
            match a {
                Action::Settle(s) => settlements.push(s.clone()),
                Action::Sent(t, m) => sent.push((t.clone(), m.clone())),
                Action::Nothing => {}
            }
        }
        reservations::mark_sent(&self.pool, &sent).await?;
        let settled = reservations::settle(&self.pool, &settlements).await?;
        *batches_written += 1;
        #[cfg(feature = "failpoints")]
        if self.crash_after_batches == Some(*batches_written) {
            tracing::error!("failpoint: aborting after the ledger write, before the commit");
            std::process::abort();
        }
        settle::sync_hot(&self.hot, &settled).await?;
        metrics::counter!("finestra_billing_captured_total").increment(settled.captured as u64);
        // How far the ledger trails the statuses it records (their occurrence time).
        if let Some(newest) = settlements.iter().map(|s| s.at).max() {
            let lag = (self.clock.now().micros() - newest).max(0);
            metrics::gauge!("finestra_billing_ledger_lag_seconds").set(lag as f64 / 1e6);
        }
        metrics::counter!("finestra_billing_released_total").increment(settled.released as u64);
        if !poison.is_empty() {
            let dead: Vec<Outgoing<'_>> = poison
                .iter()
                .map(|envelope| Outgoing {
                    traceparent: None,
                    topic: &self.dlq_topic,
                    key: envelope.event_id.clone(),
                    envelope: envelope.clone(),
                })
                .collect();
            kafka::publish_all(&self.producer, &dead).await?;
            metrics::counter!("finestra_billing_dead_letters_total").increment(dead.len() as u64);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] finestra_platform::kafka::BusError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_proto::v1::{MessageStatus, UserBlock, UserRef};

    fn status(status: &str, callback: &str) -> Envelope {
        Envelope {
            event_id: "e".into(),
            tenant_id: "t".into(),
            occurred_at: Some(finestra_proto::time::from_micros(5)),
            recorded_at: None,
            payload: Some(Payload::MessageStatus(MessageStatus {
                message_id: "wamid.1".into(),
                status: status.into(),
                callback_data: callback.into(),
                ..MessageStatus::default()
            })),
        }
    }

    #[test]
    fn statuses_become_captures_releases_and_sent_marks() {
        let capture = |s: &str| match action_of(&status(s, "m1"), 9) {
            Action::Settle(x) => Some((x.end, x.message_id, x.at)),
            _ => None,
        };
        assert_eq!(capture("delivered"), Some((End::Capture, "m1".into(), 5)));
        assert_eq!(
            capture("read"),
            Some((End::Capture, "m1".into(), 5)),
            "read implies delivered"
        );
        assert_eq!(capture("failed"), Some((End::Release, "m1".into(), 5)));
        assert_eq!(
            action_of(&status("sent", "m1"), 9),
            Action::Sent("t".into(), "m1".into())
        );
        assert_eq!(action_of(&status("deleted", "m1"), 9), Action::Nothing);
        match action_of(&status("delivered", ""), 9) {
            Action::Settle(x) => assert_eq!(x.message_id, "wamid.1", "keyed by the provider id"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_block_settles_nothing_itself() {
        let block = |blocked| Envelope {
            event_id: "e".into(),
            tenant_id: "t".into(),
            occurred_at: None,
            recorded_at: None,
            payload: Some(Payload::UserBlock(UserBlock {
                phone_number_id: "pn".into(),
                user: Some(UserRef {
                    wa_id: "39333".into(),
                    ..UserRef::default()
                }),
                blocked,
            })),
        };
        assert_eq!(action_of(&block(true), 7), Action::Nothing);
        assert_eq!(action_of(&block(false), 7), Action::Nothing);
    }
}
