//! The Hub: THE registry of open SSE connections per (channel, user), their bounded queues
//! ([`queue`]) and each user's replay history ([`history`]). Only this file touches the map.
//!
//! Policies, in one place:
//! - **Many connections per user.** Every open stream of a user (tabs, devices) gets every message.
//!   A [`Subscription`] unregisters exactly its own connection when it is dropped.
//! - **A publish never waits for a connection.** Each connection has a queue of at most
//!   `queue_size` live frames and `queue_max_bytes` bytes. Pushing is a non-blocking append
//!   under a short lock; a connection whose queue is full is closed at once (its TCP connection
//!   too, through its kill token), counted as a slow consumer, and its queued frames are freed.
//!   The client resumes with `Last-Event-ID`.
//! - **Encode once, share the bytes.** A message becomes one [`Bytes`] frame, cloned (a
//!   reference count) into each queue and into the history; a broadcast is one frame for every
//!   user, and a replay queues the history's own frames. Nothing is copied per connection.
//! - **Replay.** Each (channel, user) keeps its last `history_size` frames while it has a
//!   connection or was active within `history_ttl`. All histories together never hold more than
//!   `history_max_bytes` (checked at every insertion: a user's own oldest frames go first, and a
//!   frame that still does not fit is not kept, so resuming before it gets `event: reset`). A
//!   replay larger than `queue_max_bytes` is refused with `event: reset` too. Ids are
//!   `"{boot}-{seq}"` with one sequence per process, so an id from an earlier process run is
//!   never mistaken for one of ours.
//! - **Bounded per-user state.** An entry exists only while its user has a connection or a
//!   history: the last connection of a user without history frees it at once. So the entries
//!   number at most the open connections plus what the history budget can hold (each entry
//!   with history is charged [`history::TOPIC_OVERHEAD`] bytes of that budget).
//! - **Write-through.** A publish queues under the shard lock and, once it let go of the lock,
//!   writes small frames to parked lean streams' sockets itself ([`queue`]): delivering a
//!   message wakes no task and crosses no thread, whichever worker the stream lives on.
//! - **No long walks under a lock.** The registry is split in [`SHARDS`] shards; broadcasts,
//!   keep-alive ticks and sweeps take one shard at a time, and broadcasts yield to the scheduler
//!   between shards. Gauges for `/metrics` are counters, read without any lock.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod history;
mod queue;

pub use queue::{Subscription, WriteThrough};

use history::History;
use queue::{Conn, Push};

use crate::domain::{Channel, EventId, EventName};
use crate::metrics::Metrics;
use crate::sse;

/// Limits of the Hub, from the server configuration.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Live frames a connection may have waiting before it is closed as a slow consumer.
    pub queue_size: usize,
    /// Bytes a connection may have waiting (replay included) before it is closed as a slow
    /// consumer; a replay that would not fit gets `event: reset` instead.
    pub queue_max_bytes: usize,
    /// Messages kept per (channel, user) for replay.
    pub history_size: usize,
    /// Bytes all histories together may hold.
    pub history_max_bytes: usize,
    /// How long a user's history outlives their last connection and last message.
    pub history_ttl: Duration,
    /// `retry:` hint sent when a stream opens.
    pub retry: Duration,
    /// Streams one (channel, user) may hold open (`None`: no limit).
    pub max_per_user: Option<usize>,
}

/// A stream refused because its user already holds `limit` streams on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFull {
    /// The limit (`--max-connections-per-user`).
    pub limit: usize,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Connections the message was queued to.
    pub delivered: usize,
    /// The message's event id; `None` when nobody was connected and nothing was kept for replay.
    pub id: Option<EventId>,
}

/// Cheap to clone handle to the shared registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Shards of the registry: a broadcast, tick or sweep holds one shard's lock at a time.
const SHARDS: usize = 64;

/// History entries a sweep evicts per shard lock when trimming towards the low watermark.
const SWEEP_EVICTIONS_PER_LOCK: usize = 1024;

struct Inner {
    /// The registry, split in shards by key hash so unrelated users rarely contend. A std
    /// `Mutex` because every critical section is short and synchronous: no `.await` while held.
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Distinguishes this process's ids from an earlier run's (start time in milliseconds).
    boot: u64,
    /// Last assigned sequence number; one sequence for all users so `(boot, seq)` is unique.
    seq: AtomicU64,
    /// Bytes charged to all histories (see [`History`]); never above `history_max_bytes`.
    history_bytes: AtomicUsize,
    /// Connections in the registry now (an atomic so `/metrics` reads it without a lock): a
    /// connection closed as a slow consumer leaves the registry before its response ends.
    registered: AtomicUsize,
    /// (channel, user) entries now.
    entries: AtomicUsize,
    /// Set once by [`Hub::close_all`]; new subscriptions end at once afterwards.
    closed: AtomicBool,
    cfg: HubConfig,
    metrics: Arc<Metrics>,
}

/// One shard of the registry: a map per channel, keyed by user name. Keys are `Box<str>` so
/// that a publish looks a user up by `&str` without allocating.
#[derive(Default)]
struct Shard {
    topics: [HashMap<Box<str>, Topic>; Channel::COUNT],
}

impl Shard {
    fn topics_mut(&mut self) -> impl Iterator<Item = &mut Topic> {
        self.topics.iter_mut().flat_map(HashMap::values_mut)
    }
}

/// Everything the Hub holds for one (channel, user).
struct Topic {
    conns: Vec<Arc<Conn>>,
    history: History,
    last_active: Instant,
}

/// Parked streams one publish writes to itself; the others of a larger fan-out are woken, so
/// their tasks write them on their own cores, interleaved with other work, and no publish
/// holds its thread for more than this many writes.
const WRITE_THROUGH_STREAMS: usize = 64;

/// Writes what was queued to parked streams (outside any shard lock: the writes are system
/// calls, and the order is kept by each connection's queue).
fn flush(parked: Vec<Arc<Conn>>) {
    for (i, conn) in parked.into_iter().enumerate() {
        if i < WRITE_THROUGH_STREAMS {
            conn.flush();
        } else {
            conn.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding these locks; recover the data if one ever did.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const RESET_GONE: &str =
    r#"{"reason":"the messages since Last-Event-ID are no longer available; resync"}"#;
const RESET_TOO_LARGE: &str =
    r#"{"reason":"the messages since Last-Event-ID are too many to replay; resync"}"#;

impl Hub {
    /// A new, empty Hub.
    pub fn new(cfg: HubConfig, metrics: Arc<Metrics>) -> Self {
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: Default::default(),
                boot,
                seq: AtomicU64::new(0),
                history_bytes: AtomicUsize::new(0),
                registered: AtomicUsize::new(0),
                entries: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                cfg,
                metrics,
            }),
        }
    }

    /// The metrics this Hub updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn shard_of(&self, channel: Channel, user: &str) -> usize {
        (self.inner.hasher.hash_one((channel, user)) as usize) % SHARDS
    }

    /// Opens a stream for `user` on `channel`.
    ///
    /// The stream starts with a `retry:` hint and a comment; with a `last_event_id` it then
    /// replays, in order, the messages published after that id (the history's own frames), or
    /// sends `event: reset` when they are not all in the history any more or would not fit the
    /// connection's queue. Registration and replay happen under one lock, so nothing is lost or
    /// sent twice between replay and live delivery.
    ///
    /// Refused, with nothing changed, when the user already holds `max_per_user` streams on
    /// the channel.
    pub fn subscribe(
        &self,
        channel: Channel,
        user: &str,
        last_event_id: Option<&str>,
        kill: Option<CancellationToken>,
    ) -> Result<Subscription, UserFull> {
        let inner = &self.inner;
        let preamble = sse::preamble(inner.cfg.retry.as_millis() as u64);
        let shard = self.shard_of(channel, user);
        let conn;
        {
            let mut guard = lock(&inner.shards[shard]);
            if let Some(limit) = inner.cfg.max_per_user {
                let open = guard.topics[channel.index()]
                    .get(user)
                    .map_or(0, |t| t.conns.len());
                if open >= limit {
                    return Err(UserFull { limit });
                }
            }
            conn = Arc::new(Conn::new(channel, kill));
            let current = inner.seq.load(Ordering::Relaxed);
            let topic = inner.entry(&mut guard, channel, user, current);
            topic.last_active = Instant::now();
            let mut replay = Vec::new();
            let mut reset = None;
            if let Some(last) = last_event_id.filter(|s| !s.is_empty()) {
                match topic.history.missed_since(last, inner.boot, current) {
                    Some(missed) => {
                        let bytes: usize = missed.iter().map(Bytes::len).sum();
                        if bytes + preamble.len() > inner.cfg.queue_max_bytes {
                            reset = Some(RESET_TOO_LARGE);
                        } else {
                            replay = missed;
                        }
                    }
                    None => reset = Some(RESET_GONE),
                }
            }
            if !replay.is_empty() {
                inner.metrics.replays.add(channel, 1);
                inner
                    .metrics
                    .replayed_messages
                    .add(channel, replay.len() as u64);
            }
            let mut first = vec![preamble];
            if let Some(reason) = reset {
                inner.metrics.resets.add(channel, 1);
                let id = EventId::pair(inner.boot, current);
                let name = EventName::parse(sse::RESET_EVENT).ok();
                first.push(sse::encode_event(Some(&id), name.as_ref(), reason));
            }
            first.append(&mut replay);
            conn.start(first, inner.closed.load(Ordering::Acquire));
            topic.conns.push(conn.clone());
        }
        inner.registered.fetch_add(1, Ordering::Relaxed);
        inner.metrics.connection_opened(channel);
        Ok(Subscription::new(
            self.inner.clone(),
            conn,
            user.into(),
            shard,
        ))
    }

    /// Sends a message to every open stream of `user` on `channel` and keeps it for replay.
    /// Never waits for a connection: full queues are closed instead (see the module docs).
    pub fn publish(
        &self,
        channel: Channel,
        user: &str,
        event: Option<&EventName>,
        data: &str,
    ) -> Published {
        self.inner.metrics.published.add(channel, 1);
        let shard = self.shard_of(channel, user);
        let mut parked = Vec::new();
        let published = {
            let mut guard = lock(&self.inner.shards[shard]);
            match guard.topics[channel.index()].get_mut(user) {
                Some(topic) => {
                    let seq = self.inner.next_seq();
                    let id = EventId::pair(self.inner.boot, seq);
                    let frame = sse::encode_event(Some(&id), event, data);
                    let delivered =
                        self.inner
                            .deliver(topic, channel, seq, &id, &frame, &mut parked);
                    Published {
                        delivered,
                        id: Some(id),
                    }
                }
                None => Published {
                    delivered: 0,
                    id: None,
                },
            }
        };
        flush(parked);
        published
    }

    /// Like [`Hub::publish`], with an id given by the caller: the Kafka position, so every
    /// instance gives the same message the same id. Unlike a local publish it keeps the
    /// message for replay even when the user has no stream here, so a client that fails over
    /// from another instance can resume on this one. A message whose id is already in the
    /// user's history (a redelivery) is not sent again.
    pub fn publish_with_id(
        &self,
        channel: Channel,
        user: &str,
        event: Option<&EventName>,
        data: &str,
        id: EventId,
    ) -> Published {
        self.inner.metrics.published.add(channel, 1);
        self.with_id(channel, user, event, data, id, true)
    }

    /// Keeps a message that was published before this process started (read back from the
    /// Kafka log) in the user's history, for clients that resume here, without sending it to
    /// the streams open now: they never missed it. A message already held is left alone.
    pub fn remember_with_id(
        &self,
        channel: Channel,
        user: &str,
        event: Option<&EventName>,
        data: &str,
        id: EventId,
    ) {
        self.with_id(channel, user, event, data, id, false);
    }

    /// [`Hub::publish_with_id`] (`live`) or [`Hub::remember_with_id`].
    fn with_id(
        &self,
        channel: Channel,
        user: &str,
        event: Option<&EventName>,
        data: &str,
        id: EventId,
        live: bool,
    ) -> Published {
        let inner = &self.inner;
        let shard = self.shard_of(channel, user);
        let mut parked = Vec::new();
        let delivered = {
            let mut guard = lock(&inner.shards[shard]);
            let current = inner.seq.load(Ordering::Relaxed);
            let topic = inner.entry(&mut guard, channel, user, current);
            if topic.history.contains(&id) {
                return Published {
                    delivered: 0,
                    id: Some(id),
                };
            }
            let seq = inner.next_seq();
            let frame = sse::encode_event(Some(&id), event, data);
            let delivered = if live {
                inner.deliver(topic, channel, seq, &id, &frame, &mut parked)
            } else {
                inner.record(topic, seq, &id, &frame);
                0
            };
            inner.free_if_unused(&mut guard, channel, user);
            delivered
        };
        flush(parked);
        Published {
            delivered,
            id: Some(id),
        }
    }

    /// Sends a message to every user of `channel` that has a stream open or a live history.
    /// The frame is encoded once, with one id for every user, and delivered one shard at a
    /// time, yielding to the scheduler in between so other requests are served meanwhile.
    /// Returns the number of connections reached and the id.
    pub async fn broadcast(
        &self,
        channel: Channel,
        event: Option<&EventName>,
        data: &str,
    ) -> (usize, EventId) {
        let inner = &self.inner;
        inner.metrics.published.add(channel, 1);
        let seq = inner.next_seq();
        let id = EventId::pair(inner.boot, seq);
        let frame = sse::encode_event(Some(&id), event, data);
        let mut delivered = 0;
        for shard in inner.shards.iter() {
            let mut parked = Vec::new();
            {
                let mut guard = lock(shard);
                for topic in guard.topics[channel.index()].values_mut() {
                    delivered += inner.deliver(topic, channel, seq, &id, &frame, &mut parked);
                }
            }
            flush(parked);
            tokio::task::yield_now().await;
        }
        (delivered, id)
    }

    /// Queues a keep-alive comment to every connection that was sent nothing since the last
    /// call. Called periodically by [`Hub::run_maintenance`].
    pub fn keep_alive_tick(&self) {
        let keep_alive = Bytes::from_static(sse::KEEP_ALIVE);
        let (cap, max_bytes) = (self.inner.cfg.queue_size, self.inner.cfg.queue_max_bytes);
        for shard in self.inner.shards.iter() {
            let mut parked = Vec::new();
            let mut guard = lock(shard);
            for topic in guard.topics_mut() {
                let metrics = &self.inner.metrics;
                let registered = &self.inner.registered;
                topic.conns.retain(|conn| {
                    let gone = || {
                        registered.fetch_sub(1, Ordering::Relaxed);
                        false
                    };
                    match conn.take_activity() {
                        None => return gone(),
                        Some(true) => return true,
                        Some(false) => {}
                    }
                    // A keep-alive is not activity: the next tick sends another one.
                    match conn.push(keep_alive.clone(), cap, max_bytes, false) {
                        Push::Queued => true,
                        Push::Deferred => {
                            parked.push(conn.clone());
                            true
                        }
                        Push::Overflow => {
                            metrics.slow_consumer_disconnects.add(conn.channel, 1);
                            gone()
                        }
                        Push::Closed => gone(),
                    }
                });
            }
            drop(guard);
            flush(parked);
        }
    }

    /// Drops histories of users that have no connection and were idle longer than the TTL
    /// (one shard lock at a time). When the histories fill more than 7/8 of their budget, it
    /// also evicts the oldest entry of each user in turn until they fill at most 3/4, so new
    /// messages find room again (insertions alone never exceed the budget).
    pub fn sweep(&self) {
        let inner = &self.inner;
        let now = Instant::now();
        for shard in inner.shards.iter() {
            let mut guard = lock(shard);
            for topics in guard.topics.iter_mut() {
                topics.retain(|_, topic| {
                    let keep = !topic.conns.is_empty()
                        || now.duration_since(topic.last_active) < inner.cfg.history_ttl;
                    if !keep {
                        inner.release_history(topic.history.cost());
                        inner.entries.fetch_sub(1, Ordering::Relaxed);
                    }
                    keep
                });
            }
        }
        let max = inner.cfg.history_max_bytes;
        if inner.history_bytes.load(Ordering::Relaxed) <= max / 8 * 7 {
            return;
        }
        let low = max / 4 * 3;
        loop {
            let mut evicted = false;
            for shard in inner.shards.iter() {
                let mut guard = lock(shard);
                let mut budget = SWEEP_EVICTIONS_PER_LOCK;
                for topics in guard.topics.iter_mut() {
                    topics.retain(|_, topic| {
                        if budget > 0 && inner.history_bytes.load(Ordering::Relaxed) > low {
                            budget -= 1;
                            evicted |= inner.evict_oldest(topic);
                        }
                        inner.keep_entry(topic)
                    });
                }
                if inner.history_bytes.load(Ordering::Relaxed) <= low {
                    return;
                }
            }
            if !evicted {
                return;
            }
        }
    }

    /// Runs keep-alive ticks and history sweeps until `shutdown` is cancelled.
    pub async fn run_maintenance(self, keep_alive: Duration, shutdown: CancellationToken) {
        let mut keep_alive = tokio::time::interval(keep_alive);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = keep_alive.tick() => self.keep_alive_tick(),
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    /// Ends every open stream (used on shutdown): queued frames are still written, then each
    /// response completes. Streams opened afterwards end right after their first bytes.
    pub fn close_all(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            let guard = lock(shard);
            for topic in guard.topics.iter().flat_map(HashMap::values) {
                for conn in &topic.conns {
                    conn.close();
                }
            }
        }
    }

    /// Registered connections and (channel, user) entries, for `/metrics` and leak tests.
    /// Read from counters: takes no lock.
    pub fn registry_size(&self) -> (usize, usize) {
        (
            self.inner.registered.load(Ordering::Relaxed),
            self.inner.entries.load(Ordering::Relaxed),
        )
    }
}

impl Inner {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The entry of (channel, user) in `shard`, created (and counted) when missing.
    fn entry<'a>(
        &self,
        shard: &'a mut Shard,
        channel: Channel,
        user: &str,
        current: u64,
    ) -> &'a mut Topic {
        match shard.topics[channel.index()].entry(user.into()) {
            MapEntry::Occupied(e) => e.into_mut(),
            MapEntry::Vacant(e) => {
                self.entries.fetch_add(1, Ordering::Relaxed);
                e.insert(Topic {
                    conns: Vec::new(),
                    history: History::new(current, user.len()),
                    last_active: Instant::now(),
                })
            }
        }
    }

    /// Whether an entry must stay: it has a connection or a history to replay.
    fn keep_entry(&self, topic: &Topic) -> bool {
        let keep = !topic.conns.is_empty() || topic.history.len() > 0;
        if !keep {
            self.release_history(topic.history.cost());
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        keep
    }

    /// Frees the entry of (channel, user) when it has neither a connection nor a history.
    fn free_if_unused(&self, shard: &mut Shard, channel: Channel, user: &str) {
        let map = &mut shard.topics[channel.index()];
        if let Some(topic) = map.get(user)
            && topic.conns.is_empty()
            && topic.history.len() == 0
        {
            map.remove(user);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues `frame` (message `seq`, `id`) to every connection of `topic` and records it in
    /// the history within the budgets. Returns the connections reached; the parked ones are
    /// added to `parked`, for the caller to [`flush`] once it let go of the shard lock.
    fn deliver(
        &self,
        topic: &mut Topic,
        channel: Channel,
        seq: u64,
        id: &EventId,
        frame: &Bytes,
        parked: &mut Vec<Arc<Conn>>,
    ) -> usize {
        let (cap, max_bytes) = (self.cfg.queue_size, self.cfg.queue_max_bytes);
        let mut delivered = 0;
        let metrics = &self.metrics;
        topic.conns.retain(
            |conn| match conn.push(frame.clone(), cap, max_bytes, true) {
                Push::Queued => {
                    delivered += 1;
                    true
                }
                Push::Deferred => {
                    delivered += 1;
                    parked.push(conn.clone());
                    true
                }
                Push::Overflow => {
                    metrics.slow_consumer_disconnects.add(channel, 1);
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    false
                }
                Push::Closed => {
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    false
                }
            },
        );
        metrics.delivered.add(channel, delivered as u64);
        topic.last_active = Instant::now();
        self.record(topic, seq, id, frame);
        delivered
    }

    /// Keeps a frame in `topic`'s history: within `history_size` frames, and within the global
    /// byte budget at this very insertion (this user's oldest frames make room first; a frame
    /// that still does not fit is not kept, and the floor moves past it).
    fn record(&self, topic: &mut Topic, seq: u64, id: &EventId, frame: &Bytes) {
        while topic.history.len() >= self.cfg.history_size {
            self.evict_oldest(topic);
        }
        loop {
            let cost = topic.history.cost_of(frame);
            if self.try_charge(cost) {
                topic.history.push(seq, id.clone(), frame.clone());
                return;
            }
            if !self.evict_oldest(topic) {
                topic.history.skip(seq);
                self.metrics
                    .history_evictions
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Charges `bytes` to the history budget if they fit.
    fn try_charge(&self, bytes: usize) -> bool {
        let max = self.cfg.history_max_bytes;
        let charged = self
            .history_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= max)
            })
            .is_ok();
        if charged {
            self.metrics
                .history_bytes
                .fetch_add(bytes as i64, Ordering::Relaxed);
        }
        charged
    }

    fn evict_oldest(&self, topic: &mut Topic) -> bool {
        match topic.history.pop_oldest() {
            Some(cost) => {
                self.release_history(cost);
                self.metrics
                    .history_evictions
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Removes exactly `conn` from its topic (and the topic when nothing is left in it); called
    /// when its [`Subscription`] is dropped.
    fn unregister(&self, shard: usize, user: &str, conn: &Arc<Conn>) {
        let channel = conn.channel;
        {
            let mut guard = lock(&self.shards[shard]);
            if let Some(topic) = guard.topics[channel.index()].get_mut(user) {
                let before = topic.conns.len();
                topic.conns.retain(|c| !Arc::ptr_eq(c, conn));
                self.registered
                    .fetch_sub(before - topic.conns.len(), Ordering::Relaxed);
                topic.last_active = Instant::now();
            }
            self.free_if_unused(&mut guard, channel, user);
        }
        self.metrics.connection_closed(channel);
    }

    fn release_history(&self, bytes: usize) {
        self.history_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics
            .history_bytes
            .fetch_sub(bytes as i64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn hub(queue: usize, history: usize) -> Hub {
        hub_with(queue, 1 << 20, history, 1 << 20)
    }

    fn hub_with(queue: usize, queue_bytes: usize, history: usize, history_bytes: usize) -> Hub {
        Hub::new(
            HubConfig {
                queue_size: queue,
                queue_max_bytes: queue_bytes,
                history_size: history,
                history_max_bytes: history_bytes,
                history_ttl: Duration::from_secs(60),
                retry: Duration::from_secs(2),
                max_per_user: None,
            },
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn the_per_user_limit_counts_a_users_streams_on_one_channel() {
        let mut cfg = hub(4, 4).inner.cfg.clone();
        cfg.max_per_user = Some(2);
        let hub = Hub::new(cfg, Arc::new(Metrics::default()));
        let a = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        let _b = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        let refused = hub.subscribe(Channel::V2, "u", None, None).err();
        assert_eq!(refused, Some(UserFull { limit: 2 }));
        // Other users and other channels have their own count; a refusal registers nothing.
        let _c = hub.subscribe(Channel::V3, "u", None, None).unwrap();
        let _d = hub.subscribe(Channel::V2, "v", None, None).unwrap();
        assert_eq!(hub.registry_size().0, 4);
        drop(a);
        assert!(hub.subscribe(Channel::V2, "u", None, None).is_ok());
    }

    async fn next_text(sub: &mut Subscription) -> String {
        let frame = sub.frame().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    /// The next frame and every frame queued right behind it (a stream's start: preamble,
    /// reset or replayed frames), as one text.
    async fn ready_text(sub: &mut Subscription) -> String {
        use futures_util::FutureExt;
        let mut text = next_text(sub).await;
        while let Some(Some(Ok(frame))) = sub.frame().now_or_never() {
            text.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
        }
        text
    }

    #[tokio::test]
    async fn two_tabs_get_every_message_and_dropping_one_keeps_the_other() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        let mut b = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        assert!(next_text(&mut a).await.starts_with("retry: 2000\n"));
        next_text(&mut b).await;
        let p = hub.publish(Channel::V2, "u", None, "hello");
        assert_eq!(p.delivered, 2);
        assert!(next_text(&mut a).await.ends_with("data: hello\n\n"));
        drop(a);
        assert_eq!(hub.registry_size(), (1, 1));
        assert_eq!(hub.publish(Channel::V2, "u", None, "again").delivered, 1);
        assert!(next_text(&mut b).await.ends_with("data: hello\n\n"));
        assert!(next_text(&mut b).await.ends_with("data: again\n\n"));
        assert_eq!(
            hub.publish(Channel::V3, "u", None, "other channel")
                .delivered,
            0
        );
    }

    #[tokio::test]
    async fn remembered_messages_are_replayed_but_never_sent_live() {
        use futures_util::FutureExt;
        let hub = hub(8, 10);
        let mut live = hub.subscribe(Channel::V3, "u", None, None).unwrap();
        next_text(&mut live).await;
        for offset in 1..=3 {
            let id = EventId::pair(0, offset);
            hub.remember_with_id(Channel::V3, "u", None, &format!("old {offset}"), id);
        }
        // Read back twice (a second read-back after a gap): held once.
        hub.remember_with_id(Channel::V3, "u", None, "old 3", EventId::pair(0, 3));
        assert!(
            live.frame().now_or_never().is_none(),
            "a read-back reached a live stream"
        );
        let mut resumed = hub.subscribe(Channel::V3, "u", Some("0-1"), None).unwrap();
        let text = ready_text(&mut resumed).await;
        assert!(
            text.ends_with("id: 0-2\ndata: old 2\n\nid: 0-3\ndata: old 3\n\n"),
            "{text}"
        );
        // A live message after the read-back reaches both.
        hub.publish_with_id(Channel::V3, "u", None, "new", EventId::pair(0, 4));
        assert!(next_text(&mut live).await.ends_with("data: new\n\n"));
        assert!(next_text(&mut resumed).await.ends_with("data: new\n\n"));
    }

    #[tokio::test]
    async fn full_queue_closes_only_that_connection() {
        let hub = hub(2, 10);
        let slow = hub.subscribe(Channel::V2, "u", None, None).unwrap(); // never polled: preamble queued
        let mut fast = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        next_text(&mut fast).await;
        for i in 0..5 {
            hub.publish(Channel::V2, "u", None, &i.to_string());
            next_text(&mut fast).await;
        }
        assert_eq!(hub.registry_size().0, 1);
        assert_eq!(hub.metrics().slow_consumer_disconnects.get(Channel::V2), 1);
        drop(slow);
        assert_eq!(hub.registry_size().0, 1);
    }

    #[tokio::test]
    async fn replay_after_last_event_id_and_reset_when_too_old() {
        let hub = hub(8, 3);
        let mut a = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        let ids: Vec<EventId> = (0..5)
            .map(|i| {
                hub.publish(Channel::V2, "u", None, &format!("m{i}"))
                    .id
                    .unwrap()
            })
            .collect();
        drop(a.frame().await);
        // History holds m2..m4: resuming after m2 replays m3 and m4.
        let mut b = hub
            .subscribe(Channel::V2, "u", Some(ids[2].as_str()), None)
            .unwrap();
        let first = ready_text(&mut b).await;
        assert!(first.contains("data: m3\n\nid: "), "{first}");
        assert!(first.ends_with("data: m4\n\n"), "{first}");
        // Resuming after m0: m1 is gone, so reset.
        let mut c = hub
            .subscribe(Channel::V2, "u", Some(ids[0].as_str()), None)
            .unwrap();
        assert!(ready_text(&mut c).await.contains("event: reset\n"));
        // A foreign id resets; the newest id replays nothing.
        let mut d = hub
            .subscribe(Channel::V2, "u", Some("garbage\u{0}"), None)
            .unwrap();
        assert!(ready_text(&mut d).await.contains("event: reset\n"));
        let mut e = hub
            .subscribe(Channel::V2, "u", Some(ids[4].as_str()), None)
            .unwrap();
        assert!(!ready_text(&mut e).await.contains("data:"));
    }

    #[tokio::test]
    async fn external_ids_replay_by_exact_match_and_redeliveries_are_dropped() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V3, "u", None, None).unwrap();
        ready_text(&mut a).await;
        for offset in 5..8 {
            let p = hub.publish_with_id(
                Channel::V3,
                "u",
                None,
                &format!("k{offset}"),
                EventId::pair(0, offset),
            );
            assert_eq!(p.delivered, 1);
        }
        // Redelivered by the broker: not sent twice.
        assert_eq!(
            hub.publish_with_id(Channel::V3, "u", None, "k6", EventId::pair(0, 6))
                .delivered,
            0
        );
        // Kept for replay even for a user with no stream on this instance.
        assert_eq!(
            hub.publish_with_id(Channel::V3, "elsewhere", None, "e", EventId::pair(1, 1))
                .delivered,
            0
        );
        let mut e = hub
            .subscribe(Channel::V3, "elsewhere", Some("1-0"), None)
            .unwrap();
        assert!(ready_text(&mut e).await.contains("event: reset"));
        assert_eq!(
            hub.publish_with_id(Channel::V3, "elsewhere", None, "f", EventId::pair(1, 2))
                .delivered,
            1
        );
        let mut f = hub
            .subscribe(Channel::V3, "elsewhere", Some("1-1"), None)
            .unwrap();
        assert!(ready_text(&mut f).await.ends_with("id: 1-2\ndata: f\n\n"));
        let mut b = hub.subscribe(Channel::V3, "u", Some("0-5"), None).unwrap();
        let replay = ready_text(&mut b).await;
        assert!(
            replay.contains("id: 0-6\ndata: k6\n\nid: 0-7\ndata: k7\n\n"),
            "{replay}"
        );
        let mut c = hub.subscribe(Channel::V3, "u", Some("0-4"), None).unwrap();
        assert!(ready_text(&mut c).await.contains("event: reset"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_history_expires_and_budget_is_kept() {
        let hub = hub(8, 100);
        let sub = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        hub.publish(Channel::V2, "u", None, "x");
        drop(sub);
        hub.sweep();
        assert_eq!(hub.registry_size(), (0, 1));
        tokio::time::advance(Duration::from_secs(61)).await;
        hub.sweep();
        assert_eq!(hub.registry_size(), (0, 0));
        assert_eq!(hub.metrics().history_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn keep_alive_goes_only_to_idle_connections() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        next_text(&mut a).await;
        hub.keep_alive_tick(); // the preamble counts as activity
        hub.keep_alive_tick();
        assert_eq!(next_text(&mut a).await, ": keep-alive-text\n\n");
        hub.publish(Channel::V2, "u", None, "m");
        hub.keep_alive_tick();
        assert!(next_text(&mut a).await.ends_with("data: m\n\n"));
        hub.keep_alive_tick();
        assert_eq!(next_text(&mut a).await, ": keep-alive-text\n\n");
    }

    #[tokio::test]
    async fn close_all_ends_streams() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V4, "u", None, None).unwrap();
        next_text(&mut a).await;
        hub.close_all();
        assert!(a.frame().await.is_none());
    }

    async fn next_frame(sub: &mut Subscription) -> Bytes {
        sub.frame().await.unwrap().unwrap().into_data().unwrap()
    }

    #[tokio::test]
    async fn a_replay_queues_the_historys_own_frames_and_a_too_large_one_resets() {
        let hub = hub_with(8, 4096, 100, 1 << 20);
        let mut live = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        next_frame(&mut live).await;
        let first = hub.publish(Channel::V2, "u", None, "m0").id.unwrap();
        let sent = next_frame(&mut live).await;
        hub.publish(Channel::V2, "u", None, "m1");
        let mut resumed = hub
            .subscribe(Channel::V2, "u", Some(first.as_str()), None)
            .unwrap();
        let preamble = next_frame(&mut resumed).await;
        assert!(preamble.starts_with(b"retry:"));
        let replayed = next_frame(&mut resumed).await;
        assert!(replayed.ends_with(b"data: m1\n\n"));
        // The replayed frame is the one delivered live and kept in the history: same bytes.
        let live_m1 = next_frame(&mut live).await;
        assert_eq!(replayed.as_ptr(), live_m1.as_ptr());
        assert_ne!(sent.as_ptr(), replayed.as_ptr());
        // 4,500 bytes more: what was missed since `first` no longer fits a 4 KiB queue.
        hub.publish(Channel::V2, "u", None, &"x".repeat(4500));
        let mut too_much = hub
            .subscribe(Channel::V2, "u", Some(first.as_str()), None)
            .unwrap();
        next_frame(&mut too_much).await;
        let reset = String::from_utf8(next_frame(&mut too_much).await.to_vec()).unwrap();
        assert!(reset.contains("event: reset\n"), "{reset}");
        assert!(reset.contains("too many to replay"), "{reset}");
        assert_eq!(hub.metrics().resets.get(Channel::V2), 1);
    }

    #[tokio::test]
    async fn a_queue_over_its_byte_limit_closes_that_connection_only() {
        let hub = hub_with(1000, 2048, 100, 1 << 20);
        let _stalled = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        let mut reader = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        next_frame(&mut reader).await;
        let body = "y".repeat(500);
        let mut reached = Vec::new();
        for _ in 0..6 {
            reached.push(hub.publish(Channel::V2, "u", None, &body).delivered);
            next_frame(&mut reader).await;
        }
        // The stalled queue holds its preamble and three frames of ~510 bytes; the fourth
        // would pass 2 KiB: it is closed then, the reader is not.
        assert_eq!(reached, [2, 2, 2, 1, 1, 1]);
        assert_eq!(hub.metrics().slow_consumer_disconnects.get(Channel::V2), 1);
    }

    #[tokio::test]
    async fn the_history_budget_holds_at_every_insertion_broadcasts_included() {
        let budget = 20_000;
        let hub = hub_with(1000, 1 << 20, 100, budget);
        let held = |hub: &Hub| hub.inner.history_bytes.load(Ordering::Relaxed);
        let mut subs = Vec::new();
        for i in 0..50 {
            subs.push(
                hub.subscribe(Channel::V2, &format!("u{i}"), None, None)
                    .unwrap(),
            );
        }
        for round in 0..20 {
            for i in 0..50 {
                hub.publish(Channel::V2, &format!("u{i}"), None, &"z".repeat(round * 10));
                assert!(held(&hub) <= budget, "{} > {budget}", held(&hub));
            }
        }
        let (reached, _) = hub.broadcast(Channel::V2, None, &"\n".repeat(2000)).await;
        assert_eq!(reached, 50);
        assert!(held(&hub) <= budget, "{} > {budget}", held(&hub));
        assert_eq!(
            hub.metrics().history_bytes.load(Ordering::Relaxed) as usize,
            held(&hub)
        );
        // A message that was not kept cannot be resumed across: its successor's resume resets.
        let mut sub = hub
            .subscribe(
                Channel::V2,
                "u0",
                Some(&format!("{}-1", hub.inner.boot)),
                None,
            )
            .unwrap();
        next_frame(&mut sub).await;
        assert!(
            next_frame(&mut sub)
                .await
                .windows(12)
                .any(|w| w == b"event: reset")
        );
    }

    #[tokio::test]
    async fn a_broadcast_is_one_frame_with_one_id_for_every_user() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V2, "a", None, None).unwrap();
        let mut b = hub.subscribe(Channel::V2, "b", None, None).unwrap();
        let mut other = hub.subscribe(Channel::V3, "a", None, None).unwrap();
        next_frame(&mut a).await;
        next_frame(&mut b).await;
        next_frame(&mut other).await;
        let (reached, id) = hub.broadcast(Channel::V2, None, "all").await;
        assert_eq!(reached, 2);
        let fa = next_frame(&mut a).await;
        let fb = next_frame(&mut b).await;
        assert_eq!(fa.as_ptr(), fb.as_ptr());
        assert!(fa.starts_with(format!("id: {id}\n").as_bytes()));
        hub.close_all();
        assert!(other.frame().await.is_none(), "v3 got the v2 broadcast");
    }

    #[tokio::test]
    async fn users_without_history_or_connection_hold_no_entry() {
        let hub = hub(8, 10);
        for i in 0..1000 {
            let sub = hub
                .subscribe(Channel::V2, &format!("user-{i}"), Some("1-1"), None)
                .unwrap();
            drop(sub);
        }
        assert_eq!(hub.registry_size(), (0, 0));
        let sub = hub.subscribe(Channel::V2, "kept", None, None).unwrap();
        hub.publish(Channel::V2, "kept", None, "m");
        drop(sub);
        assert_eq!(hub.registry_size(), (0, 1));
        // A Kafka message for a user with no stream here is kept for replay (an entry); one
        // that is not kept (over budget) leaves nothing behind.
        let tiny = hub_with(8, 1 << 20, 10, 100);
        tiny.publish_with_id(
            Channel::V3,
            "big",
            None,
            &"b".repeat(500),
            EventId::pair(0, 1),
        );
        assert_eq!(tiny.registry_size(), (0, 0));
    }

    /// A transport that records what publishers write, taking all of it or none.
    #[derive(Default)]
    struct Recorder {
        written: Mutex<Vec<Bytes>>,
        refuse: AtomicBool,
        rest: AtomicBool,
    }

    impl WriteThrough for Recorder {
        fn write_frames(&self, frames: &[Bytes]) -> bool {
            if self.refuse.load(Ordering::SeqCst) {
                self.rest.store(true, Ordering::SeqCst);
                return false;
            }
            lock(&self.written).extend_from_slice(frames);
            true
        }

        fn holds_rest(&self) -> bool {
            self.rest.load(Ordering::SeqCst)
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `sub` once as its task would, with `waker`: a frame's text, or `None` (pending).
    fn poll_once(sub: &mut Subscription, waker: &std::task::Waker) -> Option<String> {
        use http_body::Body as _;
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(sub).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let data = frame.into_data().unwrap();
                Some(String::from_utf8(data.to_vec()).unwrap())
            }
            std::task::Poll::Ready(None) => Some("<end>".into()),
            std::task::Poll::Pending => None,
        }
    }

    /// A Hub, a recording transport and a waker that counts.
    struct WriteThroughCase {
        hub: Hub,
        recorder: Arc<Recorder>,
        wakes: Arc<Wakes>,
        waker: std::task::Waker,
    }

    impl WriteThroughCase {
        fn new(queue: usize) -> Self {
            let wakes = Arc::new(Wakes::default());
            Self {
                hub: hub(queue, 10),
                recorder: Arc::new(Recorder::default()),
                waker: std::task::Waker::from(wakes.clone()),
                wakes,
            }
        }

        /// A parked subscription of `user` (see [`parked`]).
        fn parked(&self, user: &str) -> Subscription {
            parked(&self.hub, user, &self.recorder, &self.waker)
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// A subscription of `user` writing through `recorder`, polled until it parked.
    fn parked(
        hub: &Hub,
        user: &str,
        recorder: &Arc<Recorder>,
        waker: &std::task::Waker,
    ) -> Subscription {
        let mut sub = hub.subscribe(Channel::V2, user, None, None).unwrap();
        sub.write_through(recorder.clone());
        assert!(poll_once(&mut sub, waker).unwrap().starts_with("retry:"));
        // The first `Pending` follows a frame the task still has to write: not parked yet;
        // polled again with everything written: parked.
        assert_eq!(poll_once(&mut sub, waker), None);
        assert_eq!(poll_once(&mut sub, waker), None);
        sub
    }

    #[test]
    fn a_stream_whose_task_holds_a_frame_is_not_written_through() {
        let hub = hub(8, 10);
        let recorder = Arc::new(Recorder::default());
        let waker = std::task::Waker::from(Arc::new(Wakes::default()));
        let mut sub = hub.subscribe(Channel::V2, "u", None, None).unwrap();
        sub.write_through(recorder.clone());
        assert!(poll_once(&mut sub, &waker).unwrap().starts_with("retry:"));
        assert_eq!(poll_once(&mut sub, &waker), None);
        hub.publish(Channel::V2, "u", None, "to the task");
        assert!(
            lock(&recorder.written).is_empty(),
            "written while the task held the stream"
        );
        let text = poll_once(&mut sub, &waker).unwrap();
        assert!(text.ends_with("data: to the task\n\n"), "{text}");
    }

    #[test]
    fn a_parked_stream_is_written_by_its_publisher_and_its_task_sleeps() {
        let case = WriteThroughCase::new(8);
        let (hub, recorder, waker) = (&case.hub, &case.recorder, &case.waker);
        let mut sub = case.parked("u");
        let before = case.wakes();
        for i in 0..3 {
            assert_eq!(
                hub.publish(Channel::V2, "u", None, &format!("m{i}"))
                    .delivered,
                1
            );
        }
        let written: Vec<String> = lock(&recorder.written)
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(written.len(), 3, "{written:?}");
        assert!(written[2].ends_with("data: m2\n\n"), "{written:?}");
        assert_eq!(case.wakes(), before, "the task was woken");
        assert_eq!(
            poll_once(&mut sub, waker),
            None,
            "a written frame was queued too"
        );

        // A message over the write-through budget goes to the task, which is woken for it.
        let big = "x".repeat(queue::WRITE_THROUGH_BYTES);
        hub.publish(Channel::V2, "u", None, &big);
        assert_eq!(case.wakes(), before + 1);
        assert!(poll_once(&mut sub, waker).unwrap().contains(&big));
        assert_eq!(lock(&recorder.written).len(), 3);

        // Ending the stream (an expired token) goes through the queue, after what is there.
        assert_eq!(poll_once(&mut sub, waker), None);
        assert_eq!(poll_once(&mut sub, waker), None);
        hub.publish(Channel::V2, "u", None, "last");
        sub.end_with(Bytes::from_static(b"event: auth_expired\n\n"));
        let mut rest = Vec::new();
        while let Some(text) = poll_once(&mut sub, waker) {
            let end = text == "<end>";
            rest.push(text);
            if end {
                break;
            }
        }
        // "last" went out by write-through before the end was queued; the end by the task.
        assert!(lock(&recorder.written)[3].ends_with(b"data: last\n\n"));
        assert_eq!(rest, ["event: auth_expired\n\n", "<end>"]);
    }

    #[test]
    fn a_write_the_socket_does_not_finish_hands_the_stream_back_to_its_task() {
        let case = WriteThroughCase::new(8);
        let (hub, recorder, waker) = (&case.hub, &case.recorder, &case.waker);
        let mut sub = case.parked("u");
        let before = case.wakes();
        recorder.refuse.store(true, Ordering::SeqCst);
        hub.publish(Channel::V2, "u", None, "kept by the transport");
        assert_eq!(case.wakes(), before + 1, "not woken");
        // Not parked again while the transport keeps a rest: the next message is queued.
        assert_eq!(poll_once(&mut sub, waker), None);
        assert_eq!(poll_once(&mut sub, waker), None);
        hub.publish(Channel::V2, "u", None, "queued");
        assert!(
            poll_once(&mut sub, waker)
                .unwrap()
                .ends_with("data: queued\n\n")
        );
        // Once the task took the rest, it parks again.
        recorder.rest.store(false, Ordering::SeqCst);
        recorder.refuse.store(false, Ordering::SeqCst);
        assert_eq!(poll_once(&mut sub, waker), None);
        assert_eq!(poll_once(&mut sub, waker), None);
        hub.publish(Channel::V2, "u", None, "through again");
        assert!(lock(&recorder.written)[0].ends_with(b"data: through again\n\n"));
    }

    #[test]
    fn a_large_fan_out_writes_through_a_bounded_number_and_wakes_the_rest() {
        let case = WriteThroughCase::new(8);
        let (hub, recorder, waker) = (&case.hub, &case.recorder, &case.waker);
        let mut subs: Vec<_> = (0..WRITE_THROUGH_STREAMS + 10)
            .map(|_| case.parked("u"))
            .collect();
        lock(&recorder.written).clear();
        let before = case.wakes();
        let p = hub.publish(Channel::V2, "u", None, "to all");
        assert_eq!(p.delivered, WRITE_THROUGH_STREAMS + 10);
        assert_eq!(lock(&recorder.written).len(), WRITE_THROUGH_STREAMS);
        assert_eq!(case.wakes() - before, 10);
        // Each stream got it exactly once: written through, or by its own task.
        let by_task = subs
            .iter_mut()
            .filter_map(|sub| poll_once(sub, waker))
            .filter(|text| text.ends_with("data: to all\n\n"))
            .count();
        assert_eq!(by_task, 10);
    }

    #[test]
    fn publishers_on_many_threads_write_a_parked_stream_in_order() {
        let case = WriteThroughCase::new(64);
        let (hub, recorder) = (&case.hub, &case.recorder);
        let _sub = case.parked("u");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        hub.publish(Channel::V2, "u", None, &format!("{t}-{i}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let seqs: Vec<u64> = lock(&recorder.written)
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).unwrap();
                let id = text
                    .strip_prefix("id: ")
                    .unwrap()
                    .split('\n')
                    .next()
                    .unwrap();
                id.rsplit_once('-').unwrap().1.parse().unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), 2000);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}
