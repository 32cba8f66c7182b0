//! Kafka clients: an idempotent producer of `Envelope`s, a batch consumer that commits only
//! when told (after the caller's effects are durable), and topic creation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{DeadLetter, Envelope};

use crate::config::KafkaSettings;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: String },
    #[error("a blocking broker call was cancelled")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The producer: `acks=all`, one request in flight per broker connection, so a partition's
/// records keep their order across retries. It is not librdkafka's idempotent producer: that
/// one (2.12) keeps at most 5 records of a partition in flight and, while a batch that size
/// waits for its acknowledgement, its broker thread wakes without sleeping (the batch's linger
/// has passed but it may not be sent). With a broker that takes milliseconds per request this
/// cost dispatch and ingest most of their CPU (docs/events.md, "Producers"). A retry after a
/// lost acknowledgement can write a record twice; every consumer already drops a repeated
/// `event_id`, as it must for redelivery. `FINESTRA_KAFKA_PRODUCER_CONFIG` can set it back.
pub fn producer(brokers: &str) -> Result<FutureProducer, BusError> {
    let tuning = KafkaSettings::from_env()?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        .set("linger.ms", tuning.linger.as_millis().to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "30000");
    for pair in tuning
        .producer_config
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (key, value) =
            pair.split_once('=')
                .ok_or_else(|| crate::config::ConfigError::Invalid {
                    name: "FINESTRA_KAFKA_PRODUCER_CONFIG".to_owned(),
                    value: tuning.producer_config.clone(),
                    reason: format!("{pair:?} is not key=value"),
                })?;
        config.set(key.trim(), value.trim());
    }
    Ok(config.create()?)
}

/// One record to publish.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: String,
    pub envelope: Envelope,
    /// The W3C trace context of the work this record continues (a Kafka header).
    pub traceparent: Option<String>,
}

/// Publishes every record and resolves when the broker acknowledged all of them; the first
/// failure is returned (the caller then answers an error so the source retries).
pub async fn publish_all(
    producer: &FutureProducer,
    records: &[Outgoing<'_>],
) -> Result<(), BusError> {
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.envelope.encode_to_vec()).collect();
    let sends = records
        .iter()
        .zip(&payloads)
        .map(|(r, payload)| producer.send(future_record(r, payload), Duration::from_secs(10)));
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Puts every record on the producer's queue, in order, without waiting for the broker: for
/// records whose loss a sweep repairs (dispatch's outbound events, re-queued from their stored
/// rows). Fails at once when the queue refuses one (it is full: the broker has been away long);
/// the returned futures resolve with each delivery.
pub fn enqueue_all(
    producer: &FutureProducer,
    records: &[Outgoing<'_>],
) -> Result<Vec<rdkafka::producer::DeliveryFuture>, BusError> {
    let mut deliveries = Vec::with_capacity(records.len());
    for r in records {
        let payload = r.envelope.encode_to_vec();
        let delivery = producer
            .send_result(future_record(r, &payload))
            .map_err(|(e, _)| e)?;
        deliveries.push(delivery);
    }
    Ok(deliveries)
}

fn future_record<'a>(r: &'a Outgoing<'_>, payload: &'a [u8]) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::to(r.topic)
        .key(r.key.as_bytes())
        .payload(payload);
    if let Some(tp) = &r.traceparent {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: crate::trace::TRACEPARENT,
            value: Some(tp.as_str()),
        }));
    }
    record
}

/// The record key of a conversation: `tenant:number:user`, so one conversation is ordered on
/// one partition.
pub fn conversation_key(tenant_id: &str, phone_number_id: &str, user: &str) -> String {
    format!("{tenant_id}:{phone_number_id}:{user}")
}

/// Creates the topics that do not exist yet (existing ones are left alone).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Consumer settings of a group.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Upper bound of records handed out in one batch.
    pub max_batch: usize,
    /// How long to wait for more records once the first one of a batch arrived.
    pub linger: Duration,
}

/// Logs every assignment change of a group member and exports how many partitions it owns
/// (`finestra_kafka_assigned_partitions{group}`): a member that owns none while its topics have
/// records is the first thing to look at when a consumer group stalls.
pub struct AssignmentLog {
    group: String,
}

impl rdkafka::client::ClientContext for AssignmentLog {}

impl ConsumerContext for AssignmentLog {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
                metrics::gauge!("finestra_kafka_assigned_partitions", "group" => self.group.clone())
                    .set(tpl.count() as f64);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
                metrics::gauge!("finestra_kafka_assigned_partitions", "group" => self.group.clone())
                    .set(0.0);
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed");
            }
        }
    }
}

/// A consumer group member that hands out bounded batches and commits only when told: the
/// caller commits after the batch's effects are durable, so a crash re-delivers the batch.
pub struct BatchConsumer {
    consumer: Arc<StreamConsumer<AssignmentLog>>,
    settings: ConsumerSettings,
}

impl BatchConsumer {
    pub fn new(settings: ConsumerSettings) -> Result<Self, BusError> {
        let tuning = KafkaSettings::from_env()?;
        let consumer: StreamConsumer<AssignmentLog> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            // Also the rebalance timeout: how long a rebalance waits for a member that died
            // without leaving (SIGKILL, lost node) before the survivors get its partitions.
            // A batch is applied well within it.
            .set("max.poll.interval.ms", "20000")
            .set(
                "fetch.wait.max.ms",
                tuning.fetch_wait.as_millis().to_string(),
            )
            .set("fetch.min.bytes", tuning.fetch_min_bytes.to_string())
            .create_with_context(AssignmentLog {
                group: settings.group_id.clone(),
            })?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            settings,
        })
    }

    /// Waits for the next batch: at least one record (or an empty batch when shutdown begins),
    /// at most `max_batch`, gathering for at most `linger` after the first.
    pub async fn next_batch(&self, shutdown: &Shutdown) -> Result<Vec<OwnedMessage>, BusError> {
        let mut batch = Vec::new();
        tokio::select! {
            () = shutdown.wait() => return Ok(batch),
            first = self.consumer.recv() => batch.push(first?.detach()),
        }
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        while batch.len() < self.settings.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                // The records gathered so far were taken from the consumer's queue: they are
                // handed out, never dropped (dropping them and committing later records would
                // skip them for good). Errors here are mostly a broker connection going away.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, group = %self.settings.group_id, "consuming paused; handing out the partial batch");
                    break;
                }
                Err(_) => break,
            }
        }
        self.record_lag(&batch);
        Ok(batch)
    }

    /// `finestra_kafka_consumer_lag_seconds{group, topic}`: how old the newest record of the
    /// batch is (its producer timestamp), per topic. Labels are bounded: a service's groups
    /// and topics are fixed by its configuration.
    fn record_lag(&self, batch: &[OwnedMessage]) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut newest: Vec<(&str, i64)> = Vec::new();
        for m in batch {
            let Some(ts) = m.timestamp().to_millis() else {
                continue;
            };
            match newest.iter_mut().find(|(t, _)| *t == m.topic()) {
                Some((_, at)) => *at = (*at).max(ts),
                None => newest.push((m.topic(), ts)),
            }
        }
        for (topic, at) in newest {
            metrics::gauge!(
                "finestra_kafka_consumer_lag_seconds",
                "group" => self.settings.group_id.clone(),
                "topic" => topic.to_owned(),
            )
            .set((now_ms - at).max(0) as f64 / 1_000.0);
        }
    }

    /// The next non-empty batch; a failing broker is retried after a pause. `None` once
    /// shutdown began (the caller then stops).
    pub async fn next_batch_until_shutdown(
        &self,
        shutdown: &Shutdown,
    ) -> Option<Vec<OwnedMessage>> {
        loop {
            match self.next_batch(shutdown).await {
                Ok(batch) if !batch.is_empty() => return Some(batch),
                Ok(_) if shutdown.is_triggered() => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, group = %self.settings.group_id, "consuming failed; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Commits, per partition, the offset after the last record of `batch` (synchronously, on
    /// a blocking thread).
    pub async fn commit(&self, batch: &[OwnedMessage]) -> Result<(), BusError> {
        let tpl = next_offsets(batch)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await??;
        Ok(())
    }

    /// Like `commit`, without waiting for the broker: for a consumer that commits after every
    /// batch, where a lost commit only means a replay of an idempotent batch. Finish with a
    /// synchronous `commit` of the last batch before stopping.
    pub fn commit_async(&self, batch: &[OwnedMessage]) -> Result<(), BusError> {
        let tpl = next_offsets(batch)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }

    /// Commits the given next offsets (topic, partition, offset of the next record to read),
    /// without waiting: for consumers that finish records out of order and track themselves
    /// how far each partition is done (see `offsets::InFlight`).
    pub fn commit_positions(&self, positions: &[(String, i32, i64)]) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }

    /// Like `commit_positions`, waiting for the broker (the last commit before stopping).
    pub async fn commit_positions_sync(
        &self,
        positions: &[(String, i32, i64)],
    ) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await??;
        Ok(())
    }

    /// The partitions of `topic` this member holds now (empty while it holds none).
    pub fn assigned(&self, topic: &str) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements_for_topic(topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn group_id(&self) -> &str {
        &self.settings.group_id
    }
}

/// Per partition, the offset after the last record of `batch`.
fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, BusError> {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for m in batch {
        let e = next
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// Backoff between retries of a failing batch: doubling from 100 ms, capped at 5 s.
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// The dead letter of a record `consumer` could not process: the record whole, with the
/// error, for `finestra.dlq.v1` (and a later redrive). Its id is stable per record and consumer.
pub fn dead_letter(m: &OwnedMessage, consumer: &str, error: String) -> Envelope {
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

/// Decodes an `Envelope` from a record.
/// The `traceparent` header of a consumed record, if the producer set one.
pub fn traceparent(message: &OwnedMessage) -> Option<&str> {
    use rdkafka::message::Headers as _;
    message.headers()?.iter().find_map(|h| {
        (h.key == crate::trace::TRACEPARENT)
            .then(|| h.value.and_then(|v| std::str::from_utf8(v).ok()))
            .flatten()
    })
}

pub fn decode(message: &OwnedMessage) -> Result<Envelope, prost::DecodeError> {
    Envelope::decode(message.payload().unwrap_or_default())
}

/// The events a record carries, in order: one, or each status of a `MessageStatuses` record
/// as an envelope of its own (`finestra_proto::packing`).
pub fn decode_all(message: &OwnedMessage) -> Result<Vec<Envelope>, prost::DecodeError> {
    decode(message).map(finestra_proto::packing::unpack)
}
