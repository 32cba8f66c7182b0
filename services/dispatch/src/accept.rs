//! Acceptance as a group commit: concurrent sends that passed the rules are gathered into
//! batches, and each batch does one `ReserveBatch` call to billing and one multi-row INSERT
//! before anyone is answered. The per-call costs (a gRPC round trip, a Postgres commit) are
//! what limit a per-message path; batching amortises them.
//!
//! The stored row is the message's record, so the answer does not wait for the broker: the
//! batch's outbound events are put on the producer's queue in order, and the answer goes out
//! while they travel (on this machine's broker an acknowledgement took most of a send's
//! time). An event that never arrives (the process died, the broker refused it) leaves its
//! message ACCEPTED, and the re-queue sweep (`outbox.rs`) queues it again from the row; a
//! graceful stop flushes the queue first. Only the rare event that starts a free entry point
//! (for the window service) is awaited: no sweep repairs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use finestra_platform::auth::AuthedChannel;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, OutboundMessage, ReserveBatchRequest, ReserveRequest};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::pg::{self, NewMessage};

/// One admitted send waiting for its batch.
pub struct Pending {
    pub message: NewMessage,
    pub csw_open: bool,
    pub fep_open: bool,
    /// The SendMessage call's trace context: the outbound event carries it on.
    pub traceparent: Option<String>,
    pub reply: oneshot::Sender<Result<Accepted, Refused>>,
}

/// What the batch did with a send.
#[derive(Clone, Debug)]
pub enum Accepted {
    /// Reserved, stored and queued: the message as stored.
    New(Box<NewMessage>),
    /// A row with this id existed already (the key was used before): the caller compares.
    Existing,
}

#[derive(Debug)]
pub enum Refused {
    /// Billing refused the reservation (INSUFFICIENT_FUNDS, IDEMPOTENCY_CONFLICT, ...).
    Billing(Status),
    /// A store or the broker failed; nothing is known to be queued.
    Unavailable(String),
}

#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<Pending>,
}

impl Acceptor {
    pub async fn accept(&self, pending: Pending) -> Result<(), Refused> {
        self.tx
            .send(pending)
            .await
            .map_err(|_| Refused::Unavailable("dispatch is shutting down".into()))
    }
}

pub struct AcceptorSettings {
    pub pool: PgPool,
    pub billing: Vec<BillingServiceClient<AuthedChannel>>,
    pub producer: FutureProducer,
    pub outbound_topic: String,
    /// Where the window service hears of replies that start a free entry point.
    pub user_topic: String,
    pub max_batch: usize,
    pub parallel: usize,
    pub billing_timeout: Duration,
}

/// Starts `parallel` batch loops sharing one queue; they stop when every `Acceptor` is gone.
pub fn spawn(settings: AcceptorSettings) -> (Acceptor, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Pending>(settings.max_batch * settings.parallel * 4);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let settings = Arc::new(settings);
    let next_client = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        let loops: Vec<_> = (0..settings.parallel.max(1))
            .map(|_| {
                let rx = rx.clone();
                let settings = settings.clone();
                let next_client = next_client.clone();
                tokio::spawn(async move {
                    loop {
                        let mut batch = Vec::with_capacity(settings.max_batch);
                        {
                            let mut rx = rx.lock().await;
                            // Waits for the first, then takes whatever else is queued.
                            if rx.recv_many(&mut batch, settings.max_batch).await == 0 {
                                return;
                            }
                        }
                        let i = next_client.fetch_add(1, Ordering::Relaxed);
                        let client = settings.billing[i % settings.billing.len()].clone();
                        run_batch(&settings, client, batch).await;
                    }
                })
            })
            .collect();
        for l in loops {
            if let Err(e) = l.await {
                tracing::error!(error = %e, "an acceptance loop ended abnormally");
            }
        }
        // Outbound events queued but not yet delivered go out before the process does.
        let producer = settings.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(
                "queued outbound events were not all delivered at shutdown; the re-queue sweep will queue their messages again"
            );
        }
    });
    (Acceptor { tx }, task)
}

/// The outbound event of an accepted message (`out:<message_id>`, keyed by conversation).
pub fn outbound_event(m: &NewMessage, csw_open: bool) -> Envelope {
    let at = finestra_proto::time::from_micros(m.accepted_at);
    Envelope {
        event_id: format!("out:{}", m.message_id),
        tenant_id: m.tenant_id.clone(),
        occurred_at: Some(at),
        recorded_at: Some(at),
        payload: Some(Payload::OutboundMessage(OutboundMessage {
            message_id: m.message_id.clone(),
            phone_number_id: m.phone_number_id.clone(),
            to: m.recipient.clone(),
            kind: m.kind.clone(),
            body_json: m.body.clone().into_bytes(),
            accepted_at: Some(at),
            csw_open,
            starts_fep: m.starts_fep,
            business_initiated: m.business_initiated,
            category: m.category.clone(),
        })),
    }
}

/// Queues an accepted message again: a retried request found it stored but cannot know whether
/// its event reached the broker (the process that accepted it may have died in between). The
/// worker skips an event whose message is no longer ACCEPTED or is already being sent.
pub async fn requeue(
    producer: &FutureProducer,
    topic: &str,
    m: &NewMessage,
) -> Result<(), kafka::BusError> {
    let record = outbound_record(topic, m);
    kafka::publish_all(producer, std::slice::from_ref(&record)).await
}

/// The outbound record of a stored message queued again, keyed by its conversation.
pub fn outbound_record<'a>(topic: &'a str, m: &NewMessage) -> Outgoing<'a> {
    Outgoing {
        traceparent: finestra_platform::trace::current(),
        topic,
        key: kafka::conversation_key(&m.tenant_id, &m.phone_number_id, &m.recipient),
        envelope: outbound_event(m, !m.business_initiated),
    }
}

/// Follows queued outbound events to their delivery, off the answer's path: a failed one is
/// counted and logged (its message stays ACCEPTED until the re-queue sweep).
fn watch_deliveries(deliveries: Vec<rdkafka::producer::DeliveryFuture>) {
    if deliveries.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for delivery in deliveries {
            if !matches!(delivery.await, Ok(Ok(_))) {
                metrics::counter!("finestra_dispatch_outbound_undelivered_total").increment(1);
                tracing::warn!(
                    "an outbound event was not delivered; the re-queue sweep will queue its message again"
                );
            }
        }
    });
}

async fn run_batch(
    settings: &AcceptorSettings,
    mut billing: BillingServiceClient<AuthedChannel>,
    batch: Vec<Pending>,
) {
    let started = std::time::Instant::now();
    let requests: Vec<ReserveRequest> = batch
        .iter()
        .map(|p| ReserveRequest {
            tenant_id: p.message.tenant_id.clone(),
            message_id: p.message.message_id.clone(),
            phone_number_id: p.message.phone_number_id.clone(),
            recipient: p.message.recipient.clone(),
            free_form: p.message.kind != "template",
            category: p.message.category.clone(),
            csw_open: p.csw_open,
            fep_open: p.fep_open,
            accepted_at: Some(finestra_proto::time::from_micros(p.message.accepted_at)),
        })
        .collect();
    let mut call = tonic::Request::new(ReserveBatchRequest {
        reservations: requests,
    });
    call.set_timeout(settings.billing_timeout);
    let size = batch.len();
    let results = match billing.reserve_batch(call).await {
        Ok(r) => r.into_inner().results,
        Err(status) => {
            tracing::warn!(error = %status, "reserving a batch failed");
            for p in batch {
                let _ = p.reply.send(Err(Refused::Unavailable(format!(
                    "billing is unavailable: {}",
                    status.message()
                ))));
            }
            return;
        }
    };
    let mut reserved = Vec::with_capacity(batch.len());
    for (mut p, r) in batch.into_iter().zip(results) {
        match r.reserved.and_then(|res| res.quote) {
            Some(q) => {
                p.message.price_micros = q.price_micros;
                p.message.currency = q.currency;
                p.message.free = q.free;
                p.message.free_reason = q.free_reason;
                if p.message.category.is_empty() {
                    p.message.category = q.category;
                }
                reserved.push(p);
            }
            None if matches!(
                Code::from_i32(r.code),
                Code::Internal | Code::Unavailable | Code::DeadlineExceeded
            ) =>
            {
                // Billing's store failed on this one: nothing was reserved, the caller retries.
                let _ = p.reply.send(Err(Refused::Unavailable(format!(
                    "billing could not reserve: {}",
                    r.message
                ))));
            }
            None => {
                let status = finestra_platform::status::forward(
                    Code::from_i32(r.code),
                    &r.reason,
                    r.message,
                    &[("message_id", &p.message.message_id)],
                );
                let _ = p.reply.send(Err(Refused::Billing(status)));
            }
        }
    }
    let reserved_after = started.elapsed();
    let rows: Vec<NewMessage> = reserved.iter().map(|p| p.message.clone()).collect();
    let new_ids: std::collections::HashSet<String> = match pg::insert(&settings.pool, &rows).await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "storing accepted messages failed");
            for p in reserved {
                let _ = p
                    .reply
                    .send(Err(Refused::Unavailable("the message store failed".into())));
            }
            return;
        }
    };
    let stored_after = started.elapsed();
    let mut outgoing: Vec<Outgoing<'_>> = Vec::with_capacity(reserved.len());
    let mut fep_starts: Vec<Outgoing<'_>> = Vec::new();
    for p in reserved
        .iter()
        .filter(|p| new_ids.contains(&p.message.message_id))
    {
        let key = kafka::conversation_key(
            &p.message.tenant_id,
            &p.message.phone_number_id,
            &p.message.recipient,
        );
        if p.message.starts_fep {
            // The window service hears of it on the user topic it reads anyway, so it need
            // not read every outbound record for the few replies that start an FEP.
            fep_starts.push(Outgoing {
                traceparent: None,
                topic: &settings.user_topic,
                key: key.clone(),
                envelope: crate::fep::reply_event(
                    &p.message.tenant_id,
                    &p.message.message_id,
                    &p.message.phone_number_id,
                    &p.message.recipient,
                    p.message.accepted_at,
                ),
            });
        }
        outgoing.push(Outgoing {
            traceparent: p.traceparent.clone(),
            topic: &settings.outbound_topic,
            key,
            envelope: outbound_event(&p.message, p.csw_open),
        });
    }
    let produced = match kafka::publish_all(&settings.producer, &fep_starts).await {
        Ok(()) => kafka::enqueue_all(&settings.producer, &outgoing).map(watch_deliveries),
        Err(e) => Err(e),
    };
    tracing::debug!(
        size,
        reserve_ms = reserved_after.as_millis() as u64,
        store_ms = (stored_after - reserved_after).as_millis() as u64,
        queue_ms = (started.elapsed() - stored_after).as_millis() as u64,
        "accepted a batch"
    );
    for p in reserved {
        let answer = if !new_ids.contains(&p.message.message_id) {
            Ok(Accepted::Existing)
        } else if let Err(e) = &produced {
            // Stored and reserved, but not queued: the retry with the same key queues it.
            tracing::warn!(error = %e, "queueing accepted messages failed");
            Err(Refused::Unavailable(
                "the broker did not take the message; retry with the same idempotency key".into(),
            ))
        } else {
            Ok(Accepted::New(Box::new(p.message)))
        };
        let _ = p.reply.send(answer);
    }
    metrics::histogram!("finestra_dispatch_accept_batch_seconds")
        .record(started.elapsed().as_secs_f64());
}
