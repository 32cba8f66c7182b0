//! The consumer loop: batch in, decide, apply durably, then commit offsets. Records that cannot
//! be decoded go to the dead-letter topic and never block the partition.

use std::time::Duration;

use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer, Outgoing};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{DeadLetter, Envelope};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::apply::{Applier, ApplyError};
use crate::state::{self, WindowEvent};

pub struct Loop {
    pub consumer: BatchConsumer,
    pub applier: Applier,
    pub dlq_topic: String,
}

fn dead_letter(m: &OwnedMessage, consumer: &str, error: String) -> Envelope {
    Envelope {
        event_id: format!(
            "dlq:{}:{}:{}:{consumer}",
            m.topic(),
            m.partition(),
            m.offset()
        ),
        tenant_id: String::new(),
        occurred_at: None,
        recorded_at: None,
        payload: Some(Payload::DeadLetter(DeadLetter {
            source_topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            consumer: consumer.to_owned(),
            error,
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
        })),
    }
}

/// Backoff between retries of a failing batch, capped.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

impl Loop {
    /// Runs until shutdown; the batch in hand is finished and committed first.
    pub async fn run(self, shutdown: Shutdown) {
        let group = self.consumer.group_id().to_owned();
        loop {
            let batch = match self.consumer.next_batch(&shutdown).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "consuming failed; retrying");
                    tokio::select! {
                        () = shutdown.wait() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if batch.is_empty() {
                if shutdown.is_triggered() {
                    break;
                }
                continue;
            }
            let mut events: Vec<WindowEvent> = Vec::with_capacity(batch.len());
            let mut poison = Vec::new();
            for m in &batch {
                let decoded = kafka::decode(m)
                    .map_err(|e| e.to_string())
                    .and_then(|env| state::decode(&env).map_err(|e| e.to_string()));
                match decoded {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => {}
                    Err(error) => poison.push(dead_letter(m, &group, error)),
                }
            }
            if !self.settle(&events, poison, &shutdown).await {
                // Shut down while the batch kept failing: leave it uncommitted for the next run.
                break;
            }
            if let Err(e) = self.consumer.commit(&batch).await {
                // The batch will be re-delivered; applying it again is harmless.
                tracing::warn!(error = %e, "offset commit failed");
            }
        }
        tracing::info!(group, "window consumer stopped");
    }

    /// Applies the batch (and dead-letters its poison), retrying until it succeeds. Returns
    /// false if shutdown began before it could.
    async fn settle(
        &self,
        events: &[WindowEvent],
        poison: Vec<Envelope>,
        shutdown: &Shutdown,
    ) -> bool {
        let dead: Vec<Outgoing<'_>> = poison
            .into_iter()
            .map(|envelope| Outgoing {
                topic: &self.dlq_topic,
                key: envelope.event_id.clone(),
                envelope,
            })
            .collect();
        let mut attempt = 0;
        loop {
            let result = async {
                if !dead.is_empty() {
                    kafka::publish_all(&self.applier.producer, &dead)
                        .await
                        .map_err(ApplyError::from)?;
                    metrics::counter!("finestra_window_dead_letters_total")
                        .increment(dead.len() as u64);
                }
                self.applier.apply(events).await
            }
            .await;
            match result {
                Ok(applied) => {
                    metrics::counter!("finestra_window_events_applied_total")
                        .increment(applied.events as u64);
                    metrics::counter!("finestra_window_duplicate_events_total").increment(
                        (applied.events as u64).saturating_sub(applied.new_history_rows),
                    );
                    metrics::counter!("finestra_window_opened_total")
                        .increment(applied.windows_opened as u64);
                    metrics::counter!("finestra_window_refreshed_total")
                        .increment(applied.windows_refreshed as u64);
                    return true;
                }
                Err(e) => {
                    metrics::counter!("finestra_window_apply_failures_total").increment(1);
                    tracing::error!(error = %e, attempt, "applying a batch failed; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return false,
                        () = tokio::time::sleep(backoff(attempt)) => {}
                    }
                    attempt += 1;
                }
            }
        }
    }
}
