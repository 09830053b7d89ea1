//! The outbox relay: takes the events the report store recorded with each change (see
//! [`crate::reports::outbox`]) to the Bus, and removes each from the outbox once the Bus has it.
//!
//! - **Right after a commit** the request that wrote the change relays its event itself
//!   ([`Relay::announce`]), so a user's tabs see the change as soon as it is stored.
//! - **When the Bus cannot take it** (Kafka down), the event is delivered to this instance's
//!   streams at once and stays in the outbox.
//! - **A background loop** ([`Relay::run`]) relays whatever is still in the outbox, oldest first,
//!   every second: events of a Kafka outage once the broker is back, and events of a process
//!   that died between its commit and its relay, at the next start. It leaves alone events
//!   younger than `settle` whose request has not given up on them: it is still relaying them.
//! - **At least once, never twice on screen.** An event keeps its id on every path, and the Hub
//!   drops an id the user's history already holds; so the local delivery made during an outage
//!   and the same event coming back from the broker show once.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Bus, Message, publish_here};
use crate::domain::Channel;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reports::{OutboxEvent, ReportStore, StoreError};
use uuid::Uuid;

/// Events taken from the outbox per pass of the loop.
const BATCH: usize = 256;
/// Pause between passes of the loop.
const PERIOD: Duration = Duration::from_secs(1);
/// Most events remembered as delivered here while the Bus is down. Past it, further events of
/// the outage reach this instance's streams through the broker once it is back, like every
/// other instance's.
const MAX_DELIVERED_HERE: usize = 65_536;

/// Relays outbox events to the Bus; one per process.
pub struct Relay {
    store: Arc<dyn ReportStore>,
    bus: Arc<dyn Bus>,
    hub: Hub,
    metrics: Arc<Metrics>,
    settle: Duration,
    /// Events still in the outbox that this instance's streams already got (the Hub's
    /// history drops a repeat too, but only while it still holds the id).
    delivered_here: Mutex<HashSet<Uuid>>,
}

impl Relay {
    /// A relay from `store` to `bus`, delivering to `hub` while the bus cannot. The loop
    /// leaves events younger than `settle` to the request relaying them (make it longer than
    /// a request's own relay can take: the Bus timeout and a store call).
    pub fn new(
        store: Arc<dyn ReportStore>,
        bus: Arc<dyn Bus>,
        hub: Hub,
        metrics: Arc<Metrics>,
        settle: Duration,
    ) -> Self {
        Self {
            store,
            bus,
            hub,
            metrics,
            settle,
            delivered_here: Mutex::new(HashSet::new()),
        }
    }

    /// Relays the event of a change that was just committed. Never fails: what the Bus did
    /// not take is delivered here and left in the outbox for the loop.
    pub async fn announce(&self, event: &OutboxEvent) {
        match self.bus.publish(message(event)).await {
            Ok(_) => {
                self.metrics.outbox_relayed.fetch_add(1, Ordering::Relaxed);
                self.forget(&[event.id]);
                if let Err(e) = self.store.outbox_done(vec![event.id]).await {
                    // It stays in the outbox and is relayed again; the repeat is dropped by id.
                    tracing::warn!(error = %e, event_id = %event.id, "relayed event not removed from the outbox");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, event_id = %event.id, "event kept in the outbox until the bus takes it; delivered on this instance now");
                self.deliver_here(event);
            }
        }
    }

    /// Relays the outbox every second until `shutdown`; the first pass (at start) takes every
    /// event, however young, since no request of this process is relaying it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut min_age = Duration::ZERO;
        loop {
            if let Err(e) = self.pass(min_age).await {
                tracing::warn!(error = %e, "outbox relay: the report store is unavailable");
            }
            min_age = self.settle;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    /// One last pass over every event, for shutdown, after the writes in flight have ended.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        self.pass(Duration::ZERO).await
    }

    /// Relays the oldest events at least `min_age` old; returns how many the Bus took.
    async fn pass(&self, min_age: Duration) -> Result<usize, StoreError> {
        let page = self.store.outbox(BATCH).await?;
        let now = OffsetDateTime::now_utc();
        let age = |e: &OutboxEvent| Duration::try_from(now - e.recorded_at).unwrap_or_default();
        self.metrics
            .outbox_events
            .store(page.total as i64, Ordering::Relaxed);
        let oldest = page.events.first().map_or(Duration::ZERO, age);
        self.metrics
            .outbox_oldest_ms
            .store(oldest.as_millis() as u64, Ordering::Relaxed);
        // An event delivered here is one whose own relay already gave up: no need to wait.
        let due: Vec<&OutboxEvent> = {
            let seen = self.seen();
            page.events
                .iter()
                .filter(|e| age(e) >= min_age || seen.contains(&e.id))
                .collect()
        };
        let mut done = Vec::new();
        let mut bus_down = false;
        for event in due {
            if !bus_down {
                match self.bus.publish(message(event)).await {
                    Ok(_) => {
                        done.push(event.id);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox relay: the bus is unavailable");
                        bus_down = true;
                    }
                }
            }
            // Kept for a later pass; meanwhile this instance's streams have it (once).
            self.deliver_here(event);
        }
        let relayed = done.len();
        self.metrics
            .outbox_relayed
            .fetch_add(relayed as u64, Ordering::Relaxed);
        self.forget(&done);
        self.store.outbox_done(done).await?;
        Ok(relayed)
    }

    /// Delivers `event` to this instance's streams, once per event while it is in the outbox.
    fn deliver_here(&self, event: &OutboxEvent) {
        {
            let mut seen = self.seen();
            if seen.contains(&event.id) || seen.len() >= MAX_DELIVERED_HERE {
                return;
            }
            seen.insert(event.id);
        }
        publish_here(&self.hub, message(event));
        self.metrics
            .outbox_local_deliveries
            .fetch_add(1, Ordering::Relaxed);
    }

    fn forget(&self, ids: &[Uuid]) {
        let mut seen = self.seen();
        for id in ids {
            seen.remove(id);
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.delivered_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Bus message of an outbox event (on `/v4`, with the event's own id).
fn message(event: &OutboxEvent) -> Message {
    Message {
        channel: Channel::V4,
        user: event.user.to_string(),
        event: Some(event.kind.event_name()),
        data: event.data.clone(),
        id: Some(event.event_id()),
        key: None,
    }
}
