//! The consumer loop: batch in, decide, apply durably, then commit offsets. Records that cannot
//! be decoded go to the dead-letter topic and never block the partition.

use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer, Outgoing};
use finestra_proto::v1::Envelope;
use rdkafka::message::OwnedMessage;

use crate::apply::{Applier, ApplyError};
use crate::state::{self, WindowEvent};

pub struct Loop {
    pub consumer: BatchConsumer,
    pub applier: Applier,
    pub dlq_topic: String,
}

impl Loop {
    /// Runs until shutdown; the batch in hand is finished and committed first.
    pub async fn run(self, shutdown: Shutdown) {
        let group = self.consumer.group_id().to_owned();
        loop {
            let Some(batch) = self.consumer.next_batch_until_shutdown(&shutdown).await else {
                break;
            };
            let now = self.applier.clock.now();
            let mut events: Vec<WindowEvent> = Vec::with_capacity(batch.len());
            let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
            let mut poison = Vec::new();
            for m in &batch {
                let decoded = kafka::decode(m)
                    .map_err(|e| e.to_string())
                    .and_then(|env| state::decode(&env, now).map_err(|e| e.to_string()));
                match decoded {
                    Ok(Some(e)) => {
                        events.push(e);
                        sources.push(m);
                    }
                    Ok(None) => {}
                    Err(error) => poison.push(kafka::dead_letter(m, &group, error)),
                }
            }
            if !self
                .settle(events, &sources, poison, &group, &shutdown)
                .await
            {
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

    /// Applies the batch (and dead-letters its poison), retrying until it succeeds. An event
    /// the store refuses as data (not as an outage) is found, dead-lettered, and the rest is
    /// applied: one bad record never blocks the partition. Returns false if shutdown began
    /// before the batch was settled.
    async fn settle(
        &self,
        mut events: Vec<WindowEvent>,
        sources: &[&OwnedMessage],
        mut poison: Vec<Envelope>,
        group: &str,
        shutdown: &Shutdown,
    ) -> bool {
        let mut attempt = 0;
        loop {
            match self.apply_with_dead_letters(&events, &poison).await {
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
                Err(e) if e.is_data_error() && !events.is_empty() => {
                    tracing::warn!(error = %e, "the store refused part of a batch; isolating the bad events");
                    match self.isolate(&events, sources, group).await {
                        Ok(bad) => {
                            poison.extend(bad);
                            // Everything else is applied; only the dead letters remain to send.
                            events.clear();
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "isolating failed; retrying the batch")
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!("finestra_window_apply_failures_total").increment(1);
                    tracing::error!(error = %e, attempt, "applying a batch failed; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return false,
                        () = tokio::time::sleep(kafka::retry_backoff(attempt)) => {}
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Applies the events, then dead-letters the poison (after, so a batch whose apply fails
    /// sends its dead letters once, when it is settled).
    async fn apply_with_dead_letters(
        &self,
        events: &[WindowEvent],
        poison: &[Envelope],
    ) -> Result<crate::apply::Applied, ApplyError> {
        let applied = self.applier.apply(events).await?;
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
            kafka::publish_all(&self.applier.producer, &dead).await?;
            metrics::counter!("finestra_window_dead_letters_total").increment(dead.len() as u64);
        }
        Ok(applied)
    }

    /// Applies the events one by one; returns dead letters for those the store refuses as
    /// data. Any other failure aborts (the batch is retried whole; applying is idempotent).
    async fn isolate(
        &self,
        events: &[WindowEvent],
        sources: &[&OwnedMessage],
        group: &str,
    ) -> Result<Vec<Envelope>, ApplyError> {
        let mut bad = Vec::new();
        for (event, source) in events.iter().zip(sources) {
            match self.applier.apply(std::slice::from_ref(event)).await {
                Ok(_) => {}
                Err(e) if e.is_data_error() => {
                    bad.push(kafka::dead_letter(source, group, e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }
}
