//! Idempotency keys of `/v2` and `/v3` messages: a window in memory, per instance, of the
//! keys seen lately (`--idempotency-window`, at most `--idempotency-max-keys` of them).
//!
//! - A POST with a key this instance answered within the window gets that answer again (the
//!   same status, the same id), and the message is not published again; the same key with
//!   another message (or channel, or event type) is refused; while the first request is still
//!   publishing, a repeat is told so (409).
//! - With Kafka, the key travels with the record (header `idempotency-key`) and every
//!   instance's consumer notes it: a second record with a key already delivered for that
//!   user (a retry sent to another instance before that one saw the first record) is not
//!   delivered again, and the retry's answer carries the first record's id.
//!
//! Keys are scoped by the recipient: the same key to two users is two keys.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::domain::{Channel, EventId, EventName};

/// What the first request with a key was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// The answer to a message the broker acknowledged: `202 {"accepted":true,"id"}`.
pub fn accepted(id: &EventId) -> Answer {
    Answer {
        status: 202,
        body: serde_json::json!({ "accepted": true, "id": id.as_str() }),
    }
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// A new key: publish, then [`Reservation::finish`] with the answer.
    New(Reservation),
    /// The key's first request was answered so: answer the same, publish nothing.
    Replay(Answer),
    /// The key was first used with another message: refuse.
    Reused,
    /// The key's first request is still publishing: refuse for now.
    InProgress,
}

struct Entry {
    fingerprint: u64,
    answer: Option<Answer>,
    /// The id the key's message was delivered with (by the Kafka consumer).
    delivered: Option<EventId>,
    /// Which insertion this is, so the eviction of an old entry never removes a newer one.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    /// Insertion order: (when, generation, key); for expiry and the count bound.
    order: VecDeque<(Instant, u64, (String, String))>,
    next_generation: u64,
}

/// The window of recent message keys of this instance.
pub struct MessageKeys {
    inner: Mutex<Inner>,
    window: Duration,
    capacity: usize,
    delivered: Notify,
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys")
            .field("window", &self.window)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl MessageKeys {
    /// Keys remembered for `window`, at most `capacity` of them (the oldest go first).
    pub fn new(window: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            window,
            capacity: capacity.max(1),
            delivered: Notify::new(),
        })
    }

    /// What a message is, for telling a retry from another message under the same key.
    pub fn fingerprint(channel: Channel, event: Option<&EventName>, data: &str) -> u64 {
        // One process computes and compares its own fingerprints: a fixed-key hasher will do.
        let mut h = std::hash::DefaultHasher::new();
        channel.as_str().hash(&mut h);
        event.map(EventName::as_str).hash(&mut h);
        data.hash(&mut h);
        h.finish()
    }

    /// Looks `key` up for a request to `user` with `fingerprint`; a new key is reserved.
    pub fn begin(self: &Arc<Self>, user: &str, key: &str, fingerprint: u64) -> Begin {
        let id = (user.to_owned(), key.to_owned());
        let mut inner = self.lock();
        self.expire(&mut inner);
        if let Some(entry) = inner.entries.get(&id) {
            return if entry.fingerprint != fingerprint {
                Begin::Reused
            } else if let Some(answer) = &entry.answer {
                Begin::Replay(answer.clone())
            } else if let Some(delivered) = &entry.delivered {
                // Seen from the broker (another instance's request, or ours not yet answered):
                // the broker has it, which is what that request answers.
                Begin::Replay(accepted(delivered))
            } else {
                Begin::InProgress
            };
        }
        Begin::New(self.reservation(&mut inner, id, fingerprint))
    }

    /// Reserves the new key `id`.
    fn reservation(
        self: &Arc<Self>,
        inner: &mut Inner,
        id: (String, String),
        fingerprint: u64,
    ) -> Reservation {
        let generation = self.insert(inner, id.clone(), fingerprint, None);
        Reservation {
            keys: Arc::clone(self),
            id,
            generation,
            finished: false,
        }
    }

    /// Notes a consumed record with `key` for `user` and id `id`: `true` when it is to be
    /// delivered (the key's first record, or this very record again), `false` for a repeat.
    pub fn consumed(&self, user: &str, key: &str, fingerprint: u64, id: &EventId) -> bool {
        let key_id = (user.to_owned(), key.to_owned());
        let deliver = {
            let mut inner = self.lock();
            self.expire(&mut inner);
            match inner.entries.get_mut(&key_id) {
                Some(entry) => match &entry.delivered {
                    Some(first) => first == id,
                    None => {
                        entry.delivered = Some(id.clone());
                        true
                    }
                },
                None => {
                    self.insert(&mut inner, key_id, fingerprint, Some(id.clone()));
                    true
                }
            }
        };
        self.delivered.notify_waiters();
        deliver
    }

    /// The id `key`'s message to `user` was delivered with here, waiting up to `wait` for
    /// this instance's consumer to see it.
    pub async fn delivered_id(&self, user: &str, key: &str, wait: Duration) -> Option<EventId> {
        let id = (user.to_owned(), key.to_owned());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.delivered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self
                .lock()
                .entries
                .get(&id)
                .and_then(|e| e.delivered.clone())
            {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(
        &self,
        inner: &mut Inner,
        id: (String, String),
        fingerprint: u64,
        delivered: Option<EventId>,
    ) -> u64 {
        let generation = inner.next_generation;
        inner.next_generation += 1;
        inner
            .order
            .push_back((Instant::now(), generation, id.clone()));
        inner.entries.insert(
            id,
            Entry {
                fingerprint,
                answer: None,
                delivered,
                generation,
            },
        );
        while inner.entries.len() > self.capacity {
            if !Self::pop_oldest(inner) {
                break;
            }
        }
        generation
    }

    /// Forgets the keys older than the window.
    fn expire(&self, inner: &mut Inner) {
        let now = Instant::now();
        while inner
            .order
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) >= self.window)
        {
            Self::pop_oldest(inner);
        }
    }

    fn pop_oldest(inner: &mut Inner) -> bool {
        let Some((_, generation, id)) = inner.order.pop_front() else {
            return false;
        };
        if inner
            .entries
            .get(&id)
            .is_some_and(|e| e.generation == generation)
        {
            inner.entries.remove(&id);
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A key being published; dropped without [`Reservation::finish`] (the publish failed), the
/// key is free again, so the client's retry is a first request.
#[derive(Debug)]
pub struct Reservation {
    keys: Arc<MessageKeys>,
    id: (String, String),
    generation: u64,
    finished: bool,
}

impl Reservation {
    /// Records the answer the key's retries get.
    pub fn finish(mut self, answer: Answer) {
        self.finished = true;
        let mut inner = self.keys.lock();
        if let Some(entry) = inner.entries.get_mut(&self.id)
            && entry.generation == self.generation
        {
            entry.answer = Some(answer);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut inner = self.keys.lock();
        // Only an entry of ours with no delivery noted: a record the consumer delivered
        // stays, so that a repeat of it is still recognised.
        if inner
            .entries
            .get(&self.id)
            .is_some_and(|e| e.generation == self.generation && e.delivered.is_none())
        {
            inner.entries.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str) -> Answer {
        Answer {
            status: 200,
            body: serde_json::json!({ "id": id }),
        }
    }

    #[test]
    fn a_key_replays_its_answer_and_refuses_another_message() {
        let keys = MessageKeys::new(Duration::from_secs(60), 10);
        let fp = MessageKeys::fingerprint(Channel::V2, None, "hello");
        let Begin::New(first) = keys.begin("u", "k", fp) else {
            panic!("new key")
        };
        assert!(matches!(keys.begin("u", "k", fp), Begin::InProgress));
        first.finish(answer("1"));
        assert!(matches!(keys.begin("u", "k", fp), Begin::Replay(a) if a == answer("1")));
        let other = MessageKeys::fingerprint(Channel::V2, None, "bye");
        assert!(matches!(keys.begin("u", "k", other), Begin::Reused));
        let v3 = MessageKeys::fingerprint(Channel::V3, None, "hello");
        assert!(matches!(keys.begin("u", "k", v3), Begin::Reused));
        // Another user's key of the same name is theirs.
        assert!(matches!(keys.begin("w", "k", fp), Begin::New(_)));
    }

    #[test]
    fn a_failed_publish_frees_its_key() {
        let keys = MessageKeys::new(Duration::from_secs(60), 10);
        let fp = MessageKeys::fingerprint(Channel::V3, None, "m");
        let Begin::New(first) = keys.begin("u", "k", fp) else {
            panic!("new key")
        };
        drop(first);
        assert!(keys.is_empty());
        assert!(matches!(keys.begin("u", "k", fp), Begin::New(_)));
    }

    #[test]
    fn keys_expire_and_are_bounded_in_number() {
        let keys = MessageKeys::new(Duration::from_millis(50), 3);
        let fp = 7;
        for k in ["a", "b", "c", "d"] {
            let Begin::New(r) = keys.begin("u", k, fp) else {
                panic!("new key {k}")
            };
            r.finish(answer(k));
        }
        assert_eq!(keys.len(), 3);
        assert!(
            matches!(keys.begin("u", "a", fp), Begin::New(_)),
            "oldest evicted"
        );
        std::thread::sleep(Duration::from_millis(60));
        let Begin::New(r) = keys.begin("u", "d", fp) else {
            panic!("expired")
        };
        r.finish(answer("d2"));
        assert_eq!(keys.len(), 1);
    }

    #[tokio::test]
    async fn the_consumer_delivers_a_key_once_and_tells_the_retry_its_id() {
        let keys = MessageKeys::new(Duration::from_secs(60), 10);
        let fp = MessageKeys::fingerprint(Channel::V3, None, "m");
        let first = EventId::pair(0, 5);
        let second = EventId::pair(0, 9);
        // A retry reached this instance before its consumer saw the first record.
        let Begin::New(retry) = keys.begin("u", "k", fp) else {
            panic!("new key")
        };
        let waiter = {
            let keys = keys.clone();
            tokio::spawn(async move { keys.delivered_id("u", "k", Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert!(
            keys.consumed("u", "k", fp, &first),
            "the first record is delivered"
        );
        assert!(
            !keys.consumed("u", "k", fp, &second),
            "the retry's record is not"
        );
        assert!(
            keys.consumed("u", "k", fp, &first),
            "the same record again is"
        );
        assert_eq!(waiter.await.unwrap(), Some(first.clone()));
        retry.finish(accepted(&first));
        assert!(matches!(keys.begin("u", "k", fp), Begin::Replay(a) if a == accepted(&first)));
        // A record seen from the broker only (sent through another instance): a request
        // with its key here is answered as that one was, and publishes nothing.
        assert!(keys.consumed("w", "k", fp, &second));
        assert!(matches!(keys.begin("w", "k", fp), Begin::Replay(a) if a == accepted(&second)));
        assert!(matches!(keys.begin("w", "k", 1), Begin::Reused));
        assert_eq!(
            keys.delivered_id("nobody", "k", Duration::from_millis(10))
                .await,
            None
        );
    }
}
