//! `ReportStore` on a local SQLite file (rusqlite, bundled SQLite), for single-node setups and tests.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::idempotency::{Idempotency, KeyRecord, Outcome, forgotten_before};
use super::outbox::{EventKind, OutboxEvent, OutboxPage, Written};
use super::status::ReportStatus;
use super::store::{Report, ReportStore, StoreError, TransitionError, timestamp};
use crate::domain::{ReportId, UserId};

/// How long an operation may take, waiting for locks included, unless
/// [`SqliteStore::with_timeout`] says otherwise (the default `--store-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest the readiness probe waits for the write lock.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes the readiness probe writes: more than any one report write (a few pages), so that
/// "ready" means a write fits, not merely the smallest one (on a nearly full disk SQLite reuses
/// the space of a failed transaction, which a tiny probe would fit into).
const PROBE_BYTES: i64 = 32 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    report_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS reports_user_created ON reports (user_id, created_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    event       TEXT NOT NULL,
    data        TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    user_id TEXT NOT NULL,
    key     TEXT NOT NULL,
    request TEXT NOT NULL,
    report  TEXT NOT NULL,
    used_at TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_used ON idempotency (used_at);
DROP TABLE IF EXISTS store_probe;
CREATE TABLE IF NOT EXISTS readiness_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT NOT NULL,
    padding   BLOB NOT NULL
);
";

const COLUMNS: &str = "report_id, user_id, status, created_at";

/// A `reports` row as stored: every column is text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteRow {
    /// `report_id` column (hyphenated UUID).
    pub report_id: String,
    /// `user_id` column (hyphenated UUID).
    pub user_id: String,
    /// `status` column (lowercase status name).
    pub status: String,
    /// `created_at` column (RFC 3339, UTC, milliseconds).
    pub created_at: String,
}

impl SqliteRow {
    /// Reads the four columns selected by `COLUMNS`, in that order.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            report_id: row.get(0)?,
            user_id: row.get(1)?,
            status: row.get(2)?,
            created_at: row.get(3)?,
        })
    }
}

impl TryFrom<SqliteRow> for Report {
    type Error = StoreError;

    /// Fails with `Corrupt` when a column does not parse.
    fn try_from(row: SqliteRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str, value: &str, err: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!(
                "sqlite row {}: bad {what} {value:?}: {err}",
                row.report_id
            ))
        };
        Ok(Report {
            report_id: row
                .report_id
                .parse()
                .map_err(|e| corrupt("report_id", &row.report_id, &e))?,
            user_id: row
                .user_id
                .parse()
                .map_err(|e| corrupt("user_id", &row.user_id, &e))?,
            report_status: row
                .status
                .parse()
                .map_err(|e| corrupt("status", &row.status, &e))?,
            created_at: timestamp::parse(&row.created_at)
                .map_err(|e| corrupt("created_at", &row.created_at, &e))?,
        })
    }
}

impl TryFrom<&Report> for SqliteRow {
    type Error = StoreError;

    /// Fails with `Corrupt` only for a `created_at` outside years 0000..=9999.
    fn try_from(report: &Report) -> Result<Self, Self::Error> {
        Ok(SqliteRow {
            report_id: report.report_id.to_string(),
            user_id: report.user_id.to_string(),
            status: report.report_status.as_str().to_owned(),
            created_at: format_time(report.created_at)?,
        })
    }
}

fn format_time(t: time::OffsetDateTime) -> Result<String, StoreError> {
    timestamp::format(t).map_err(|e| StoreError::Corrupt(format!("unformattable timestamp: {e}")))
}

fn sql_error(err: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {err}"))
}

/// SQLite-backed [`ReportStore`].
///
/// Every write is an explicit `BEGIN IMMEDIATE … COMMIT` whose commit is checked, so a write
/// that reports success is durable and one that reports failure left nothing behind. Each
/// operation has a deadline (`--store-timeout`): waiting for the connection and for another
/// process's lock counts against it, and a write whose deadline passed before its commit is
/// rolled back, so nothing lands after the caller gave up.
#[derive(Clone)]
pub struct SqliteStore {
    /// One connection behind a std `Mutex`: `rusqlite::Connection` is `Send` but not `Sync`,
    /// SQLite runs one writer at a time anyway, and the lock is only ever taken inside
    /// `spawn_blocking` for one short transaction (never held across an `.await`).
    conn: Arc<Mutex<Connection>>,
    timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, its parent directories and
    /// the schema; enables WAL mode and `synchronous=FULL` (a committed write is durable).
    /// Fails with `Unavailable` when the file or directory cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open sqlite {}: {e}", path.display()))
        })?;
        conn.busy_timeout(DEFAULT_TIMEOUT).map_err(sql_error)?;
        // `journal_mode` answers with the mode in force, so it is read as a query.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(sql_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, path = %path.display(), "sqlite did not switch to WAL mode");
        }
        Self::init(conn)
    }

    /// A private in-memory database (nothing survives the store); for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(sql_error)?)
    }

    /// The same store with `timeout` as every operation's deadline (`--store-timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(DEFAULT_TIMEOUT).map_err(sql_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql_error)?;
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Runs `f` with the connection on the blocking pool, within `limit` from now: the time
    /// spent waiting for the connection counts, and what is left becomes SQLite's busy
    /// timeout, so a lock held by another process makes the operation fail, not wait on.
    async fn with_conn<T, F>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Instant) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let deadline = Instant::now() + limit;
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means a panic elsewhere while holding it; every
            // transaction is rolled back or committed before the lock is released.
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let left = time_left(deadline)?;
            conn.busy_timeout(left).map_err(sql_error)?;
            f(&conn, deadline)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite worker failed: {e}")))?
    }

    /// Runs `body` in a write transaction (`BEGIN IMMEDIATE`, so the write lock is taken
    /// first and no statement inside waits for it) and commits it, checked, unless the
    /// deadline passed or `body` failed: then it is rolled back and nothing was written.
    async fn write<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_conn(self.timeout, move |conn, deadline| {
            in_transaction(conn, deadline, body)
        })
        .await
    }
}

/// What is left until `deadline`, or the error of an operation that ran out of time.
fn time_left(deadline: Instant) -> Result<Duration, StoreError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| {
            StoreError::Unavailable("sqlite: timed out waiting for the database".to_owned())
        })
}

/// `BEGIN IMMEDIATE`, `body`, then `COMMIT` if `body` succeeded and the deadline has not
/// passed; otherwise (or when the commit fails, e.g. a full disk) `ROLLBACK`.
fn in_transaction<T>(
    conn: &Connection,
    deadline: Instant,
    body: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_error)?;
    let outcome = body(conn).and_then(|value| {
        time_left(deadline)?;
        conn.execute_batch("COMMIT").map_err(sql_error)?;
        Ok(value)
    });
    if outcome.is_err() && !conn.is_autocommit() {
        // The transaction is still open: undo it. A failed rollback leaves SQLite to roll
        // back on its own (the journal is never committed), so its error changes nothing.
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "sqlite rollback failed");
        }
    }
    outcome
}

/// Records `event` in the outbox, inside the caller's transaction.
fn record(conn: &Connection, event: &OutboxEvent) -> Result<(), StoreError> {
    let at = format_time(event.recorded_at)?;
    conn.prepare_cached(
        "INSERT INTO outbox (event_id, user_id, event, data, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            event.id.to_string(),
            event.user.to_string(),
            event.kind.as_str(),
            event.data,
            at
        ])
    })
    .map(drop)
    .map_err(sql_error)
}

/// An outbox row as an event; `Corrupt` when a column does not parse.
fn outbox_event(
    (id, user, kind, data, at): (String, String, String, String, String),
) -> Result<OutboxEvent, StoreError> {
    let corrupt = |what: &str, value: &str| {
        StoreError::Corrupt(format!("sqlite outbox row {id}: bad {what} {value:?}"))
    };
    Ok(OutboxEvent {
        id: id.parse().map_err(|_| corrupt("event_id", &id))?,
        user: user.parse().map_err(|_| corrupt("user_id", &user))?,
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt("event", &kind))?,
        recorded_at: timestamp::parse(&at).map_err(|_| corrupt("recorded_at", &at))?,
        data,
    })
}

/// Expired keys deleted per keyed write: the table is swept as it is used, a little each time.
const KEY_SWEEP: i64 = 16;

/// `user`'s live record of `key`, inside the caller's transaction.
fn live_key(
    conn: &Connection,
    user: UserId,
    key: &str,
    now: time::OffsetDateTime,
) -> Result<Option<KeyRecord>, StoreError> {
    let row: Option<(String, String, String)> = conn
        .prepare_cached(
            "SELECT request, report, used_at FROM idempotency WHERE user_id = ?1 AND key = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![user.to_string(), key], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()
        })
        .map_err(sql_error)?;
    let Some((request, report, used_at)) = row else {
        return Ok(None);
    };
    let corrupt =
        |what: &str| StoreError::Corrupt(format!("sqlite idempotency key {key:?}: bad {what}"));
    let record = KeyRecord {
        request,
        report: serde_json::from_str(&report).map_err(|_| corrupt("report"))?,
        used_at: timestamp::parse(&used_at).map_err(|_| corrupt("used_at"))?,
    };
    Ok(record.is_live(now).then_some(record))
}

/// Records `key` as answered with `report`, inside the caller's transaction (replacing an
/// expired record of the same key), and forgets a few expired keys.
fn record_key(
    conn: &Connection,
    user: UserId,
    key: &Idempotency,
    report: &Report,
    now: time::OffsetDateTime,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(report)
        .map_err(|e| StoreError::Corrupt(format!("report to JSON: {e}")))?;
    let used_at = format_time(now)?;
    let cutoff = format_time(forgotten_before(now))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency (user_id, key, request, report, used_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            user.to_string(),
            key.key,
            key.request,
            json,
            used_at
        ])
    })
    .map_err(sql_error)?;
    conn.prepare_cached(
        "DELETE FROM idempotency WHERE rowid IN \
         (SELECT rowid FROM idempotency WHERE used_at < ?1 ORDER BY used_at LIMIT ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![cutoff, KEY_SWEEP]))
    .map(drop)
    .map_err(sql_error)
}

fn select_one(
    conn: &Connection,
    user: UserId,
    report: ReportId,
) -> Result<Option<Report>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM reports WHERE report_id = ?1 AND user_id = ?2"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(params![report.to_string(), user.to_string()], |row| {
                SqliteRow::from_row(row)
            })
            .optional()
        })
        .map_err(sql_error)?;
    row.map(Report::try_from).transpose()
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn create_keyed(
        &self,
        user: UserId,
        key: Option<Idempotency>,
    ) -> Result<Outcome, StoreError> {
        let report = Report::new_pending(user);
        let row = SqliteRow::try_from(&report)?;
        let event = OutboxEvent::created(&report)?;
        let now = time::OffsetDateTime::now_utc();
        self.write(move |conn| {
            if let Some(key) = &key
                && let Some(record) = live_key(conn, user, &key.key, now)?
            {
                return Ok(record.outcome(&key.request));
            }
            record(conn, &event)?;
            conn.prepare_cached(
                "INSERT INTO reports (report_id, user_id, status, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row.report_id,
                    row.user_id,
                    row.status,
                    row.created_at
                ])
            })
            .map_err(sql_error)?;
            if let Some(key) = &key {
                record_key(conn, user, key, &report, now)?;
            }
            Ok(Outcome::Written(Written { report, event }))
        })
        .await
    }

    async fn get(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        self.with_conn(self.timeout, move |conn, _| select_one(conn, user, report))
            .await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Report>, StoreError> {
        let rows = self
            .with_conn(self.timeout, move |conn, _| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM reports WHERE user_id = ?1 \
                         ORDER BY created_at, report_id"
                    ))
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![user.to_string()], SqliteRow::from_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(sql_error)?;
                Ok(rows)
            })
            .await?;
        let mut reports = rows
            .into_iter()
            .map(Report::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        reports.sort_by(Report::list_order);
        Ok(reports)
    }

    /// One transaction: the key, read, check with the state machine, update, commit. The write lock
    /// is held from the read on, so no other writer can come in between and there is no
    /// race to retry; the whole of it shares one deadline.
    async fn transition_keyed(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
        key: Option<Idempotency>,
    ) -> Result<Outcome, TransitionError> {
        let at = time::OffsetDateTime::now_utc();
        let now = format_time(at)?;
        self.write(move |conn| {
            if let Some(key) = &key
                && let Some(record) = live_key(conn, user, &key.key, at)?
            {
                return Ok(Ok(record.outcome(&key.request)));
            }
            let Some(current) = select_one(conn, user, report)? else {
                return Ok(Err(TransitionError::NotFound));
            };
            if !current.report_status.can_transition_to(to) {
                return Ok(Err(TransitionError::invalid(current.report_status)));
            }
            let changed = conn
                .prepare_cached(
                    "UPDATE reports SET status = ?1, updated_at = ?2 \
                     WHERE report_id = ?3 AND user_id = ?4",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        to.as_str(),
                        now,
                        report.to_string(),
                        user.to_string()
                    ])
                })
                .map_err(sql_error)?;
            if changed != 1 {
                return Err(StoreError::Unavailable(format!(
                    "sqlite: the update of report {report} changed {changed} rows"
                )));
            }
            let report = Report {
                report_status: to,
                ..current
            };
            let event = OutboxEvent::status_changed(&report);
            record(conn, &event)?;
            if let Some(key) = &key {
                record_key(conn, user, key, &report, at)?;
            }
            Ok(Ok(Outcome::Written(Written { report, event })))
        })
        .await?
    }

    async fn outbox(&self, limit: usize) -> Result<OutboxPage, StoreError> {
        let (rows, total) = self
            .with_conn(self.timeout, move |conn, _| {
                let total: i64 = conn
                    .query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))
                    .map_err(sql_error)?;
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT event_id, user_id, event, data, recorded_at FROM outbox \
                         ORDER BY seq LIMIT ?1",
                    )
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![limit as i64], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(sql_error)?;
                Ok((rows, total))
            })
            .await?;
        Ok(OutboxPage {
            events: rows
                .into_iter()
                .map(outbox_event)
                .collect::<Result<_, _>>()?,
            total: total.max(0) as u64,
        })
    }

    async fn outbox_done(&self, ids: Vec<uuid::Uuid>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached("DELETE FROM outbox WHERE event_id = ?1")
                .map_err(sql_error)?;
            for id in &ids {
                stmt.execute(params![id.to_string()]).map_err(sql_error)?;
            }
            Ok(())
        })
        .await
    }

    /// Ready means writable: commits a row of its own (a full disk, a lock held by another
    /// process or a read-only file all fail it) and reads the reports table.
    async fn ping(&self) -> Result<(), StoreError> {
        let now = format_time(timestamp::now_millis())?;
        self.with_conn(self.timeout.min(PROBE_TIMEOUT), move |conn, deadline| {
            conn.query_row("SELECT count(*) FROM reports WHERE 0", [], |_| Ok(()))
                .map_err(sql_error)?;
            in_transaction(conn, deadline, |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO readiness_probe (id, probed_at, padding) \
                     VALUES (1, ?1, randomblob(?2))",
                    params![now, PROBE_BYTES],
                )
                .map_err(sql_error)
            })
            .map(drop)
        })
        .await
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_round_trip() {
        let report = Report::new_pending(UserId::new_v4());
        let row = SqliteRow::try_from(&report).unwrap();
        assert_eq!(row.status, "pending");
        assert_eq!(row.report_id, report.report_id.to_string());
        assert_eq!(Report::try_from(row).unwrap(), report);
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let good = SqliteRow::try_from(&Report::new_pending(UserId::new_v4())).unwrap();
        let bad_rows = [
            SqliteRow {
                status: "done".into(),
                ..good.clone()
            },
            SqliteRow {
                user_id: "x".into(),
                ..good.clone()
            },
            SqliteRow {
                report_id: String::new(),
                ..good.clone()
            },
            SqliteRow {
                created_at: "2026-13-01".into(),
                ..good.clone()
            },
        ];
        for row in bad_rows {
            match Report::try_from(row.clone()) {
                Err(StoreError::Corrupt(msg)) => assert!(msg.contains("bad"), "{msg}"),
                other => panic!("{row:?} gave {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn in_memory_basics() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.ping().await.unwrap();
        let user = UserId::new_v4();
        let created = store.create(user).await.unwrap();
        assert_eq!(
            store.get(user, created.report.report_id).await.unwrap(),
            Some(created.report.clone())
        );
        let queued = store
            .transition(user, created.report.report_id, ReportStatus::Queued)
            .await
            .unwrap();
        assert_eq!(queued.report.report_status, ReportStatus::Queued);
        assert_eq!(store.list(user).await.unwrap(), vec![queued.report]);
        // Both events wait in the outbox, oldest first, until they are marked relayed.
        let page = store.outbox(10).await.unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(
            page.events,
            vec![created.event.clone(), queued.event.clone()]
        );
        assert_eq!(
            store.outbox(1).await.unwrap().events,
            vec![created.event.clone()]
        );
        store.outbox_done(vec![created.event.id]).await.unwrap();
        let page = store.outbox(10).await.unwrap();
        assert_eq!((page.total, page.events), (1, vec![queued.event]));
    }

    #[tokio::test]
    async fn corrupt_row_in_table_is_corrupt_error() {
        let store = SqliteStore::open_in_memory().unwrap();
        let user = UserId::new_v4();
        let report = ReportId::new_v4();
        let (u, r) = (user.to_string(), report.to_string());
        store
            .with_conn(Duration::from_secs(1), move |conn, _| {
                conn.execute(
                    "INSERT INTO reports (report_id, user_id, status, created_at) VALUES (?1, ?2, 'bogus', 'x')",
                    params![r, u],
                )
                .map_err(sql_error)
            })
            .await
            .unwrap();
        assert!(matches!(
            store.get(user, report).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.list(user).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.transition(user, report, ReportStatus::Queued).await,
            Err(TransitionError::Store(StoreError::Corrupt(_)))
        ));
    }
}
