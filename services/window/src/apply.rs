//! Applies a batch of window events: history and state in one Postgres transaction, window
//! events published, then the Redis hashes. The caller commits the Kafka offsets only after
//! this returns, so a crash anywhere re-delivers the batch and the idempotent writes make that
//! harmless.

use std::collections::BTreeMap;
use std::sync::Arc;

use finestra_domain::{Clock, WindowChange, WindowState};
use finestra_platform::kafka::{self, BusError, Outgoing};
use finestra_proto::prost_types::Timestamp;
use finestra_proto::time::from_micros;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, UserRef, WindowOpened, WindowRefreshed};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::hot::HotStore;
use crate::pg;
use crate::state::{self, PairKey, WindowEvent};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("publishing window events: {0}")]
    Bus(#[from] BusError),
}

impl ApplyError {
    /// Postgres refused the data itself (SQLSTATE class 22, data exception, or a check
    /// violation): retrying cannot help, the event is poison.
    pub fn is_data_error(&self) -> bool {
        match self {
            ApplyError::Postgres(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c == "23514"),
            _ => false,
        }
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub events: usize,
    /// Events not seen before (the rest were re-deliveries).
    pub new_history_rows: u64,
    pub windows_opened: usize,
    pub windows_refreshed: usize,
}

#[derive(Clone)]
pub struct Applier {
    pub pool: PgPool,
    pub hot: HotStore,
    pub producer: FutureProducer,
    pub window_topic: String,
    pub clock: Arc<dyn Clock>,
}

pub(crate) fn user_ref(user: &str) -> UserRef {
    // The key is the wa_id when it is all digits, the business-scoped id otherwise.
    if user.bytes().all(|b| b.is_ascii_digit()) {
        UserRef {
            wa_id: user.to_owned(),
            ..Default::default()
        }
    } else {
        UserRef {
            user_id: user.to_owned(),
            ..Default::default()
        }
    }
}

fn window_event(e: &WindowEvent, change: WindowChange, recorded_at: Timestamp) -> Envelope {
    let payload = match change {
        WindowChange::Opened { csw_until } => Payload::WindowOpened(WindowOpened {
            phone_number_id: e.key.phone_number_id.clone(),
            user: Some(user_ref(&e.key.user)),
            csw_until: Some(from_micros(csw_until.micros())),
            inbound_event_id: e.event_id.clone(),
        }),
        WindowChange::Refreshed { csw_until } => Payload::WindowRefreshed(WindowRefreshed {
            phone_number_id: e.key.phone_number_id.clone(),
            user: Some(user_ref(&e.key.user)),
            csw_until: Some(from_micros(csw_until.micros())),
            inbound_event_id: e.event_id.clone(),
        }),
    };
    Envelope {
        // One window event per inbound event, whichever kind it turned out to be.
        event_id: format!("win:{}", e.event_id),
        tenant_id: e.key.tenant_id.clone(),
        occurred_at: Some(from_micros(e.occurred_at.micros())),
        recorded_at: Some(recorded_at),
        payload: Some(payload),
    }
}

impl Applier {
    pub async fn apply(&self, events: &[WindowEvent]) -> Result<Applied, ApplyError> {
        let mut applied = Applied {
            events: events.len(),
            ..Applied::default()
        };
        if events.is_empty() {
            return Ok(applied);
        }
        let events = first_delivery_of_each(events);
        let now = self.clock.now();
        let mut keys: Vec<PairKey> = events.iter().map(|e| e.key.clone()).collect();
        keys.sort();
        keys.dedup();

        let mut tx = self.pool.begin().await?;
        pg::lock_events(&mut tx, &events).await?;
        let recorded = pg::append_history(&mut tx, &events).await?;
        applied.new_history_rows = recorded.len() as u64;
        let mut states: BTreeMap<PairKey, WindowState> = keys
            .iter()
            .map(|k| (k.clone(), WindowState::default()))
            .collect();
        for row in pg::lock_states(&mut tx, &keys).await? {
            states.insert(row.key(), row.state());
        }

        let mut outgoing = Vec::new();
        let recorded_at = from_micros(now.micros());
        for &e in &events {
            // Only what the history recorded now changes a state: a re-delivery (even with
            // another timestamp) was applied, or refused, the first time.
            if !recorded.contains(&(e.key.tenant_id.clone(), e.event_id.clone())) {
                continue;
            }
            let Some(s) = states.get_mut(&e.key) else {
                continue;
            };
            if let Some(change) = state::apply(s, e, now) {
                match change {
                    WindowChange::Opened { .. } => applied.windows_opened += 1,
                    WindowChange::Refreshed { .. } => applied.windows_refreshed += 1,
                }
                outgoing.push(Outgoing {
                    traceparent: None,
                    topic: &self.window_topic,
                    key: kafka::conversation_key(
                        &e.key.tenant_id,
                        &e.key.phone_number_id,
                        &e.key.user,
                    ),
                    envelope: window_event(e, change, recorded_at),
                });
            }
        }
        let states: Vec<(PairKey, WindowState)> = states.into_iter().collect();
        // The window events go out while Postgres writes; both must be done before the
        // commit. Published before the commit: if the commit fails, the batch is re-applied
        // and the same event ids are published again, which consumers dedupe. Published after
        // it, a crash in between would lose them (a re-delivery finds nothing changed).
        let (published, stored) = tokio::join!(
            kafka::publish_all(&self.producer, &outgoing),
            pg::merge_states(&mut tx, &states)
        );
        let stored = stored?;
        published?;
        tx.commit().await?;
        // Redis gets the rows as Postgres stored them (merged with what was there), every
        // key of the batch: after a crash between the commit and here, the re-delivery that
        // changes nothing still brings Redis up to date.
        let stored: Vec<(PairKey, WindowState)> =
            stored.iter().map(|r| (r.key(), r.state())).collect();
        self.hot.merge_all(&stored, now).await?;
        Ok(applied)
    }
}

/// The batch with each event id once, its first delivery kept (Kafka order within a pair).
fn first_delivery_of_each(events: &[WindowEvent]) -> Vec<&WindowEvent> {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    events
        .iter()
        .filter(|e| seen.insert((e.key.tenant_id.as_str(), e.event_id.as_str())))
        .collect()
}
