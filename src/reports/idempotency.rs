//! Idempotency keys of report writes (`Idempotency-Key`, IETF httpapi draft): the store keeps,
//! per user and key, what the first request asked for and the report it answered with, in the
//! same transaction as the write itself. A retry with the same key and the same request gets
//! that answer again and writes nothing; the same key with another request is refused.
//!
//! A key is kept for [`KEY_LIFETIME`]; after that it may be used again as a new key.

use std::time::Duration;

use time::OffsetDateTime;

use super::outbox::Written;
use super::store::Report;

/// How long a used key is remembered.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest key accepted (characters, all printable ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// Whether `key` is a usable key: 1 to [`MAX_KEY_LEN`] printable ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A write's idempotency key with a description of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key as the client sent it (unquoted), 1..=[`MAX_KEY_LEN`] printable ASCII.
    pub key: String,
    /// What the request asked for (route and meaningful body): two requests with one key and
    /// different `request`s are a misuse of the key.
    pub request: String,
}

/// A stored key: what its first request asked for and the report it answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The first request's [`Idempotency::request`].
    pub request: String,
    /// The report as the first request answered with it.
    pub report: Report,
    /// When the key was first used.
    pub used_at: OffsetDateTime,
}

impl KeyRecord {
    /// Whether the key is still remembered at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now - self.used_at < KEY_LIFETIME
    }

    /// The outcome of a new request with this record's key.
    pub fn outcome(self, request: &str) -> Outcome {
        if self.request == request {
            Outcome::Replayed(self.report)
        } else {
            Outcome::KeyReused {
                first: self.request,
            }
        }
    }
}

/// What a write with an optional idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now (its event is in the outbox).
    Written(Written),
    /// The key's first request already did this: nothing was written, here is its report.
    Replayed(Report),
    /// The key was first used for another request (`first`); nothing was written.
    KeyReused {
        /// The first request's description.
        first: String,
    },
    /// Another request with the key is being written at this moment; nothing was written.
    KeyInProgress,
}

impl Outcome {
    /// The write, when this outcome is one (for callers that pass no key).
    pub fn written(self) -> Option<Written> {
        match self {
            Outcome::Written(w) => Some(w),
            _ => None,
        }
    }
}

/// The time before which stored keys are forgotten, at `now`.
pub fn forgotten_before(now: OffsetDateTime) -> OffsetDateTime {
    now - KEY_LIFETIME
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    #[test]
    fn a_record_replays_its_own_request_only_and_expires() {
        let report = Report::new_pending(UserId::new_v4());
        let record = KeyRecord {
            request: "POST /v4/new/report".to_owned(),
            report: report.clone(),
            used_at: report.created_at,
        };
        assert!(record.is_live(report.created_at + Duration::from_secs(60)));
        assert!(!record.is_live(report.created_at + KEY_LIFETIME));
        assert_eq!(
            record.clone().outcome("POST /v4/new/report"),
            Outcome::Replayed(report)
        );
        assert_eq!(
            record.outcome("PUT /v4/report x queued"),
            Outcome::KeyReused {
                first: "POST /v4/new/report".to_owned()
            }
        );
    }
}
