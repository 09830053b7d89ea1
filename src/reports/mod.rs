//! Storage of report statuses (issue 4): the state machine, the `ReportStore` trait and its
//! SQLite and DynamoDB backends.
//!
//! The HTTP layer holds an `Arc<dyn ReportStore>` and maps [`StoreError::Unavailable`] to
//! 503, [`TransitionError::NotFound`] to 404 and [`TransitionError::Invalid`] to 409.

pub mod dynamodb;
pub mod sqlite;
pub mod status;
pub mod store;

pub use crate::domain::{ReportId, UserId};
pub use dynamodb::{DynamoConfig, DynamoStore, InitOutcome};
pub use sqlite::SqliteStore;
pub use status::{ReportStatus, UnknownStatus};
pub use store::{Report, ReportStore, StoreError, TransitionError};
