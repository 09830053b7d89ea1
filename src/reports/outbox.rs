//! The event outbox: every change to a report is recorded, in the same transaction as the
//! change itself, as the event that announces it. The event stays in the store until it has
//! been relayed (produced to Kafka, or delivered to this instance's Hub without Kafka), so a
//! change that was committed cannot lose its event: not when the broker is down at the time,
//! not when the process dies right after the commit.
//!
//! An event's id is a UUID chosen when it is recorded. It is the SSE `id:` on every instance
//! and on every delivery, so a repeat (a retried relay, the local delivery made while Kafka was
//! down and the same event coming back from the broker) is recognised and dropped.

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::store::{Report, StoreError, timestamp};
use crate::domain::{EventId, EventName, UserId};

/// Event type sent to a user's streams when one of their reports was created.
pub const REPORT_CREATED: &str = "report_created";
/// Event type sent to a user's streams when a report's status changed.
pub const REPORT_STATUS_UPDATE: &str = "report_status_update";

/// What an outbox event announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `report_created`, data: the report.
    Created,
    /// `report_status_update`, data: `{"id","status"}`.
    StatusUpdate,
}

impl EventKind {
    /// The SSE event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => REPORT_CREATED,
            EventKind::StatusUpdate => REPORT_STATUS_UPDATE,
        }
    }

    /// The kind stored as `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        [EventKind::Created, EventKind::StatusUpdate]
            .into_iter()
            .find(|k| k.as_str() == name)
    }

    /// The SSE event type as an [`EventName`].
    pub fn event_name(self) -> EventName {
        // Both names are constants made of letters and `_`, always valid.
        EventName::parse(self.as_str()).unwrap_or_else(|_| unreachable!())
    }
}

/// One recorded event, waiting to be relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Its id (the SSE `id:` everywhere).
    pub id: Uuid,
    /// Whose streams get it.
    pub user: UserId,
    /// Its type.
    pub kind: EventKind,
    /// Its data (JSON).
    pub data: String,
    /// When it was recorded (with its change), UTC milliseconds.
    pub recorded_at: OffsetDateTime,
}

impl OutboxEvent {
    /// The `report_created` event of a new report.
    pub fn created(report: &Report) -> Result<Self, StoreError> {
        let data = serde_json::to_string(report)
            .map_err(|e| StoreError::Corrupt(format!("report to JSON: {e}")))?;
        Ok(Self::new(report.user_id, EventKind::Created, data))
    }

    /// The `report_status_update` event of a report that moved to its current status.
    pub fn status_changed(report: &Report) -> Self {
        let data = json!({ "id": report.report_id, "status": report.report_status }).to_string();
        Self::new(report.user_id, EventKind::StatusUpdate, data)
    }

    fn new(user: UserId, kind: EventKind, data: String) -> Self {
        Self {
            id: Uuid::new_v4(),
            user,
            kind,
            data,
            recorded_at: timestamp::now_millis(),
        }
    }

    /// The SSE id.
    pub fn event_id(&self) -> EventId {
        EventId::from_uuid(self.id)
    }
}

/// A committed change and the event recorded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The report as it is now stored.
    pub report: Report,
    /// The event that announces the change (already in the outbox).
    pub event: OutboxEvent,
}

/// The oldest events of the outbox and how many there are in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxPage {
    /// Oldest first, at most the number asked for.
    pub events: Vec<OutboxEvent>,
    /// Events in the outbox now (`events` included).
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_events_carry_the_report() {
        for kind in [EventKind::Created, EventKind::StatusUpdate] {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.event_name().as_str(), kind.as_str());
        }
        assert_eq!(EventKind::parse("report_deleted"), None);
        let report = Report::new_pending(UserId::new_v4());
        let created = OutboxEvent::created(&report).unwrap();
        assert_eq!(created.data, serde_json::to_string(&report).unwrap());
        let moved = OutboxEvent::status_changed(&report);
        assert_eq!(
            moved.data,
            format!(r#"{{"id":"{}","status":"pending"}}"#, report.report_id)
        );
        assert_ne!(created.id, moved.id);
        assert_eq!(moved.event_id().as_str(), moved.id.hyphenated().to_string());
    }
}
