//! Turns drafts into envelopes of a tenant and publishes them, returning only when the broker
//! acknowledged every one.

use finestra_domain::Clock;
use finestra_platform::Topics;
use finestra_platform::kafka::{self, BusError, Outgoing};
use std::collections::HashMap;

use finestra_proto::packing;
use finestra_proto::time::from_micros;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
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
///
/// The statuses of one conversation (a `sent` and a `delivered` reported together) go out as
/// one `MessageStatuses` record: every consumer reads a record once, so fewer records is less
/// work down the whole chain, and one record keeps their order as one partition would.
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
    // (topic, key, envelopes) in the order of their first event.
    let mut groups: Vec<(&str, String, Vec<Envelope>)> = Vec::new();
    let mut status_group_of: HashMap<String, usize> = HashMap::new();
    for (tenant_id, d) in events {
        metrics::counter!("finestra_ingest_events_total", "stream" => label(d.stream)).increment(1);
        let user = d.user.as_ref().map(|u| u.as_str()).unwrap_or_default();
        let key = kafka::conversation_key(&tenant_id, &d.phone_number_id, user);
        let packable = matches!(d.payload, Payload::MessageStatus(_));
        let envelope = Envelope {
            event_id: d.event_id,
            tenant_id,
            occurred_at: Some(d.occurred_at.map_or(now, |t| from_micros(t.micros()))),
            recorded_at: Some(now),
            payload: Some(d.payload),
        };
        if packable {
            if let Some(&i) = status_group_of.get(&key) {
                groups[i].2.push(envelope);
                continue;
            }
            status_group_of.insert(key.clone(), groups.len());
        }
        groups.push((topic(topics, d.stream), key, vec![envelope]));
    }
    let records: Vec<Outgoing<'_>> = groups
        .into_iter()
        .flat_map(|(topic, key, envelopes)| {
            // Several statuses of a conversation pack into one record; anything else (and a
            // status alone) is a record of its own.
            let packed = if envelopes.len() > 1 {
                match packing::pack(envelopes.clone()) {
                    Some(one) => vec![one],
                    None => envelopes,
                }
            } else {
                envelopes
            };
            packed.into_iter().map(move |envelope| Outgoing {
                traceparent: traceparent.map(str::to_owned),
                topic,
                key: key.clone(),
                envelope,
            })
        })
        .collect();
    kafka::publish_all(producer, &records).await
}
