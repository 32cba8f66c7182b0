//! Turns drafts into envelopes of a tenant and publishes them, returning only when the broker
//! acknowledged every one.

use finestra_domain::Clock;
use finestra_platform::Topics;
use finestra_platform::kafka::{self, BusError, Outgoing};
use finestra_proto::time::from_micros;
use finestra_proto::v1::Envelope;
use rdkafka::producer::FutureProducer;

use crate::mapping::{Draft, Stream};

fn topic(topics: &Topics, stream: Stream) -> &str {
    match stream {
        Stream::Inbound => &topics.inbound,
        Stream::Status => &topics.status,
        Stream::User => &topics.user,
        Stream::Provider => &topics.provider,
    }
}

fn label(stream: Stream) -> &'static str {
    match stream {
        Stream::Inbound => "inbound",
        Stream::Status => "status",
        Stream::User => "user",
        Stream::Provider => "provider",
    }
}

/// Publishes `(tenant, draft)` pairs; resolves after every ack. `traceparent` is the trace the
/// events continue (a webhook's), carried as a record header.
pub async fn publish(
    producer: &FutureProducer,
    topics: &Topics,
    clock: &dyn Clock,
    events: Vec<(String, Draft)>,
    traceparent: Option<&str>,
) -> Result<(), BusError> {
    if events.is_empty() {
        return Ok(());
    }
    let now = from_micros(clock.now().micros());
    let records: Vec<Outgoing<'_>> = events
        .into_iter()
        .map(|(tenant_id, d)| {
            metrics::counter!("finestra_ingest_events_total", "stream" => label(d.stream))
                .increment(1);
            let user = d.user.as_ref().map(|u| u.as_str()).unwrap_or_default();
            Outgoing {
                traceparent: traceparent.map(str::to_owned),
                topic: topic(topics, d.stream),
                key: kafka::conversation_key(&tenant_id, &d.phone_number_id, user),
                envelope: Envelope {
                    event_id: d.event_id,
                    tenant_id,
                    occurred_at: Some(d.occurred_at.map_or(now, |t| from_micros(t.micros()))),
                    recorded_at: Some(now),
                    payload: Some(d.payload),
                },
            }
        })
        .collect();
    kafka::publish_all(producer, &records).await
}
