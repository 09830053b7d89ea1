//! `ReportStore` on a local SQLite file (rusqlite, bundled SQLite), for single-node setups and tests.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::status::ReportStatus;
use super::store::{
    ConditionalStatusWrite, Report, ReportStore, StoreError, TransitionError, timestamp,
    transition_checked,
};
use crate::domain::{ReportId, UserId};

/// How long a statement waits for a lock held by another connection (another process on
/// the same file) before failing with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    report_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS reports_user_created ON reports (user_id, created_at);
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
#[derive(Clone)]
pub struct SqliteStore {
    /// One connection behind a std `Mutex`: `rusqlite::Connection` is `Send` but not `Sync`,
    /// SQLite runs one writer at a time anyway, and the lock is only ever taken inside
    /// `spawn_blocking` for one short statement (never held across an `.await`).
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, its parent directories and
    /// the schema; enables WAL mode, `synchronous=FULL` (a returned write is durable) and a
    /// busy timeout. Fails with `Unavailable` when the file or directory cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open sqlite {}: {e}", path.display()))
        })?;
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

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql_error)?;
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means a panic elsewhere while holding it; every statement
            // is atomic in SQLite, so the connection is still consistent.
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite worker failed: {e}")))?
    }
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
    async fn create(&self, user: UserId) -> Result<Report, StoreError> {
        let report = Report::new_pending(user);
        let row = SqliteRow::try_from(&report)?;
        self.with_conn(move |conn| {
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
            .map_err(sql_error)
        })
        .await?;
        Ok(report)
    }

    async fn get(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        self.read(user, report).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Report>, StoreError> {
        let rows = self
            .with_conn(move |conn| {
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

    async fn transition(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
    ) -> Result<Report, TransitionError> {
        transition_checked(self, user, report, to).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT count(*) FROM reports WHERE 0", [], |_| Ok(()))
                .map_err(sql_error)
        })
        .await
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl ConditionalStatusWrite for SqliteStore {
    async fn read(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        self.with_conn(move |conn| select_one(conn, user, report))
            .await
    }

    async fn write_if(
        &self,
        user: UserId,
        report: ReportId,
        expected: ReportStatus,
        to: ReportStatus,
    ) -> Result<Option<Report>, StoreError> {
        let now = format_time(timestamp::now_millis())?;
        let row = self
            .with_conn(move |conn| {
                conn.prepare_cached(&format!(
                    "UPDATE reports SET status = ?1, updated_at = ?2 \
                     WHERE report_id = ?3 AND user_id = ?4 AND status = ?5 \
                     RETURNING {COLUMNS}"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(
                        params![
                            to.as_str(),
                            now,
                            report.to_string(),
                            user.to_string(),
                            expected.as_str()
                        ],
                        SqliteRow::from_row,
                    )
                    .optional()
                })
                .map_err(sql_error)
            })
            .await?;
        row.map(Report::try_from).transpose()
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
            store.get(user, created.report_id).await.unwrap(),
            Some(created.clone())
        );
        let queued = store
            .transition(user, created.report_id, ReportStatus::Queued)
            .await
            .unwrap();
        assert_eq!(queued.report_status, ReportStatus::Queued);
        assert_eq!(store.list(user).await.unwrap(), vec![queued]);
    }

    #[tokio::test]
    async fn corrupt_row_in_table_is_corrupt_error() {
        let store = SqliteStore::open_in_memory().unwrap();
        let user = UserId::new_v4();
        let report = ReportId::new_v4();
        let (u, r) = (user.to_string(), report.to_string());
        store
            .with_conn(move |conn| {
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
