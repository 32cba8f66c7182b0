//! Dispatch's one event pipeline: for each batch it first moves its messages along their
//! statuses (`statuses.rs`), then copies what a tenant is told about (statuses of its
//! messages, inbound messages, window changes, blocks, marketing preferences, the network's
//! template reviews and health events) into
//! `dispatch.tenant_events` with a per-tenant cursor, fanning each event out to the tenant's
//! webhook endpoints as pending deliveries in the same transaction, and commits the offsets
//! after both. `StreamEvents` reads the log; the webhook deliverer works the deliveries.

use std::collections::HashSet;
use std::sync::Arc;

use finestra_domain::{Clock, Timestamp};
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer};
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use prost::Message as _;
use sqlx::PgPool;
use tokio::sync::Notify;

/// The kind a tenant sees, or `None` for envelopes that are not tenant events.
pub fn kind_of(env: &Envelope) -> Option<&'static str> {
    Some(match env.payload.as_ref()? {
        // Only statuses of messages Finestra sent (the network echoes our message id).
        Payload::MessageStatus(s) if !s.callback_data.is_empty() => "message_status",
        Payload::InboundMessage(_) => "inbound_message",
        Payload::WindowOpened(_) => "window_opened",
        Payload::WindowRefreshed(_) => "window_refreshed",
        Payload::WindowClosingSoon(_) => "window_closing_soon",
        Payload::WindowClosed(_) => "window_closed",
        Payload::UserBlock(_) => "user_block",
        Payload::UserPreference(_) => "user_preference",
        // The network's word on the tenant's account: template reviews and health.
        Payload::TemplateReviewed(_) => "template_review",
        Payload::HealthChanged(_) => "network_health",
        _ => return None,
    })
}

/// One event to record.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub tenant_id: String,
    pub event_id: String,
    pub kind: &'static str,
    pub occurred_at: i64,
    pub envelope: Vec<u8>,
    /// An inbound message's (number, user), so its conversation finds it.
    pub pair: Option<(String, String)>,
}

/// When the user last wrote to the number in the 24 h before `now` (the newest user message of
/// the pair in the tenant's event log, unix micros), `None` if not. A tenant hears of a user's
/// message through this log, whose webhook deliveries are written in the same transaction as
/// the event: a reply made on that news can rely on it even while the window service has not
/// caught up. System notices (a changed number) open no window and are passed over, as the
/// window service passes them over.
pub async fn newest_inbound(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    user_key: &str,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;
    let rows = sqlx::query!(
        "SELECT occurred_at, envelope FROM dispatch.tenant_events
          WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3
            AND kind = 'inbound_message' AND occurred_at > $4
          ORDER BY occurred_at DESC LIMIT 8",
        tenant_id,
        phone_number_id,
        user_key,
        now - DAY_MICROS,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().find_map(|r| {
        let env = Envelope::decode(r.envelope.as_slice()).ok()?;
        match env.payload? {
            Payload::InboundMessage(m) if m.message_type != "system" => Some(r.occurred_at),
            _ => None,
        }
    }))
}

/// The (number, user key) of an inbound message.
pub fn pair_of(env: &Envelope) -> Option<(String, String)> {
    let Some(Payload::InboundMessage(m)) = &env.payload else {
        return None;
    };
    let user = m.user.as_ref()?;
    let key = finestra_domain::UserKey::from_parts(&user.wa_id, &user.user_id).ok()?;
    Some((m.phone_number_id.clone(), key.as_str().to_owned()))
}

/// Records events (duplicates by event id are skipped) and their webhook deliveries, in one
/// statement: the cursor rows are bumped per tenant first, which locks them until commit.
pub async fn record(pool: &PgPool, events: &[Recorded], now: i64) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut tenants = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut ats = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut numbers: Vec<Option<String>> = Vec::with_capacity(events.len());
    let mut users: Vec<Option<String>> = Vec::with_capacity(events.len());
    for e in events {
        tenants.push(e.tenant_id.clone());
        ids.push(e.event_id.clone());
        kinds.push(e.kind.to_owned());
        ats.push(e.occurred_at);
        bodies.push(e.envelope.clone());
        numbers.push(e.pair.as_ref().map(|(n, _)| n.clone()));
        users.push(e.pair.as_ref().map(|(_, u)| u.clone()));
    }
    let mut tx = pool.begin().await?;
    let done = sqlx::query!(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[],
                                  $7::text[], $8::text[])
                 WITH ORDINALITY AS i(tenant_id, event_id, kind, occurred_at, envelope,
                                      phone_number_id, user_key, ord)),
         fresh AS (
             SELECT i.* FROM input i
              WHERE NOT EXISTS (SELECT 1 FROM dispatch.tenant_events e
                                 WHERE e.tenant_id = i.tenant_id AND e.event_id = i.event_id)),
         counts AS (SELECT tenant_id, count(*) AS n FROM fresh GROUP BY tenant_id),
         bumped AS (
             INSERT INTO dispatch.tenant_cursors AS c (tenant_id, next_seq)
             SELECT tenant_id, n FROM counts
             ON CONFLICT (tenant_id) DO UPDATE SET next_seq = c.next_seq + EXCLUDED.next_seq
             RETURNING tenant_id, next_seq),
         numbered AS (
             SELECT f.*, b.next_seq - count(*) OVER (PARTITION BY f.tenant_id)
                         + row_number() OVER (PARTITION BY f.tenant_id ORDER BY f.ord) AS seq
               FROM fresh f JOIN bumped b USING (tenant_id)),
         ins AS (
             INSERT INTO dispatch.tenant_events (tenant_id, seq, event_id, kind, occurred_at, envelope,
                                                 phone_number_id, user_key)
             SELECT tenant_id, seq, event_id, kind, occurred_at, envelope, phone_number_id, user_key
               FROM numbered
             ON CONFLICT DO NOTHING
             RETURNING tenant_id, seq, kind)
         INSERT INTO dispatch.webhook_deliveries (tenant_id, endpoint_id, seq, first_at, next_attempt_at)
         SELECT ins.tenant_id, w.endpoint_id, ins.seq, $6, $6
           FROM ins JOIN dispatch.webhook_endpoints w
             ON w.tenant_id = ins.tenant_id AND w.deleted_at IS NULL
            -- A Cloud API endpoint gets only what the Cloud API has a notification for.
            AND (w.format = 'finestra' OR ins.kind = ANY($9))",
        &tenants,
        &ids,
        &kinds,
        &ats,
        &bodies,
        now,
        &numbers as &[Option<String>],
        &users as &[Option<String>],
        &crate::webhooks::cloud::KINDS.map(str::to_owned) as &[String],
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

pub struct EventLoop {
    pub consumer: BatchConsumer,
    pub pool: PgPool,
    /// Message states move with the statuses of each batch before it is recorded.
    pub statuses: crate::statuses::StatusApplier,
    pub clock: Arc<dyn Clock>,
    /// Wakes streams and the webhook deliverer after new events were recorded.
    pub recorded: Arc<Notify>,
    /// How long after a referral message its first reply is looked for (`fep.rs`).
    pub fep_grace: std::time::Duration,
    /// Test failpoint (feature `failpoints`): abort after this many batches were written, before
    /// their offsets are committed.
    pub crash_after_batches: Option<u64>,
}

impl EventLoop {
    pub async fn run(self, shutdown: Shutdown) {
        let mut last = None;
        let mut batches_written = 0u64;
        while let Some(batch) = self.consumer.next_batch_until_shutdown(&shutdown).await {
            let now = self.clock.now().micros();
            let envelopes: Vec<Envelope> = batch
                .iter()
                .filter_map(|m| kafka::decode_all(m).ok())
                .flatten()
                .collect();
            if !self.statuses.apply(&envelopes, now, &shutdown).await {
                return;
            }
            let mut seen = HashSet::new();
            let mut referrals = Vec::new();
            let files: Vec<crate::media::Pending> = envelopes
                .iter()
                .filter_map(crate::media::pending_of)
                .collect();
            let contacts_seen: Vec<crate::contacts::store::Seen> = envelopes
                .iter()
                .filter_map(crate::contacts::store::seen_of)
                .collect();
            let preferences: Vec<_> = envelopes
                .iter()
                .filter_map(crate::contacts::store::preference_change_of)
                .collect();
            let keyworded: Vec<crate::auto_reply::Keyworded> = envelopes
                .iter()
                .filter_map(crate::auto_reply::keyworded)
                .collect();
            let events: Vec<Recorded> = envelopes
                .iter()
                .filter_map(|env| {
                    referrals.extend(crate::fep::check_of(env));
                    let kind = kind_of(env)?;
                    if env.tenant_id.is_empty() || !seen.insert(env.event_id.clone()) {
                        return None;
                    }
                    Some(Recorded {
                        tenant_id: env.tenant_id.clone(),
                        event_id: env.event_id.clone(),
                        kind,
                        occurred_at: env
                            .occurred_at
                            .as_ref()
                            .map_or(now, finestra_proto::time::to_micros),
                        envelope: env.encode_to_vec(),
                        pair: pair_of(env),
                    })
                })
                .collect();
            let fep_due =
                now.saturating_add(i64::try_from(self.fep_grace.as_micros()).unwrap_or(i64::MAX));
            let mut attempt = 0;
            loop {
                let written = async {
                    record(&self.pool, &events, now).await?;
                    crate::media::note(&self.pool, &files).await?;
                    crate::contacts::store::note_inbound(&self.pool, &contacts_seen).await?;
                    crate::contacts::store::note_preferences(
                        &self.pool,
                        &preferences,
                        Timestamp::from_micros(now),
                    )
                    .await?;
                    crate::auto_reply::note(&self.pool, &keyworded).await?;
                    crate::fep::note(&self.pool, &referrals, fep_due).await
                };
                match written.await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "recording tenant events failed; retrying")
                    }
                }
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(kafka::retry_backoff(attempt)) => {}
                }
                attempt += 1;
            }
            batches_written += 1;
            #[cfg(feature = "failpoints")]
            if self.crash_after_batches == Some(batches_written) {
                tracing::error!(
                    "failpoint: aborting after the event batch was written, before the commit"
                );
                std::process::abort();
            }
            #[cfg(not(feature = "failpoints"))]
            let _ = (self.crash_after_batches, batches_written);
            if !events.is_empty() {
                self.recorded.notify_waiters();
            }
            if let Err(e) = self.consumer.commit_async(&batch) {
                tracing::warn!(error = %e, "committing event offsets failed; replay is harmless");
            }
            last = Some(batch);
        }
        if let Some(batch) = last
            && let Err(e) = self.consumer.commit(&batch).await
        {
            tracing::warn!(error = %e, "the final event commit failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_proto::v1::{DeadLetter, MessageStatus};

    #[test]
    fn tenants_see_their_messages_statuses_and_conversation_events_only() {
        let env = |payload| Envelope {
            payload: Some(payload),
            ..Envelope::default()
        };
        let ours = MessageStatus {
            callback_data: "m_1".into(),
            ..MessageStatus::default()
        };
        assert_eq!(
            kind_of(&env(Payload::MessageStatus(ours))),
            Some("message_status")
        );
        assert_eq!(
            kind_of(&env(Payload::MessageStatus(MessageStatus::default()))),
            None,
            "a status of a message Finestra did not send"
        );
        assert_eq!(
            kind_of(&env(Payload::DeadLetter(DeadLetter::default()))),
            None
        );
    }
}
