//! The Hub: THE registry of open SSE connections per (channel, user), their bounded queues
//! ([`queue`]) and each user's replay history ([`history`]). Only this file touches the map.
//!
//! Policies, in one place:
//! - **Many connections per user.** Every open stream of a user (tabs, devices) gets every message.
//!   A [`Subscription`] unregisters exactly its own connection when it is dropped.
//! - **A publish never waits for a connection.** Each connection has a queue of at most
//!   `queue_size` frames. Pushing is a non-blocking append under a short lock; a connection whose
//!   queue is full is closed at once (its TCP connection too, through its kill token), counted as
//!   a slow consumer, and its queued frames are freed. The client resumes with `Last-Event-ID`.
//! - **Encode once, share the bytes.** A message becomes one [`Bytes`] frame per user, cloned (a
//!   reference count) into each of that user's queues and into the history.
//! - **Replay.** Each (channel, user) keeps its last `history_size` frames while it has a
//!   connection or was active within `history_ttl`; all histories together are held within
//!   `history_max_bytes`. Ids are `"{boot}-{seq}"` with one sequence per process, so an id from
//!   an earlier process run is never mistaken for one of ours.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod history;
mod queue;

pub use queue::Subscription;

use history::History;
use queue::{Conn, Push};

use crate::domain::{Channel, EventId, EventName};
use crate::metrics::Metrics;
use crate::sse;

/// Limits of the Hub, from the server configuration.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Frames a connection may have waiting before it is closed as a slow consumer.
    pub queue_size: usize,
    /// Messages kept per (channel, user) for replay.
    pub history_size: usize,
    /// Bytes all histories together may hold.
    pub history_max_bytes: usize,
    /// How long a user's history outlives their last connection and last message.
    pub history_ttl: Duration,
    /// `retry:` hint sent when a stream opens.
    pub retry: Duration,
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

const SHARDS: usize = 16;

struct Inner {
    /// The registry, split in shards by key hash so unrelated users rarely contend. A std
    /// `Mutex` because every critical section is short and synchronous: no `.await` while held.
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Distinguishes this process's ids from an earlier run's (start time in milliseconds).
    boot: u64,
    /// Last assigned sequence number; one sequence for all users so `(boot, seq)` is unique.
    seq: AtomicU64,
    /// Bytes accounted to all histories (frames plus [`ENTRY_OVERHEAD`] each).
    history_bytes: AtomicUsize,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding these locks; recover the data if one ever did.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
    /// replays, in order, the messages published after that id, or sends `event: reset` when
    /// they are not all in the history any more. Registration and replay happen under one lock,
    /// so nothing is lost or sent twice between replay and live delivery.
    pub fn subscribe(
        &self,
        channel: Channel,
        user: &str,
        last_event_id: Option<&str>,
        kill: Option<CancellationToken>,
    ) -> Subscription {
        let inner = &self.inner;
        let mut first = BytesMut::from(&sse::preamble(inner.cfg.retry.as_millis() as u64)[..]);
        let conn = Arc::new(Conn::new(channel, kill));
        let shard = self.shard_of(channel, user);
        {
            let mut guard = lock(&inner.shards[shard]);
            let now = Instant::now();
            let current = inner.seq.load(Ordering::Relaxed);
            let topic = guard.topics[channel.index()]
                .entry(user.into())
                .or_insert_with(|| Topic::new(current));
            topic.last_active = now;
            if let Some(last) = last_event_id.filter(|s| !s.is_empty()) {
                match topic.history.missed_since(last, inner.boot, current) {
                    Some(missed) => {
                        if !missed.is_empty() {
                            inner.metrics.replays.add(channel, 1);
                            inner
                                .metrics
                                .replayed_messages
                                .add(channel, missed.len() as u64);
                        }
                        for frame in missed {
                            first.put_slice(&frame);
                        }
                    }
                    None => {
                        inner.metrics.resets.add(channel, 1);
                        let id = EventId::pair(inner.boot, current);
                        let reset = EventName::parse(sse::RESET_EVENT).ok();
                        first.put_slice(&sse::encode_event(
                            Some(&id),
                            reset.as_ref(),
                            r#"{"reason":"the messages since Last-Event-ID are no longer available; resync"}"#,
                        ));
                    }
                }
            }
            conn.start(first.freeze(), inner.closed.load(Ordering::Acquire));
            topic.conns.push(conn.clone());
        }
        inner.metrics.connection_opened(channel);
        Subscription::new(self.inner.clone(), conn, user.into(), shard)
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
        let mut guard = lock(&self.inner.shards[shard]);
        match guard.topics[channel.index()].get_mut(user) {
            Some(topic) => self.inner.deliver(topic, channel, event, data, None),
            None => Published {
                delivered: 0,
                id: None,
            },
        }
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
        let shard = self.shard_of(channel, user);
        let mut guard = lock(&self.inner.shards[shard]);
        let current = self.inner.seq.load(Ordering::Relaxed);
        let topic = guard.topics[channel.index()]
            .entry(user.into())
            .or_insert_with(|| Topic::new(current));
        if topic.history.contains(&id) {
            return Published {
                delivered: 0,
                id: Some(id),
            };
        }
        self.inner.deliver(topic, channel, event, data, Some(id))
    }

    /// Sends a message to every user of `channel` that has a stream open or a live history.
    /// Returns the number of connections reached.
    pub fn broadcast(&self, channel: Channel, event: Option<&EventName>, data: &str) -> usize {
        self.inner.metrics.published.add(channel, 1);
        let mut delivered = 0;
        for shard in self.inner.shards.iter() {
            let mut guard = lock(shard);
            for topic in guard.topics[channel.index()].values_mut() {
                delivered += self
                    .inner
                    .deliver(topic, channel, event, data, None)
                    .delivered;
            }
        }
        delivered
    }

    /// Queues a keep-alive comment to every connection that was sent nothing since the last
    /// call. Called periodically by [`Hub::run_maintenance`].
    pub fn keep_alive_tick(&self) {
        let keep_alive = Bytes::from_static(sse::KEEP_ALIVE);
        let cap = self.inner.cfg.queue_size;
        for shard in self.inner.shards.iter() {
            let mut guard = lock(shard);
            for topic in guard.topics_mut() {
                let metrics = &self.inner.metrics;
                topic.conns.retain(|conn| {
                    match conn.take_activity() {
                        None => return false,
                        Some(true) => return true,
                        Some(false) => {}
                    }
                    // A keep-alive is not activity: the next tick sends another one.
                    match conn.push(keep_alive.clone(), cap, false) {
                        Push::Queued => true,
                        Push::Overflow => {
                            metrics.slow_consumer_disconnects.add(conn.channel, 1);
                            false
                        }
                        Push::Closed => false,
                    }
                });
            }
        }
    }

    /// Drops histories of users that have no connection and were idle longer than the TTL, and
    /// trims histories while all of them together exceed the byte budget.
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
                    }
                    keep
                });
            }
        }
        // Over budget (many users each within their own bound): evict the oldest entry of every
        // topic in turn until the total fits again.
        while inner.history_bytes.load(Ordering::Relaxed) > inner.cfg.history_max_bytes {
            let mut evicted = false;
            for shard in inner.shards.iter() {
                let mut guard = lock(shard);
                for topic in guard.topics_mut() {
                    if inner.history_bytes.load(Ordering::Relaxed) <= inner.cfg.history_max_bytes {
                        return;
                    }
                    evicted |= inner.evict_oldest(topic);
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
    pub fn registry_size(&self) -> (usize, usize) {
        let mut conns = 0;
        let mut topics = 0;
        for shard in self.inner.shards.iter() {
            let guard = lock(shard);
            for map in guard.topics.iter() {
                topics += map.len();
                conns += map.values().map(|t| t.conns.len()).sum::<usize>();
            }
        }
        (conns, topics)
    }
}

impl Topic {
    fn new(floor: u64) -> Self {
        Topic {
            conns: Vec::new(),
            history: History::new(floor),
            last_active: Instant::now(),
        }
    }
}

impl Inner {
    /// Publishes a message to one topic: assigns the id (unless given), encodes the frame
    /// once, queues it to every connection and records it in the history.
    fn deliver(
        &self,
        topic: &mut Topic,
        channel: Channel,
        event: Option<&EventName>,
        data: &str,
        id: Option<EventId>,
    ) -> Published {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = id.unwrap_or_else(|| EventId::pair(self.boot, seq));
        let frame = sse::encode_event(Some(&id), event, data);

        let cap = self.cfg.queue_size;
        let mut delivered = 0;
        let metrics = &self.metrics;
        topic
            .conns
            .retain(|conn| match conn.push(frame.clone(), cap, true) {
                Push::Queued => {
                    delivered += 1;
                    true
                }
                Push::Overflow => {
                    metrics.slow_consumer_disconnects.add(channel, 1);
                    false
                }
                Push::Closed => false,
            });
        metrics.delivered.add(channel, delivered as u64);
        topic.last_active = Instant::now();

        self.account_history(topic.history.push(seq, id.clone(), frame));
        while topic.history.len() > self.cfg.history_size {
            self.evict_oldest(topic);
        }
        // Over the global budget: give back this user's oldest entries first (the newest stays).
        while self.history_bytes.load(Ordering::Relaxed) > self.cfg.history_max_bytes
            && topic.history.len() > 1
        {
            self.evict_oldest(topic);
        }
        Published {
            delivered,
            id: Some(id),
        }
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

    /// Removes exactly `conn` from its topic; called when its [`Subscription`] is dropped.
    fn unregister(&self, shard: usize, user: &str, conn: &Arc<Conn>) {
        let channel = conn.channel;
        {
            let mut guard = lock(&self.shards[shard]);
            if let Some(topic) = guard.topics[channel.index()].get_mut(user) {
                topic.conns.retain(|c| !Arc::ptr_eq(c, conn));
                topic.last_active = Instant::now();
            }
        }
        self.metrics.connection_closed(channel);
    }

    fn account_history(&self, bytes: usize) {
        self.history_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics
            .history_bytes
            .fetch_add(bytes as i64, Ordering::Relaxed);
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
        Hub::new(
            HubConfig {
                queue_size: queue,
                history_size: history,
                history_max_bytes: 1 << 20,
                history_ttl: Duration::from_secs(60),
                retry: Duration::from_secs(2),
            },
            Arc::new(Metrics::default()),
        )
    }

    async fn next_text(sub: &mut Subscription) -> String {
        let frame = sub.frame().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn two_tabs_get_every_message_and_dropping_one_keeps_the_other() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V2, "u", None, None);
        let mut b = hub.subscribe(Channel::V2, "u", None, None);
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
    async fn full_queue_closes_only_that_connection() {
        let hub = hub(2, 10);
        let slow = hub.subscribe(Channel::V2, "u", None, None); // never polled: preamble queued
        let mut fast = hub.subscribe(Channel::V2, "u", None, None);
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
        let mut a = hub.subscribe(Channel::V2, "u", None, None);
        let ids: Vec<EventId> = (0..5)
            .map(|i| {
                hub.publish(Channel::V2, "u", None, &format!("m{i}"))
                    .id
                    .unwrap()
            })
            .collect();
        drop(a.frame().await);
        // History holds m2..m4: resuming after m2 replays m3 and m4.
        let mut b = hub.subscribe(Channel::V2, "u", Some(ids[2].as_str()), None);
        let first = next_text(&mut b).await;
        assert!(first.contains("data: m3\n\nid: "), "{first}");
        assert!(first.ends_with("data: m4\n\n"), "{first}");
        // Resuming after m0: m1 is gone, so reset.
        let mut c = hub.subscribe(Channel::V2, "u", Some(ids[0].as_str()), None);
        assert!(next_text(&mut c).await.contains("event: reset\n"));
        // A foreign id resets; the newest id replays nothing.
        let mut d = hub.subscribe(Channel::V2, "u", Some("garbage\u{0}"), None);
        assert!(next_text(&mut d).await.contains("event: reset\n"));
        let mut e = hub.subscribe(Channel::V2, "u", Some(ids[4].as_str()), None);
        assert!(!next_text(&mut e).await.contains("data:"));
    }

    #[tokio::test]
    async fn external_ids_replay_by_exact_match_and_redeliveries_are_dropped() {
        let hub = hub(8, 10);
        let mut a = hub.subscribe(Channel::V3, "u", None, None);
        next_text(&mut a).await;
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
        let mut e = hub.subscribe(Channel::V3, "elsewhere", Some("1-0"), None);
        assert!(next_text(&mut e).await.contains("event: reset"));
        assert_eq!(
            hub.publish_with_id(Channel::V3, "elsewhere", None, "f", EventId::pair(1, 2))
                .delivered,
            1
        );
        let mut f = hub.subscribe(Channel::V3, "elsewhere", Some("1-1"), None);
        assert!(next_text(&mut f).await.ends_with("id: 1-2\ndata: f\n\n"));
        let mut b = hub.subscribe(Channel::V3, "u", Some("0-5"), None);
        let replay = next_text(&mut b).await;
        assert!(
            replay.contains("id: 0-6\ndata: k6\n\nid: 0-7\ndata: k7\n\n"),
            "{replay}"
        );
        let mut c = hub.subscribe(Channel::V3, "u", Some("0-4"), None);
        assert!(next_text(&mut c).await.contains("event: reset"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_history_expires_and_budget_is_kept() {
        let hub = hub(8, 100);
        let sub = hub.subscribe(Channel::V2, "u", None, None);
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
        let mut a = hub.subscribe(Channel::V2, "u", None, None);
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
        let mut a = hub.subscribe(Channel::V4, "u", None, None);
        next_text(&mut a).await;
        hub.close_all();
        assert!(a.frame().await.is_none());
    }
}
