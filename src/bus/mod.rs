//! The Bus: how a published message reaches the Hub of every instance.
//!
//! Without Kafka the bus is in-process ([`LocalBus`]): a publish goes straight to this
//! instance's Hub. With Kafka (see `kafka`), a publish is produced to the channel's topic and
//! every instance's consumer hands it to its own Hub, so a user's streams get it wherever they
//! are connected.

pub mod kafka;
pub mod keys;
pub mod partitions;
pub mod relay;

use async_trait::async_trait;

use crate::domain::{Channel, EventId, EventName};
use crate::hub::Hub;

/// One message for one user's streams on one channel.
#[derive(Debug, Clone)]
pub struct Message {
    /// Channel whose streams receive it (`V3` or `V4` go over Kafka when it is on).
    pub channel: Channel,
    /// The recipient (a validated username or user id).
    pub user: String,
    /// Optional SSE event type.
    pub event: Option<EventName>,
    /// The event data (any text; the encoder makes it safe).
    pub data: String,
    /// An id chosen before publishing (an outbox event's), kept on every instance and every
    /// delivery so repeats are dropped; `None`: the Hub or the broker assigns one.
    pub id: Option<EventId>,
    /// The publishing request's `Idempotency-Key` (see [`keys`]): carried to every instance,
    /// whose consumers deliver one record per key.
    pub key: Option<String>,
}

/// What a publish achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered in this process: queued to `delivered` connections.
    Local {
        /// Connections reached.
        delivered: usize,
        /// Event id, when one was assigned.
        id: Option<EventId>,
    },
    /// Acknowledged by the broker; every instance delivers it with this id.
    Cluster {
        /// The event id all instances use (partition and offset).
        id: EventId,
    },
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker did not acknowledge in time, or refused the write.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

/// Health of the bus for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusHealth {
    /// In-process only (Kafka not configured).
    Disabled,
    /// Connected and consuming.
    Ok,
    /// Not usable right now, with the reason.
    Down(String),
    /// Usable, but still reading the log's recent past (`remaining` records) or behind its
    /// end (`lag` records): a client resuming here might not find what it missed yet.
    CatchingUp {
        /// Records still to read back.
        remaining: u64,
        /// Records not yet consumed.
        lag: u64,
    },
}

/// Carries messages to the Hubs of every instance.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `message`; returns once it is delivered locally or acknowledged by the broker.
    async fn publish(&self, message: Message) -> Result<Delivery, BusError>;

    /// Whether publishing works now (`Ok` or `Down`).
    fn health(&self) -> BusHealth;

    /// Whether this instance is ready for clients: [`Bus::health`], and caught up with the
    /// log (else [`BusHealth::CatchingUp`]).
    fn readiness(&self) -> BusHealth {
        self.health()
    }

    /// Waits, at most `limit`, until a stream of `channel` resuming here after `last_event_id`
    /// can find what it missed: the bus has caught up with its log, and has consumed the
    /// record that id names (the client may have seen it on another instance that was ahead).
    /// Whether it can.
    async fn wait_caught_up(
        &self,
        _channel: Channel,
        _last_event_id: &str,
        _limit: std::time::Duration,
    ) -> bool {
        true
    }

    /// Extra Prometheus lines of the bus.
    fn metrics_text(&self) -> String {
        String::new()
    }
}

/// Hands `m` to this instance's Hub: with its own id when it has one (a repeat of an id the
/// user's history holds is dropped), else with the next local id.
pub fn publish_here(hub: &Hub, m: Message) -> crate::hub::Published {
    match m.id {
        Some(id) => hub.publish_with_id(m.channel, &m.user, m.event.as_ref(), &m.data, id),
        None => hub.publish(m.channel, &m.user, m.event.as_ref(), &m.data),
    }
}

/// The in-process bus: publishes go straight to this instance's Hub.
pub struct LocalBus {
    hub: Hub,
}

impl LocalBus {
    /// A bus over `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, m: Message) -> Result<Delivery, BusError> {
        let published = publish_here(&self.hub, m);
        Ok(Delivery::Local {
            delivered: published.delivered,
            id: published.id,
        })
    }

    fn health(&self) -> BusHealth {
        BusHealth::Disabled
    }
}
