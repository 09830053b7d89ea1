//! The Kafka bus: publishes are produced to the channel's topic, and every instance consumes
//! every partition of every topic into its own Hub, so a user gets a message on whichever
//! instance they are connected to.
//!
//! Decisions:
//! - **No consumer group.** Each instance assigns itself all partitions (a shared group would
//!   split the messages between instances) and never commits offsets.
//! - **The log, read back.** When a partition is first assigned, the consumer starts at the
//!   recent past: the first record of the last `--history-ttl` (found by timestamp), at most
//!   `--kafka-history-records` records before the end. Records from before this process
//!   started go into the histories only, so a client resuming here with `Last-Event-ID` gets
//!   exactly what it missed, even on a restarted or new instance; every record produced after
//!   the start is delivered to the open streams, however late the broker appears (see
//!   [`super::partitions`]). `/readyz` says 503 until the read-back is done and the lag is at
//!   most `--kafka-ready-lag`.
//! - **Partitions added** to a topic are found by a metadata refresh every
//!   `--kafka-metadata-refresh` and consumed from their start of the same rule, so no record
//!   in them is missed.
//! - **Ids are Kafka positions** (`{partition}-{offset}`): the same message has the same id on
//!   every instance, so a client can resume on another instance with `Last-Event-ID`.
//! - **Wire format** (both topics): key = user, value = `user:message`, split at the FIRST `:`;
//!   an optional header `event` carries the SSE event type, and an optional header `event-id`
//!   (a UUID) an id chosen before producing (the report outbox's): that id replaces the Kafka
//!   position, and a record whose id the user's history already holds is not delivered again.
//! - **Poison messages** (no `:`, empty or invalid user, empty message, invalid UTF-8, null
//!   payload, over the body limit, invalid `event` header) are logged with partition and
//!   offset, counted, and skipped: never a panic, a retry loop or a stuck partition.
//! - **The poll loop never blocks**: handing a message to the Hub is a non-blocking push.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::MessageKeys;
use super::partitions::{self, Kind, Part, Partitions};
use super::{Bus, BusError, BusHealth, Delivery, Message};
use crate::domain::{Channel, EventId, EventName, Username};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reports::idempotency::valid_key;

/// Longest the health probe waits for the broker's metadata: a busy broker that answers in
/// this time is up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Header with the SSE event type.
const EVENT_HEADER: &str = "event";
/// Header with an id chosen before producing (a UUID).
const EVENT_ID_HEADER: &str = "event-id";
/// Header with the publishing request's `Idempotency-Key`.
const KEY_HEADER: &str = "idempotency-key";

/// Settings of the Kafka bus.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic of `/v3` messages.
    pub topic_v3: String,
    /// Topic of `/v4` events.
    pub topic_v4: String,
    /// Longest a publish waits for the broker's acknowledgement.
    pub timeout: Duration,
    /// Largest accepted message (as for HTTP bodies).
    pub max_message_bytes: usize,
    /// How far back in time the read-back goes (the histories' lifetime).
    pub history_ttl: Duration,
    /// At most this many records per partition are read back.
    pub history_records: u64,
    /// Most records behind the end for the instance to be ready.
    pub ready_lag: u64,
    /// How often the topics' partitions are listed again.
    pub metadata_refresh: Duration,
    /// Longest a fetch waits at the broker for new records (`fetch.wait.max.ms`).
    pub fetch_wait: Duration,
    /// When this process started (milliseconds since the epoch): records from then on are live.
    pub start_ms: i64,
}

/// State shared by the bus, its consumer task and its health probe.
struct Shared {
    /// Written by the consumer task and the probe, read by `/readyz` and publishes.
    /// A std `Mutex`: tiny critical sections, never held across `.await`.
    health: Mutex<Health>,
}

#[derive(Clone)]
struct Health {
    /// Set by the probe: `Err` while the broker does not answer.
    reachable: Result<(), String>,
    /// Set by the consumer: `Ok` once every partition is assigned, else why not yet.
    assigned: Result<(), String>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn get(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The producer, made again when librdkafka reports a fatal error: an idempotent producer that
/// hit one (the broker lost its producer state, say) fails every send until it is replaced, so
/// without this an instance could publish nothing more until restarted.
struct ProducerSlot {
    config: ClientConfig,
    current: std::sync::RwLock<FutureProducer>,
}

impl ProducerSlot {
    fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let current = std::sync::RwLock::new(config.create()?);
        Ok(Self { config, current })
    }

    /// The producer to use now; a new one first if the current one hit a fatal error.
    fn get(&self) -> FutureProducer {
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((code, reason)) = current.client().fatal_error() else {
            return current;
        };
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if slot.client().fatal_error().is_none() {
            return slot.clone(); // replaced meanwhile
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::error!(?code, %reason, "the Kafka producer hit a fatal error; it was replaced by a new one");
                let old = std::mem::replace(&mut *slot, fresh.clone());
                // Dropping a producer flushes it (up to 500 ms): not on a connection thread.
                drop(current);
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
                    Err(_) => drop(old),
                }
                fresh
            }
            Err(e) => {
                tracing::error!(?code, %reason, error = %e, "the Kafka producer hit a fatal error and no new one could be made");
                current
            }
        }
    }
}

/// Publishes to Kafka and consumes every partition into the local Hub.
pub struct KafkaBus {
    producer: Arc<ProducerSlot>,
    hub: Hub,
    config: KafkaConfig,
    shared: Arc<Shared>,
    partitions: Arc<Partitions>,
}

impl KafkaBus {
    /// Creates the producer and consumer and spawns the consumer loop and the health probe
    /// on `tasks`. Nothing here waits for the broker: HTTP is served at once and the consumer
    /// connects when the broker is reachable.
    ///
    /// Fails only on an invalid client configuration (e.g. a malformed broker list).
    pub fn start(
        config: KafkaConfig,
        hub: Hub,
        keys: Arc<MessageKeys>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, KafkaError> {
        let timeout_ms = config.timeout.as_millis().to_string();
        let mut producer_config = ClientConfig::new();
        producer_config
            .set("bootstrap.servers", &config.brokers)
            .set("message.timeout.ms", &timeout_ms)
            .set("acks", "all")
            // The client's own retries (a lost acknowledgement, a reconnect) never write a
            // record twice: the broker drops a repeat by producer id and sequence number.
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("reconnect.backoff.max.ms", "1000");
        let producer = Arc::new(ProducerSlot::new(producer_config)?);
        let group = format!(
            "server_sent_events-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            // Required by the client; never joined (we assign partitions) nor committed to.
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A position the log no longer holds (retention, a recreated topic): start over at
            // its beginning; records from before this process started are not sent live.
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().max(1).to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000")
            .create()?;
        let shared = Arc::new(Shared {
            health: Mutex::new(Health {
                reachable: Err("connecting to the broker".to_owned()),
                assigned: Err("waiting for partition assignment".to_owned()),
            }),
        });
        let topics = vec![
            (config.topic_v3.clone(), Channel::V3),
            (config.topic_v4.clone(), Channel::V4),
        ];
        let consumer = Arc::new(consumer);
        let partitions = Arc::new(Partitions::new(
            config.start_ms,
            config.history_ttl,
            config.ready_lag,
        ));
        tasks.spawn(consume(
            consumer.clone(),
            topics.clone(),
            Sink {
                hub: hub.clone(),
                keys,
                metrics,
            },
            config.max_message_bytes,
            partitions.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(track(
            consumer,
            topics.into_iter().map(|(t, _)| t).collect(),
            ReadBack {
                ttl: config.history_ttl,
                records: config.history_records,
            },
            config.metadata_refresh,
            partitions.clone(),
            shared.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(probe(
            producer.clone(),
            config.topic_v3.clone(),
            shared.clone(),
            shutdown,
        ));
        Ok(Arc::new(Self {
            producer,
            hub,
            config,
            shared,
            partitions,
        }))
    }

    fn topic_of(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::V3 => Some(&self.config.topic_v3),
            Channel::V4 => Some(&self.config.topic_v4),
            Channel::V1 | Channel::V2 => None,
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, m: Message) -> Result<Delivery, BusError> {
        let Some(topic) = self.topic_of(m.channel) else {
            let published = super::publish_here(&self.hub, m);
            return Ok(Delivery::Local {
                delivered: published.delivered,
                id: published.id,
            });
        };
        if let BusHealth::Down(reason) = self.health() {
            return Err(BusError::Unavailable(reason));
        }
        let payload = format!("{}:{}", m.user, m.data);
        let mut headers = OwnedHeaders::new();
        if let Some(event) = &m.event {
            headers = headers.insert(Header {
                key: EVENT_HEADER,
                value: Some(event.as_str()),
            });
        }
        if let Some(id) = &m.id {
            headers = headers.insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(id.as_str()),
            });
        }
        if let Some(key) = &m.key {
            headers = headers.insert(Header {
                key: KEY_HEADER,
                value: Some(key.as_str()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(&m.user)
            .payload(&payload)
            .headers(headers);
        let producer = self.producer.get();
        let send = producer.send(record, Timeout::After(self.config.timeout));
        // message.timeout.ms bounds the send; the outer timeout is a safety net.
        match tokio::time::timeout(self.config.timeout + Duration::from_secs(1), send).await {
            Ok(Ok(delivery)) => Ok(Delivery::Cluster {
                id: m.id.unwrap_or_else(|| {
                    EventId::pair(delivery.partition as u64, delivery.offset as u64)
                }),
            }),
            Ok(Err((e, _))) => Err(BusError::Unavailable(format!(
                "the broker did not acknowledge the message: {e}"
            ))),
            Err(_) => Err(BusError::Unavailable(
                "the broker did not acknowledge the message in time".to_owned(),
            )),
        }
    }

    fn health(&self) -> BusHealth {
        let h = self.shared.get();
        match h.reachable.and(h.assigned) {
            Ok(()) => BusHealth::Ok,
            Err(e) => BusHealth::Down(e),
        }
    }

    fn readiness(&self) -> BusHealth {
        match self.health() {
            BusHealth::Ok => {}
            other => return other,
        }
        let p = self.partitions.progress();
        if p.caught_up {
            BusHealth::Ok
        } else {
            BusHealth::CatchingUp {
                remaining: p.remaining,
                lag: p.lag,
            }
        }
    }

    async fn wait_caught_up(&self, channel: Channel, last_event_id: &str, limit: Duration) -> bool {
        let Some(topic) = self.topic_of(channel) else {
            return true;
        };
        let start = tokio::time::Instant::now();
        if !self.partitions.wait_caught_up(limit).await {
            return false;
        }
        // A Kafka position (`partition-offset`): also wait for that very record.
        match EventId::parse_pair(last_event_id) {
            Some((partition, offset)) => match (i32::try_from(partition), i64::try_from(offset)) {
                (Ok(partition), Ok(offset)) => {
                    let left = limit.saturating_sub(start.elapsed());
                    self.partitions
                        .wait_consumed(topic, partition, offset, left)
                        .await
                }
                _ => true,
            },
            None => true,
        }
    }

    fn metrics_text(&self) -> String {
        self.partitions.render_metrics()
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        let _ = self
            .producer
            .get()
            .flush(Timeout::After(Duration::from_secs(1)));
    }
}

/// Hands every consumed record to the Hub, live or for replay only (see
/// [`super::partitions`]), until shutdown. Partitions are assigned by [`track`].
async fn consume(
    consumer: Arc<StreamConsumer>,
    topics: Vec<(String, Channel)>,
    sink: Sink,
    max_bytes: usize,
    partitions: Arc<Partitions>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                let Some(channel) = topics
                    .iter()
                    .find(|(t, _)| t == message.topic())
                    .map(|(_, c)| *c)
                else {
                    continue;
                };
                let (kind, rewound) = partitions.consumed(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    message.timestamp().to_millis(),
                );
                if rewound {
                    // Records below the position again: a broker redelivering (they repeat
                    // ids the histories hold, and are dropped as repeats), or a log that
                    // started over (a recreated topic: see the README).
                    tracing::warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "kafka partition went back below the consumed position"
                    );
                }
                if kind != Kind::Stale {
                    sink.handle(&message, channel, max_bytes, kind == Kind::Live);
                }
            }
            Err(e) => {
                // Transport errors are retried by the client itself; keep polling.
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// How much of the log's past is read back into the histories.
#[derive(Debug, Clone, Copy)]
struct ReadBack {
    ttl: Duration,
    records: u64,
}

/// Assigns every partition of `topics` (retrying with a capped backoff until the broker
/// answers), then every second notes each partition's end and the consumer's position, and
/// every `refresh` looks for partitions added since.
async fn track(
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    read_back: ReadBack,
    refresh: Duration,
    partitions: Arc<Partitions>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut listed: Option<tokio::time::Instant> = None;
    loop {
        let first = listed.is_none();
        if listed.is_none_or(|at| at.elapsed() >= refresh) {
            let (c, names, known) = (consumer.clone(), topics.clone(), partitions.known());
            let found = tokio::task::spawn_blocking(move || {
                let new = discover(&c, &names, &known, read_back)?;
                if !new.is_empty() {
                    assign(&c, &new, known.is_empty())?;
                }
                Ok::<_, String>(new)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match found {
                Ok(new) => {
                    listed = Some(tokio::time::Instant::now());
                    if !new.is_empty() {
                        let to_read: i64 = new.iter().map(|(_, _, p)| p.target - p.next).sum();
                        tracing::info!(
                            partitions = new.len(),
                            records_to_read_back = to_read,
                            "kafka partitions assigned"
                        );
                        partitions.add(&new);
                    }
                    shared.update(|h| h.assigned = Ok(()));
                }
                Err(e) if first => {
                    tracing::warn!(error = %e, "kafka not ready, retrying");
                    shared.update(|h| h.assigned = Err(e));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "kafka metadata refresh failed"),
            }
        }
        let (c, known) = (consumer.clone(), partitions.known());
        let ends = tokio::task::spawn_blocking(move || ends(&c, &known))
            .await
            .unwrap_or_default();
        for (topic, partition, high, position) in ends {
            partitions.observed(&topic, partition, high, position);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The partitions of `topics` not in `known`, each with where its read-back starts and its
/// end. Blocking (librdkafka calls). Fails when a topic does not exist.
fn discover(
    consumer: &StreamConsumer,
    topics: &[String],
    known: &[(String, i32)],
    read_back: ReadBack,
) -> Result<Vec<(String, i32, Part)>, String> {
    let timeout = Duration::from_secs(3);
    let horizon =
        partitions::now_ms() - i64::try_from(read_back.ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let mut new = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("cannot read metadata of topic {topic}: {e}"))?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(format!(
                "topic {topic} does not exist (or has no partitions)"
            ));
        }
        for partition in ids {
            if known.iter().any(|(t, p)| t == topic && *p == partition) {
                continue;
            }
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| format!("cannot read the end of {topic}/{partition}: {e}"))?;
            let mut at = TopicPartitionList::new();
            at.add_partition_offset(topic, partition, Offset::Offset(horizon))
                .map_err(|e| e.to_string())?;
            let by_time = consumer
                .offsets_for_times(at, timeout)
                .map_err(|e| format!("cannot find the horizon of {topic}/{partition}: {e}"))?
                .find_partition(topic, partition)
                .and_then(|e| offset_of(e.offset()));
            let start = partitions::read_back_start(low, high, by_time, read_back.records);
            new.push((topic.clone(), partition, Part::new(start, high)));
        }
    }
    Ok(new)
}

/// Assigns `new` partitions at their read-back start: the whole assignment when `first`, else
/// added to it. Blocking.
fn assign(
    consumer: &StreamConsumer,
    new: &[(String, i32, Part)],
    first: bool,
) -> Result<(), String> {
    let mut list = TopicPartitionList::new();
    for (topic, partition, part) in new {
        list.add_partition_offset(topic, *partition, Offset::Offset(part.next))
            .map_err(|e| e.to_string())?;
    }
    if first {
        consumer.assign(&list)
    } else {
        consumer.incremental_assign(&list)
    }
    .map_err(|e| format!("cannot assign partitions: {e}"))
}

/// The end of each `known` partition and the consumer's position in it; partitions whose end
/// cannot be read now are left out. Blocking.
fn ends(
    consumer: &StreamConsumer,
    known: &[(String, i32)],
) -> Vec<(String, i32, i64, Option<i64>)> {
    let positions = consumer.position().ok();
    known
        .iter()
        .filter_map(|(topic, partition)| {
            let (_, high) = consumer
                .fetch_watermarks(topic, *partition, Duration::from_secs(1))
                .ok()?;
            let position = positions
                .as_ref()
                .and_then(|l| l.find_partition(topic, *partition))
                .and_then(|e| offset_of(e.offset()));
            Some((topic.clone(), *partition, high, position))
        })
        .collect()
}

/// A concrete offset (not "end", "beginning" or "invalid").
fn offset_of(offset: Offset) -> Option<i64> {
    match offset {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// Checks every second that the broker answers the producer's client, for `/readyz` and to
/// refuse publishes fast during an outage. (The consumer's client was used before; under load
/// it kept timing out for tens of seconds after a broker restart while producing worked.)
async fn probe(
    producer: Arc<ProducerSlot>,
    topic: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let p = producer.get();
        let t = topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), PROBE_TIMEOUT)
                .map(|_| ())
                .map_err(|e| format!("broker unreachable: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let was_reachable = shared.get().reachable.is_ok();
        match &result {
            Ok(()) if !was_reachable => tracing::info!("kafka broker reachable"),
            Err(e) if was_reachable => tracing::warn!(error = %e, "kafka broker unreachable"),
            _ => {}
        }
        shared.update(|h| h.reachable = result);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Where consumed messages go: the Hub, once per idempotency key.
struct Sink {
    hub: Hub,
    keys: Arc<MessageKeys>,
    metrics: Arc<Metrics>,
}

impl Sink {
    /// Hands one consumed message to the Hub, or skips it as a repeat or as poison.
    /// `live`: sent to the open streams too; else kept for replay only (read back).
    fn handle(
        &self,
        message: &BorrowedMessage<'_>,
        channel: Channel,
        max_bytes: usize,
        live: bool,
    ) {
        let (partition, offset) = (message.partition(), message.offset());
        match parse(message, max_bytes) {
            Ok(Parsed {
                user,
                event,
                data,
                id,
                key,
            }) => {
                let id = id.unwrap_or_else(|| EventId::pair(partition as u64, offset as u64));
                if let Some(key) = key {
                    let fingerprint = MessageKeys::fingerprint(channel, event.as_ref(), data);
                    if !self.keys.consumed(user.as_str(), key, fingerprint, &id) {
                        self.metrics.message_repeats.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(partition, offset, "repeat of an idempotency key dropped");
                        return;
                    }
                }
                if live {
                    self.hub
                        .publish_with_id(channel, user.as_str(), event.as_ref(), data, id);
                } else {
                    self.hub
                        .remember_with_id(channel, user.as_str(), event.as_ref(), data, id);
                }
            }
            Err(reason) => {
                self.metrics.kafka_poison.add(channel, 1);
                tracing::warn!(
                    topic = message.topic(),
                    partition,
                    offset,
                    reason,
                    "skipping poison kafka message"
                );
            }
        }
    }
}

/// A consumed message's parts.
struct Parsed<'m> {
    user: Username,
    event: Option<EventName>,
    data: &'m str,
    /// The id chosen before producing.
    id: Option<EventId>,
    /// The publishing request's `Idempotency-Key`.
    key: Option<&'m str>,
}

/// Splits a message into its [`Parsed`] parts, or says why it is unusable.
fn parse<'m>(message: &'m BorrowedMessage<'_>, max_bytes: usize) -> Result<Parsed<'m>, String> {
    let header = |key: &str| -> Result<Option<&'m str>, String> {
        match message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == key))
        {
            Some(Header { value: Some(v), .. }) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| format!("{key} header is not UTF-8")),
            _ => Ok(None),
        }
    };
    let event = header(EVENT_HEADER)?
        .map(|name| EventName::parse(name).map_err(|e| format!("invalid event header: {e}")))
        .transpose()?;
    let id = header(EVENT_ID_HEADER)?
        .map(|id| EventId::parse_uuid(id).ok_or("event-id header is not a UUID"))
        .transpose()?;
    let key = header(KEY_HEADER)?;
    if key.is_some_and(|key| !valid_key(key)) {
        return Err("idempotency-key header is not 1 to 255 printable ASCII characters".into());
    }
    let (user, data) = parse_payload(message.payload(), max_bytes)?;
    Ok(Parsed {
        user,
        event,
        data,
        id,
        key,
    })
}

/// Splits a `user:message` payload at the first colon and validates both parts.
pub fn parse_payload(payload: Option<&[u8]>, max_bytes: usize) -> Result<(Username, &str), String> {
    let payload = payload.ok_or("null payload")?;
    if payload.len() > max_bytes + Username::MAX_LEN + 1 {
        return Err(format!(
            "payload of {} bytes is over the limit",
            payload.len()
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    let (user, data) = text
        .split_once(':')
        .ok_or("payload has no ':' (expected username:message)")?;
    if user.is_empty() {
        return Err("empty username".to_owned());
    }
    let user = Username::parse(user).map_err(|e| format!("invalid username: {e}"))?;
    if data.is_empty() {
        return Err("empty message".to_owned());
    }
    if data.len() > max_bytes {
        return Err(format!(
            "message of {} bytes is over the limit of {max_bytes}",
            data.len()
        ));
    }
    Ok((user, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_producer_with_a_fatal_error_is_replaced() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("enable.idempotence", "true");
        let slot = ProducerSlot::new(config).unwrap();
        let first = slot.get();
        assert!(first.client().fatal_error().is_none());
        // librdkafka's own hook for tests: real fatal errors cannot be provoked on purpose.
        let reason = std::ffi::CString::new("fatal error made by the test").unwrap();
        let code = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                first.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            code,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        assert!(first.client().fatal_error().is_some());
        let second = slot.get();
        assert!(second.client().fatal_error().is_none(), "not replaced");
        assert_ne!(first.client().native_ptr(), second.client().native_ptr());
        // Healthy: kept.
        assert_eq!(
            slot.get().client().native_ptr(),
            second.client().native_ptr()
        );
    }

    #[test]
    fn payloads_split_at_the_first_colon_and_poison_is_named() {
        let (user, data) = parse_payload(Some(b"demo:a:b"), 100).unwrap();
        assert_eq!((user.as_str(), data), ("demo", "a:b"));
        let (_, data) = parse_payload(Some("demo:🦋 howdy".as_bytes()), 100).unwrap();
        assert_eq!(data, "🦋 howdy");
        for (payload, reason) in [
            (None, "null"),
            (Some(&b"no colon"[..]), "no ':'"),
            (Some(&b":message"[..]), "empty username"),
            (Some(&b"a b:message"[..]), "invalid username"),
            (Some(&b"demo:"[..]), "empty message"),
            (Some(&b"demo:\xff\xfe"[..]), "not UTF-8"),
            (Some(&[b'x'; 300][..]), "over the limit"),
        ] {
            let err = parse_payload(payload, 100).unwrap_err();
            assert!(err.contains(reason), "{payload:?}: {err}");
        }
        let long = format!("demo:{}", "x".repeat(101));
        assert!(
            parse_payload(Some(long.as_bytes()), 100)
                .unwrap_err()
                .contains("over the limit")
        );
    }
}
