//! Where this instance stands in every Kafka partition it consumes: where its read-back began,
//! which records are live (to be sent to open streams) and which are the past (kept for
//! replay only), how far behind the end it is, and whether it has caught up.
//!
//! - **Live or past.** A record is live when it was produced after this process started: its
//!   timestamp is at or after the start, or its offset is at or after the end of the partition
//!   when this process first saw it (which holds however late the broker appeared, and also
//!   when a producer's clock is behind). Every other record is the past: it goes into the
//!   histories, not to the streams open now, which never missed it.
//! - **Caught up** means every partition has been read up to the end it had when it was
//!   assigned, and the records not yet consumed number at most `--kafka-ready-lag`. `/readyz`
//!   says 503 until then, and a stream resuming with `Last-Event-ID` waits for it (bounded),
//!   so it is not told `reset` for messages the read-back is about to bring.
//!
//! One std `Mutex` over a few entries per partition; the consumer takes it once per record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// One partition's positions (Kafka offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The end of the partition when this process first saw it: records from here on are live.
    pub live_from: i64,
    /// The read-back is done once [`Part::next`] reaches this (the end when assigned).
    pub target: i64,
    /// The next offset to consume.
    pub next: i64,
    /// The end of the partition, as last asked.
    pub high: i64,
}

impl Part {
    /// A partition assigned at `start` whose end is `high`.
    pub fn new(start: i64, high: i64) -> Self {
        Self {
            live_from: high,
            target: high,
            next: start,
            high,
        }
    }

    fn lag(&self) -> u64 {
        u64::try_from(self.high.saturating_sub(self.next)).unwrap_or(0)
    }

    fn remaining(&self) -> u64 {
        u64::try_from(self.target.saturating_sub(self.next)).unwrap_or(0)
    }
}

/// What a consumed record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Produced after this process started: send it to the open streams.
    Live,
    /// From before the start, within the history's lifetime: keep it for replay only.
    Past,
    /// From before the start and older than the history's lifetime: drop it.
    Stale,
}

/// The consumer's partitions; see the module docs.
pub struct Partitions {
    inner: Mutex<BTreeMap<String, BTreeMap<i32, Part>>>,
    /// Whether any partition has been assigned yet.
    assigned: Mutex<bool>,
    caught_up: watch::Sender<bool>,
    /// Milliseconds since the epoch at which this process started.
    start_ms: i64,
    /// How long histories are kept: older past records are not read back.
    history_ttl: Duration,
    /// Most records left to consume for the instance to count as caught up.
    ready_lag: u64,
    /// Past records kept for replay since the start.
    read_back: AtomicU64,
}

/// A summary for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Every partition has been assigned.
    pub assigned: bool,
    /// Records still to read back, over all partitions.
    pub remaining: u64,
    /// Records not yet consumed, over all partitions.
    pub lag: u64,
    /// Read-back done and lag within bounds.
    pub caught_up: bool,
}

impl Partitions {
    /// No partition yet, for a process that started at `start_ms`.
    pub fn new(start_ms: i64, history_ttl: Duration, ready_lag: u64) -> Self {
        Self {
            inner: Mutex::new(BTreeMap::new()),
            assigned: Mutex::new(false),
            caught_up: watch::Sender::new(false),
            start_ms,
            history_ttl,
            ready_lag,
            read_back: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<i32, Part>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The partitions known, by topic.
    pub fn known(&self) -> Vec<(String, i32)> {
        self.lock()
            .iter()
            .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
            .collect()
    }

    /// Adds newly assigned partitions.
    pub fn add(&self, parts: &[(String, i32, Part)]) {
        let mut inner = self.lock();
        for (topic, partition, part) in parts {
            inner
                .entry(topic.clone())
                .or_default()
                .insert(*partition, *part);
        }
        *self.assigned.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.recompute(&inner);
    }

    /// Classifies the record at `offset` (with its timestamp, if any) and moves past it. Also
    /// says whether the partition went back below what was consumed (a broker redelivering,
    /// or a log that started over).
    pub fn consumed(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        ts_ms: Option<i64>,
    ) -> (Kind, bool) {
        let mut inner = self.lock();
        let Some(part) = inner.get_mut(topic).and_then(|ps| ps.get_mut(&partition)) else {
            return (Kind::Live, false);
        };
        let was_behind = part.next < part.target;
        let rewound = offset < part.next && !was_behind;
        part.next = part.next.max(offset.saturating_add(1));
        part.high = part.high.max(part.next);
        let kind = if offset >= part.live_from || ts_ms.is_some_and(|t| t >= self.start_ms) {
            Kind::Live
        } else if ts_ms.is_some_and(|t| t < now_ms() - self.ttl_ms()) {
            Kind::Stale
        } else {
            Kind::Past
        };
        if kind == Kind::Past {
            self.read_back.fetch_add(1, Ordering::Relaxed);
        }
        if was_behind || rewound || !*self.caught_up.borrow() {
            self.recompute(&inner);
        }
        (kind, rewound)
    }

    /// Records the end of a partition and the consumer's position in it (which moves past
    /// offsets that hold no record, such as transaction markers).
    pub fn observed(&self, topic: &str, partition: i32, high: i64, position: Option<i64>) {
        let mut inner = self.lock();
        if let Some(part) = inner.get_mut(topic).and_then(|ps| ps.get_mut(&partition)) {
            if let Some(position) = position {
                part.next = part.next.max(position);
            }
            part.high = high.max(part.next);
        }
        self.recompute(&inner);
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.history_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn recompute(&self, inner: &BTreeMap<String, BTreeMap<i32, Part>>) {
        let p = self.progress_of(inner);
        self.caught_up.send_if_modified(|c| {
            let changed = *c != p.caught_up;
            *c = p.caught_up;
            changed
        });
    }

    fn progress_of(&self, inner: &BTreeMap<String, BTreeMap<i32, Part>>) -> Progress {
        let parts = inner.values().flat_map(BTreeMap::values);
        let (remaining, lag) = parts.fold((0, 0), |(r, l), p| (r + p.remaining(), l + p.lag()));
        let assigned = *self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
        Progress {
            assigned,
            remaining,
            lag,
            caught_up: assigned && remaining == 0 && lag <= self.ready_lag,
        }
    }

    /// Where the instance stands.
    pub fn progress(&self) -> Progress {
        self.progress_of(&self.lock())
    }

    /// Waits, at most `limit`, until the record at `offset` of `partition` has been consumed
    /// (so a client that saw it resumes after it, not before); whether it has. Returns at
    /// once when the partition is unknown. (The end of the partition known here can be a
    /// second old, so an offset past it may still come: an id this log never held waits the
    /// whole `limit`.)
    pub async fn wait_consumed(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        limit: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = match self.lock().get(topic).and_then(|ps| ps.get(&partition)) {
                Some(part) => part.next,
                None => return false,
            };
            if next > offset {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until caught up, at most `limit`; whether it is.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Prometheus lines: lag and read-back left per partition, records read back, caught up.
    pub fn render_metrics(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP sse_kafka_lag Records of the partition this instance has not consumed yet.\n# TYPE sse_kafka_lag gauge\n");
        for (topic, parts) in inner.iter() {
            for (partition, part) in parts {
                let _ = writeln!(
                    out,
                    "sse_kafka_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {}",
                    part.lag()
                );
            }
        }
        out.push_str("# HELP sse_kafka_readback_remaining Records of the partition still to read back into the histories.\n# TYPE sse_kafka_readback_remaining gauge\n");
        for (topic, parts) in inner.iter() {
            for (partition, part) in parts {
                let _ = writeln!(
                    out,
                    "sse_kafka_readback_remaining{{topic=\"{topic}\",partition=\"{partition}\"}} {}",
                    part.remaining()
                );
            }
        }
        let p = self.progress_of(&inner);
        let _ = write!(
            out,
            "# HELP sse_kafka_readback_records_total Records from before the start kept for replay.\n# TYPE sse_kafka_readback_records_total counter\nsse_kafka_readback_records_total {}\n# HELP sse_kafka_caught_up 1 when the read-back is done and the lag is within --kafka-ready-lag.\n# TYPE sse_kafka_caught_up gauge\nsse_kafka_caught_up {}\n",
            self.read_back.load(Ordering::Relaxed),
            u8::from(p.caught_up)
        );
        out
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Where to start reading a partition whose records span `low..high`, given the first offset
/// at or after the history's horizon (`by_time`, if the broker found one) and at most
/// `records` records back.
pub fn read_back_start(low: i64, high: i64, by_time: Option<i64>, records: u64) -> i64 {
    let by_count = high.saturating_sub(i64::try_from(records).unwrap_or(i64::MAX));
    by_time
        .unwrap_or(high)
        .clamp(low, high.max(low))
        .max(by_count)
        .max(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_back_starts_at_the_horizon_within_the_record_bound() {
        // By time, inside the log.
        assert_eq!(read_back_start(0, 100, Some(40), 1000), 40);
        // The bound wins when the horizon is further back.
        assert_eq!(read_back_start(0, 100, Some(10), 50), 50);
        // No record after the horizon: nothing to read back.
        assert_eq!(read_back_start(0, 100, None, 1000), 100);
        // A broker that answers 0 for "none" (tansu) is still bounded by the count.
        assert_eq!(read_back_start(0, 100, Some(0), 30), 70);
        // Never before the log's start, never past its end.
        assert_eq!(read_back_start(60, 100, Some(10), 1000), 60);
        assert_eq!(read_back_start(0, 100, Some(500), 1000), 100);
        assert_eq!(read_back_start(0, 0, Some(0), 10), 0);
    }

    #[tokio::test]
    async fn records_are_live_after_the_start_and_caught_up_follows_the_read_back() {
        let start = now_ms();
        let parts = Partitions::new(start, Duration::from_secs(600), 5);
        assert!(!parts.progress().caught_up, "nothing assigned yet");
        parts.add(&[("t".into(), 0, Part::new(7, 10))]);
        assert_eq!(parts.progress().remaining, 3);
        assert!(!parts.wait_caught_up(Duration::from_millis(10)).await);
        // Before the start and before the end at assignment: the past.
        assert_eq!(
            parts.consumed("t", 0, 7, Some(start - 1000)),
            (Kind::Past, false)
        );
        // Older than the history's lifetime: dropped.
        assert_eq!(
            parts.consumed("t", 0, 8, Some(start - 3_600_000)),
            (Kind::Stale, false)
        );
        // Produced after the start, though before the end at assignment: live.
        assert_eq!(
            parts.consumed("t", 0, 9, Some(start + 1)),
            (Kind::Live, false)
        );
        assert!(parts.progress().caught_up);
        assert!(parts.wait_caught_up(Duration::from_millis(10)).await);
        // At or after the end at assignment: live whatever the producer's clock says.
        assert_eq!(
            parts.consumed("t", 0, 10, Some(start - 1000)),
            (Kind::Live, false)
        );
        // A lag over the bound: no longer caught up; consuming brings it back.
        parts.observed("t", 0, 20, None);
        assert_eq!(parts.progress().lag, 9);
        assert!(!parts.progress().caught_up);
        parts.observed("t", 0, 20, Some(16));
        assert!(parts.progress().caught_up);
        let text = parts.render_metrics();
        assert!(
            text.contains("sse_kafka_lag{topic=\"t\",partition=\"0\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("sse_kafka_readback_records_total 1\n"),
            "{text}"
        );
        assert!(text.contains("sse_kafka_caught_up 1\n"), "{text}");
        // A resume waits for the record it names, at most the limit.
        assert!(parts.wait_consumed("t", 0, 15, Duration::ZERO).await);
        assert!(
            !parts
                .wait_consumed("t", 0, 16, Duration::from_millis(30))
                .await
        );
        assert!(
            !parts
                .wait_consumed("t", 7, 0, Duration::from_secs(10))
                .await
        );
        // Back below the position (a redelivery, or a log that started over): said, and
        // classified as ever.
        assert_eq!(
            parts.consumed("t", 0, 0, Some(start + 5)),
            (Kind::Live, true)
        );
        assert_eq!(
            parts.consumed("t", 0, 1, Some(start - 1000)),
            (Kind::Past, true)
        );
    }
}
