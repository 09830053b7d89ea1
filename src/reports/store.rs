//! The `ReportStore` trait every backend implements, its ids, its `Report` record and its errors.

use super::idempotency::{Idempotency, KeyRecord, Outcome};
use super::outbox::{OutboxEvent, OutboxPage, Written};
use super::status::ReportStatus;
use crate::domain::{ReportId, UserId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How many times `transition` re-reads and retries after losing a race while the
/// transition is still valid (a lost race with an invalid outcome answers at once).
pub const MAX_TRANSITION_ATTEMPTS: usize = 3;

/// One report's status record, as stored and as sent to clients.
///
/// JSON: `{"userId":"<uuid>","reportId":"<uuid>","reportStatus":"pending","createdAt":"2026-11-22T04:30:00.123Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Owner of the report.
    pub user_id: UserId,
    /// The report's id.
    pub report_id: ReportId,
    /// Current status.
    pub report_status: ReportStatus,
    /// Creation time, UTC, millisecond precision.
    #[serde(with = "timestamp::serde_rfc3339_millis")]
    pub created_at: OffsetDateTime,
}

impl Report {
    /// A new `pending` report for `user` with a fresh id, created now.
    pub fn new_pending(user: UserId) -> Self {
        Self {
            user_id: user,
            report_id: ReportId::new_v4(),
            report_status: ReportStatus::Pending,
            created_at: timestamp::now_millis(),
        }
    }

    /// The order `list` returns: oldest first by `created_at`, then by report id.
    pub fn list_order(a: &Report, b: &Report) -> std::cmp::Ordering {
        (a.created_at, a.report_id).cmp(&(b.created_at, b.report_id))
    }
}

/// RFC 3339 timestamps in UTC with exactly three fractional digits (`...T04:30:00.123Z`).
///
/// That fixed form also sorts lexicographically in time order.
pub mod timestamp {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    use time::{OffsetDateTime, UtcOffset};

    const MILLIS_UTC: &[time::format_description::BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

    /// The current time in UTC, truncated to whole milliseconds (so it round-trips exactly).
    pub fn now_millis() -> OffsetDateTime {
        truncate_millis(OffsetDateTime::now_utc())
    }

    /// `t` in UTC, truncated to whole milliseconds.
    pub fn truncate_millis(t: OffsetDateTime) -> OffsetDateTime {
        let t = t.to_offset(UtcOffset::UTC);
        let millis = t.millisecond();
        // Cannot fail: a millisecond count is always a valid nanosecond count.
        t.replace_millisecond(millis).unwrap_or(t)
    }

    /// Formats as `YYYY-MM-DDTHH:MM:SS.mmmZ`; fails only for years outside 0000..=9999.
    pub fn format(t: OffsetDateTime) -> Result<String, time::error::Format> {
        truncate_millis(t).format(MILLIS_UTC)
    }

    /// Parses any RFC 3339 timestamp, converts it to UTC and truncates it to milliseconds.
    pub fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(truncate_millis)
    }

    /// `#[serde(with = ...)]` adapter for the millisecond UTC RFC 3339 form.
    pub mod serde_rfc3339_millis {
        use serde::{Deserialize, Deserializer, Serializer, de, ser};
        use time::OffsetDateTime;

        /// Serializes as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
        pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
            let text = super::format(*t).map_err(ser::Error::custom)?;
            s.serialize_str(&text)
        }

        /// Deserializes any RFC 3339 timestamp (normalized to UTC milliseconds).
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            super::parse(&text).map_err(de::Error::custom)
        }
    }
}

/// A storage failure (not a domain outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time (connection refused, timeout,
    /// throttling, missing table, I/O error). The HTTP layer maps it to 503.
    #[error("report store unavailable: {0}")]
    Unavailable(String),
    /// A stored item or row does not parse as a report.
    #[error("corrupt report record: {0}")]
    Corrupt(String),
}

/// Why a status transition did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// No report with that id belongs to that user (missing or owned by someone else).
    #[error("report not found")]
    NotFound,
    /// The state machine forbids moving from `current` to the requested status.
    #[error(
        "invalid transition from {current}; allowed next: {}",
        display_list(allowed)
    )]
    Invalid {
        /// The report's status when the transition was refused.
        current: ReportStatus,
        /// The statuses `current` may move to.
        allowed: Vec<ReportStatus>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TransitionError {
    /// The `Invalid` outcome for a report currently in `current`.
    pub fn invalid(current: ReportStatus) -> Self {
        TransitionError::Invalid {
            current,
            allowed: current.allowed_next().to_vec(),
        }
    }
}

fn display_list(statuses: &[ReportStatus]) -> String {
    if statuses.is_empty() {
        return "none (final)".to_owned();
    }
    statuses
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Durable storage of report status records, one implementation per backend.
///
/// All methods are cancel-safe in the sense that a dropped future leaves the store
/// consistent (each write is a single atomic transaction).
///
/// Every write records the event that announces it in the outbox, atomically with the change
/// (see [`super::outbox`]): the change and its event are both stored, or neither is.
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    /// Creates a `pending` report for `user` with a new v4 id and `created_at` = now, and
    /// records its `report_created` event. Returns after the write is durable. Fails with
    /// `Unavailable` when the store is down.
    ///
    /// With a `key`, the key is recorded with the write (see [`super::idempotency`]), and a
    /// key already used by `user` answers [`Outcome::Replayed`] (same request) or
    /// [`Outcome::KeyReused`] (another request) without writing anything.
    async fn create_keyed(
        &self,
        user: UserId,
        key: Option<Idempotency>,
    ) -> Result<Outcome, StoreError>;

    /// [`ReportStore::create_keyed`] without a key.
    async fn create(&self, user: UserId) -> Result<Written, StoreError> {
        let outcome = self.create_keyed(user, None).await?;
        outcome
            .written()
            .ok_or_else(|| StoreError::Corrupt("a create without a key was not written".into()))
    }

    /// The report, or `None` when it does not exist or belongs to another user.
    async fn get(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError>;

    /// All reports of `user`, oldest first (by `created_at`, then report id).
    async fn list(&self, user: UserId) -> Result<Vec<Report>, StoreError>;

    /// Moves the report to `to` if the state machine allows it, with a conditional write
    /// (the status must still be the one that was checked and the user must match).
    ///
    /// Records the `report_status_update` event with the change, and the `key` as
    /// [`ReportStore::create_keyed`] does (a used key is answered before the state machine
    /// is consulted: its first request's answer stands).
    ///
    /// Fails with `NotFound` (missing or other user's), `Invalid` (forbidden from the
    /// current status, also when a concurrent writer changed it first) or `Store`.
    async fn transition_keyed(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
        key: Option<Idempotency>,
    ) -> Result<Outcome, TransitionError>;

    /// [`ReportStore::transition_keyed`] without a key.
    async fn transition(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
    ) -> Result<Written, TransitionError> {
        let outcome = self.transition_keyed(user, report, to, None).await?;
        outcome.written().ok_or_else(|| {
            StoreError::Corrupt("a transition without a key was not written".into()).into()
        })
    }

    /// The oldest `limit` events of the outbox (oldest first) and how many it holds.
    async fn outbox(&self, limit: usize) -> Result<OutboxPage, StoreError>;

    /// Removes relayed events from the outbox (ids no longer there are ignored).
    async fn outbox_done(&self, ids: Vec<uuid::Uuid>) -> Result<(), StoreError>;

    /// A cheap readiness check: `Ok` when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The backend's name (`"sqlite"`, `"dynamodb"`).
    fn name(&self) -> &'static str;
}

/// What a conditional status write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteIf {
    /// Written: the report as it now is.
    Written(Report),
    /// The report was not as expected (changed, deleted, another user's): nothing written.
    Changed,
    /// The idempotency key was recorded by another request first: nothing written.
    KeyTaken,
}

/// The primitives a backend provides so that [`transition_checked`] can implement the
/// read–check–conditional-write contract of [`ReportStore::transition_keyed`].
#[async_trait]
pub(crate) trait ConditionalStatusWrite: Send + Sync {
    /// Same as [`ReportStore::get`] (a strongly consistent read).
    async fn read(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError>;

    /// `user`'s record of `key`, if it is stored (live or not); a strongly consistent read.
    async fn read_key(&self, user: UserId, key: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Sets the status to `to`, records `event` in the outbox and `key` (if any) with the
    /// moved report, all or nothing, only if the record still exists, belongs to `current`'s
    /// user and has `current`'s status, and the key is not live already.
    async fn write_if(
        &self,
        current: &Report,
        to: ReportStatus,
        event: &OutboxEvent,
        key: Option<&Idempotency>,
    ) -> Result<WriteIf, StoreError>;
}

/// The outcome for a key found already recorded: its first request's answer, or a misuse.
/// `None` when there is no live record (then the write may go ahead).
pub(crate) async fn recorded_outcome(
    store: &dyn ConditionalStatusWrite,
    user: UserId,
    key: &Idempotency,
) -> Result<Option<Outcome>, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    Ok(store
        .read_key(user, &key.key)
        .await?
        .filter(|record| record.is_live(now))
        .map(|record| record.outcome(&key.request)))
}

/// With a key, first answers a key already used; then reads, checks with the state
/// machine and writes conditionally; after a lost race re-reads and answers with the
/// now-current status, retrying at most [`MAX_TRANSITION_ATTEMPTS`] times while the
/// transition is still valid.
pub(crate) async fn transition_checked(
    store: &dyn ConditionalStatusWrite,
    user: UserId,
    report: ReportId,
    to: ReportStatus,
    key: Option<&Idempotency>,
) -> Result<Outcome, TransitionError> {
    if let Some(key) = key
        && let Some(outcome) = recorded_outcome(store, user, key).await?
    {
        return Ok(outcome);
    }
    let mut current = store
        .read(user, report)
        .await?
        .ok_or(TransitionError::NotFound)?;
    for _ in 0..MAX_TRANSITION_ATTEMPTS {
        if !current.report_status.can_transition_to(to) {
            return Err(TransitionError::invalid(current.report_status));
        }
        let event = OutboxEvent::status_changed(&Report {
            report_status: to,
            ..current.clone()
        });
        match store.write_if(&current, to, &event, key).await? {
            WriteIf::Written(updated) => {
                return Ok(Outcome::Written(Written {
                    report: updated,
                    event,
                }));
            }
            WriteIf::KeyTaken => {
                // A concurrent request with the same key got there first.
                let outcome = match key {
                    Some(key) => recorded_outcome(store, user, key).await?,
                    None => None,
                };
                return Ok(outcome.unwrap_or(Outcome::KeyInProgress));
            }
            WriteIf::Changed => {}
        }
        // Someone else changed (or deleted) the record between our read and write.
        current = store
            .read(user, report)
            .await?
            .ok_or(TransitionError::NotFound)?;
    }
    // Still losing races after the bounded retries: answer with what is there now.
    Err(TransitionError::invalid(current.report_status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> Report {
        Report {
            user_id: "6f1c9a3e-8d2b-4c4a-9e57-0a1b2c3d4e5f".parse().unwrap(),
            report_id: "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b".parse().unwrap(),
            report_status: ReportStatus::Pending,
            created_at: datetime!(2026-11-22 04:30:00.123 UTC),
        }
    }

    #[test]
    fn report_json_shape() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"{"userId":"6f1c9a3e-8d2b-4c4a-9e57-0a1b2c3d4e5f","reportId":"0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b","reportStatus":"pending","createdAt":"2026-11-22T04:30:00.123Z"}"#
        );
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn timestamps_are_utc_millis() {
        let t = datetime!(2026-01-02 03:04:05.678901234 +02:00);
        assert_eq!(timestamp::format(t).unwrap(), "2026-01-02T01:04:05.678Z");
        assert_eq!(
            timestamp::format(datetime!(2026-01-02 03:04:05 UTC)).unwrap(),
            "2026-01-02T03:04:05.000Z"
        );
        assert_eq!(
            timestamp::parse("2026-01-02T03:04:05.678901+02:00").unwrap(),
            datetime!(2026-01-02 01:04:05.678 UTC)
        );
        assert!(timestamp::parse("yesterday").is_err());
        let now = timestamp::now_millis();
        assert_eq!(now.nanosecond() % 1_000_000, 0);
        assert_eq!(
            timestamp::parse(&timestamp::format(now).unwrap()).unwrap(),
            now
        );
    }

    #[test]
    fn ids_parse_and_display() {
        let id: ReportId = "0B8E7D6C-5A4F-4E3D-8C2B-1A0F9E8D7C6B".parse().unwrap();
        assert_eq!(id.to_string(), "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b");
        assert!("not-a-uuid".parse::<UserId>().is_err());
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b\""
        );
    }

    /// A record whose status a "concurrent writer" changes before each of our writes.
    struct Racy {
        report: std::sync::Mutex<Report>,
        /// Statuses the other writer sets, one per `write_if` call (then we win).
        interference: std::sync::Mutex<Vec<ReportStatus>>,
        writes: std::sync::atomic::AtomicUsize,
    }

    impl Racy {
        fn new(status: ReportStatus, interference: &[ReportStatus]) -> Self {
            let mut report = sample();
            report.report_status = status;
            Racy {
                report: std::sync::Mutex::new(report),
                interference: std::sync::Mutex::new(interference.iter().rev().copied().collect()),
                writes: Default::default(),
            }
        }
    }

    #[async_trait]
    impl ConditionalStatusWrite for Racy {
        async fn read(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
            let r = self.report.lock().unwrap().clone();
            Ok((r.user_id == user && r.report_id == report).then_some(r))
        }

        async fn read_key(
            &self,
            _user: UserId,
            _key: &str,
        ) -> Result<Option<KeyRecord>, StoreError> {
            Ok(None)
        }

        async fn write_if(
            &self,
            current: &Report,
            to: ReportStatus,
            _event: &OutboxEvent,
            _key: Option<&Idempotency>,
        ) -> Result<WriteIf, StoreError> {
            let expected = current.report_status;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = self.report.lock().unwrap();
            if let Some(other) = self.interference.lock().unwrap().pop() {
                r.report_status = other;
            }
            if r.report_status != expected {
                return Ok(WriteIf::Changed);
            }
            r.report_status = to;
            Ok(WriteIf::Written(r.clone()))
        }
    }

    /// An unkeyed `transition_checked`, whose success is always a write.
    async fn checked(
        racy: &Racy,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
    ) -> Result<Written, TransitionError> {
        let outcome = transition_checked(racy, user, report, to, None).await?;
        Ok(outcome.written().expect("no key, so written"))
    }

    #[tokio::test]
    async fn lost_race_answers_invalid_with_new_status() {
        let racy = Racy::new(ReportStatus::Pending, &[ReportStatus::Queued]);
        let r = sample();
        let got = checked(&racy, r.user_id, r.report_id, ReportStatus::Queued).await;
        assert_eq!(got, Err(TransitionError::invalid(ReportStatus::Queued)));
        assert_eq!(racy.writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn lost_race_now_invalid_is_not_retried() {
        // We want canceled -> pending, but the other writer already moved it to pending:
        // pending -> pending is invalid, so the answer is Invalid without a second write.
        let racy = Racy::new(ReportStatus::Canceled, &[ReportStatus::Pending]);
        let r = sample();
        let got = checked(&racy, r.user_id, r.report_id, ReportStatus::Pending).await;
        assert_eq!(got, Err(TransitionError::invalid(ReportStatus::Pending)));
        assert_eq!(racy.writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn lost_race_still_valid_retries_then_wins() {
        // We want pending -> canceled; the other writer queues it first. queued -> canceled
        // is valid too, so the second attempt goes through.
        let racy = Racy::new(ReportStatus::Pending, &[ReportStatus::Queued]);
        let r = sample();
        let got = checked(&racy, r.user_id, r.report_id, ReportStatus::Canceled).await;
        let got = got.unwrap();
        assert_eq!(got.report.report_status, ReportStatus::Canceled);
        assert_eq!(
            got.event,
            OutboxEvent {
                data: format!(r#"{{"id":"{}","status":"canceled"}}"#, r.report_id),
                ..got.event.clone()
            }
        );
        assert_eq!(racy.writes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        // The other writer flips pending/queued before every write; canceled stays valid
        // from both, so only the attempt bound stops the loop.
        let flips: Vec<_> = (0..MAX_TRANSITION_ATTEMPTS + 5)
            .map(|i| {
                if i % 2 == 0 {
                    ReportStatus::Queued
                } else {
                    ReportStatus::Pending
                }
            })
            .collect();
        let racy = Racy::new(ReportStatus::Pending, &flips);
        let r = sample();
        let got = checked(&racy, r.user_id, r.report_id, ReportStatus::Canceled).await;
        assert!(
            matches!(got, Err(TransitionError::Invalid { .. })),
            "{got:?}"
        );
        assert_eq!(
            racy.writes.load(std::sync::atomic::Ordering::SeqCst),
            MAX_TRANSITION_ATTEMPTS
        );
    }

    #[tokio::test]
    async fn missing_or_foreign_is_not_found() {
        let racy = Racy::new(ReportStatus::Pending, &[]);
        let r = sample();
        let got = checked(&racy, UserId::new_v4(), r.report_id, ReportStatus::Queued).await;
        assert_eq!(got, Err(TransitionError::NotFound));
        let got = checked(&racy, r.user_id, ReportId::new_v4(), ReportStatus::Queued).await;
        assert_eq!(got, Err(TransitionError::NotFound));
        assert_eq!(racy.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn invalid_error_lists_allowed() {
        let err = TransitionError::invalid(ReportStatus::Queued);
        assert_eq!(
            err,
            TransitionError::Invalid {
                current: ReportStatus::Queued,
                allowed: vec![ReportStatus::Processing, ReportStatus::Canceled],
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid transition from queued; allowed next: processing, canceled"
        );
        assert!(
            TransitionError::invalid(ReportStatus::Completed)
                .to_string()
                .ends_with("none (final)")
        );
    }
}
