//! Process-wide counters and gauges, rendered in the Prometheus text format by `/metrics`.
//!
//! Plain atomics: every update is a single relaxed add, cheap enough for the publish hot path,
//! and a scrape reads them without locking anything.

use std::fmt::{Display, Write as _};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::domain::Channel;

/// One counter per channel (`v1`..`v4`).
#[derive(Default)]
pub struct PerChannel([AtomicU64; Channel::COUNT]);

impl PerChannel {
    /// Adds `n` to the channel's counter.
    pub fn add(&self, channel: Channel, n: u64) {
        self.0[channel.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The channel's current value.
    pub fn get(&self, channel: Channel) -> u64 {
        self.0[channel.index()].load(Ordering::Relaxed)
    }
}

/// All metrics of one server process.
#[derive(Default)]
pub struct Metrics {
    /// SSE connections open now, per channel (a gauge: incremented on open, decremented on close).
    pub connections_open: [AtomicI64; Channel::COUNT],
    /// SSE connections ever opened.
    pub connections_total: PerChannel,
    /// Messages accepted for publishing (HTTP, Kafka, report events).
    pub published: PerChannel,
    /// Frames handed to connection queues (one message to three tabs counts three).
    pub delivered: PerChannel,
    /// Connections closed because their queue was full.
    pub slow_consumer_disconnects: PerChannel,
    /// Reconnects whose missed messages were replayed from history.
    pub replays: PerChannel,
    /// Messages sent again by replays.
    pub replayed_messages: PerChannel,
    /// Reconnects told to resync with an `event: reset`.
    pub resets: PerChannel,
    /// History entries dropped to keep the total history within its byte budget.
    pub history_evictions: AtomicU64,
    /// Bytes held by all users' replay histories.
    pub history_bytes: AtomicI64,
    /// Requests answered with a 4xx status, by status code (index = code - 400; 400-431).
    rejected: [AtomicU64; 32],
    /// Poison Kafka messages skipped, per channel.
    pub kafka_poison: PerChannel,
    /// Requests refused by a limit, by [`REFUSAL_REASONS`].
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    /// Streams closed because their client accepted no byte for `--write-timeout`.
    pub write_timeouts: AtomicU64,
    /// Connections closed at accept because the process was at its open-file budget.
    pub accept_refused: AtomicU64,
    /// Connections served by each worker thread now (set once the listener's threads run).
    pub worker_connections: OnceLock<Vec<tokio_util::task::TaskTracker>>,
    /// Report events in the store's outbox, not yet relayed (as of the relay's last pass).
    pub outbox_events: AtomicI64,
    /// Age of the oldest of them, in milliseconds (0 when there is none).
    pub outbox_oldest_ms: AtomicU64,
    /// Report events relayed to the Bus and removed from the outbox.
    pub outbox_relayed: AtomicU64,
    /// Report events delivered to this instance's streams while the Bus could not take them.
    pub outbox_local_deliveries: AtomicU64,
    /// Consumed messages not delivered: repeats of an idempotency key already delivered.
    pub message_repeats: AtomicU64,
}

/// The reasons a request can be refused by a limit (`sse_refused_total{reason}`).
pub const REFUSAL_REASONS: [&str; 4] = [
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_user",
    "publish_rate",
];

impl Metrics {
    /// Records an opened connection.
    pub fn connection_opened(&self, channel: Channel) {
        self.connections_open[channel.index()].fetch_add(1, Ordering::Relaxed);
        self.connections_total.add(channel, 1);
    }

    /// Records a closed connection.
    pub fn connection_closed(&self, channel: Channel) {
        self.connections_open[channel.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections of `channel` open now.
    pub fn open(&self, channel: Channel) -> i64 {
        self.connections_open[channel.index()].load(Ordering::Relaxed)
    }

    /// Records a request rejected with a 4xx `status`.
    pub fn rejected(&self, status: u16) {
        if let Some(slot) = status
            .checked_sub(400)
            .and_then(|i| self.rejected.get(i as usize))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a request refused by the limit named `reason` (one of [`REFUSAL_REASONS`]).
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let gauge =
            |out: &mut String, name: &str, help: &str, values: &[AtomicI64; Channel::COUNT]| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for ch in Channel::ALL {
                    let v = values[ch.index()].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{channel=\"{}\"}} {v}", ch.as_str());
                }
            };
        let counter = |out: &mut String, name: &str, help: &str, values: &PerChannel| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ch in Channel::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{channel=\"{}\"}} {}",
                    ch.as_str(),
                    values.get(ch)
                );
            }
        };
        // A series without labels: `kind` is `gauge` or `counter`.
        let single = |out: &mut String, name: &str, kind: &str, help: &str, v: &dyn Display| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "sse_connections_open",
            "SSE connections open now.",
            &self.connections_open,
        );
        counter(
            &mut out,
            "sse_connections_total",
            "SSE connections opened.",
            &self.connections_total,
        );
        counter(
            &mut out,
            "sse_messages_published_total",
            "Messages accepted for publishing.",
            &self.published,
        );
        counter(
            &mut out,
            "sse_messages_delivered_total",
            "Frames queued to connections.",
            &self.delivered,
        );
        counter(
            &mut out,
            "sse_slow_consumer_disconnects_total",
            "Connections closed because their queue was full.",
            &self.slow_consumer_disconnects,
        );
        counter(
            &mut out,
            "sse_replays_total",
            "Reconnects served missed messages from history.",
            &self.replays,
        );
        counter(
            &mut out,
            "sse_replayed_messages_total",
            "Messages sent again by replays.",
            &self.replayed_messages,
        );
        counter(
            &mut out,
            "sse_resets_total",
            "Reconnects told to resync with event: reset.",
            &self.resets,
        );
        counter(
            &mut out,
            "sse_kafka_poison_messages_total",
            "Kafka messages skipped as unusable.",
            &self.kafka_poison,
        );
        single(
            &mut out,
            "sse_history_bytes",
            "gauge",
            "Bytes held by replay histories.",
            &self.history_bytes.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "sse_history_evictions_total",
            "counter",
            "History entries dropped to stay within the byte budget.",
            &self.history_evictions.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP sse_refused_total Requests refused by a connection or rate limit.\n# TYPE sse_refused_total counter"
        );
        for (reason, slot) in REFUSAL_REASONS.iter().zip(&self.refused) {
            let v = slot.load(Ordering::Relaxed);
            let _ = writeln!(out, "sse_refused_total{{reason=\"{reason}\"}} {v}");
        }
        single(
            &mut out,
            "sse_write_timeouts_total",
            "counter",
            "Streams closed because the client accepted no byte for --write-timeout.",
            &self.write_timeouts.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "sse_accept_refused_total",
            "counter",
            "Connections closed at accept: the process was at its open-file budget.",
            &self.accept_refused.load(Ordering::Relaxed),
        );
        if let Some(workers) = self.worker_connections.get() {
            let _ = writeln!(
                out,
                "# HELP sse_worker_connections Connections served by each worker thread now.\n# TYPE sse_worker_connections gauge"
            );
            for (worker, tracker) in workers.iter().enumerate() {
                let v = tracker.len();
                let _ = writeln!(out, "sse_worker_connections{{worker=\"{worker}\"}} {v}");
            }
        }
        single(
            &mut out,
            "sse_outbox_events",
            "gauge",
            "Report events in the store's outbox, not yet relayed.",
            &self.outbox_events.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "sse_outbox_oldest_age_seconds",
            "gauge",
            "Age of the oldest report event in the outbox (0 when empty).",
            &(self.outbox_oldest_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        single(
            &mut out,
            "sse_outbox_relayed_total",
            "counter",
            "Report events relayed to the bus and removed from the outbox.",
            &self.outbox_relayed.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "sse_outbox_local_deliveries_total",
            "counter",
            "Report events delivered on this instance while the bus could not take them.",
            &self.outbox_local_deliveries.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "sse_message_repeats_dropped_total",
            "counter",
            "Consumed messages not delivered: repeats of an Idempotency-Key already delivered.",
            &self.message_repeats.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP http_requests_rejected_total Requests answered with a 4xx status.\n# TYPE http_requests_rejected_total counter"
        );
        for (i, slot) in self.rejected.iter().enumerate() {
            let v = slot.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(
                    out,
                    "http_requests_rejected_total{{status=\"{}\"}} {v}",
                    400 + i
                );
            }
        }
        out
    }
}
