//! Storage of report statuses (issue 4): the state machine, the `ReportStore` trait, its
//! SQLite and DynamoDB backends and the event outbox every write records into.
//!
//! The HTTP layer holds an `Arc<dyn ReportStore>` and maps [`StoreError::Unavailable`] to
//! 503, [`TransitionError::NotFound`] to 404 and [`TransitionError::Invalid`] to 409.

pub mod dynamodb;
pub mod idempotency;
pub mod outbox;
pub mod sqlite;
pub mod status;
pub mod store;

pub use crate::domain::{ReportId, UserId};
pub use dynamodb::{DynamoConfig, DynamoStore, InitOutcome};
pub use idempotency::{Idempotency, KeyRecord, Outcome};
pub use outbox::{EventKind, OutboxEvent, OutboxPage, Written};
pub use sqlite::SqliteStore;
pub use status::{ReportStatus, UnknownStatus};
pub use store::{Report, ReportStore, StoreError, TransitionError};
