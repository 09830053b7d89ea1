//! The report status state machine: which status may follow which (pure, no I/O).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle status of a report.
///
/// Transitions: `pending → queued | canceled`, `queued → processing | canceled`,
/// `processing → completed | failed`, `failed → pending`, `canceled → pending`;
/// `completed` is final. Serialized in lowercase (`"pending"`, `"queued"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    /// Created, waiting to be queued.
    Pending,
    /// Waiting for a worker.
    Queued,
    /// A worker is producing the report.
    Processing,
    /// The report is ready (final).
    Completed,
    /// Processing failed; may be retried by going back to `pending`.
    Failed,
    /// Canceled by the user; may be restarted by going back to `pending`.
    Canceled,
}

impl ReportStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [ReportStatus; 6] = [
        ReportStatus::Pending,
        ReportStatus::Queued,
        ReportStatus::Processing,
        ReportStatus::Completed,
        ReportStatus::Failed,
        ReportStatus::Canceled,
    ];

    /// The lowercase wire name (`"pending"`, ...), as stored and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Pending => "pending",
            ReportStatus::Queued => "queued",
            ReportStatus::Processing => "processing",
            ReportStatus::Completed => "completed",
            ReportStatus::Failed => "failed",
            ReportStatus::Canceled => "canceled",
        }
    }

    /// The statuses this one may move to (empty for `completed`).
    pub const fn allowed_next(self) -> &'static [ReportStatus] {
        use ReportStatus::*;
        match self {
            Pending => &[Queued, Canceled],
            Queued => &[Processing, Canceled],
            Processing => &[Completed, Failed],
            Failed => &[Pending],
            Canceled => &[Pending],
            Completed => &[],
        }
    }

    /// Whether `self → to` is a valid transition (self-transitions never are).
    pub fn can_transition_to(self, to: ReportStatus) -> bool {
        self.allowed_next().contains(&to)
    }

    /// Whether no transition leaves this status.
    pub fn is_final(self) -> bool {
        self.allowed_next().is_empty()
    }
}

impl fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that is not one of the six lowercase status names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown report status {0:?} (expected one of pending, queued, processing, completed, failed, canceled)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for ReportStatus {
    type Err = UnknownStatus;

    /// Parses the exact lowercase name; anything else is an [`UnknownStatus`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReportStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::ReportStatus::{self, *};

    /// The valid transitions, written out independently of `allowed_next`.
    /// (The spec says "9"; the listed rules give 8 distinct pairs.)
    const VALID: [(ReportStatus, ReportStatus); 8] = [
        (Pending, Queued),
        (Pending, Canceled),
        (Queued, Processing),
        (Queued, Canceled),
        (Processing, Completed),
        (Processing, Failed),
        (Failed, Pending),
        (Canceled, Pending),
    ];

    #[test]
    fn all_36_pairs() {
        let mut checked = 0;
        let mut valid_seen = 0;
        for from in ReportStatus::ALL {
            for to in ReportStatus::ALL {
                let expected = VALID.contains(&(from, to));
                assert_eq!(
                    from.can_transition_to(to),
                    expected,
                    "{from} -> {to} should be {}",
                    if expected { "valid" } else { "invalid" }
                );
                assert_eq!(from.allowed_next().contains(&to), expected);
                if from == to {
                    assert!(!from.can_transition_to(to), "self-transition {from}");
                }
                checked += 1;
                valid_seen += usize::from(expected);
            }
        }
        assert_eq!(checked, 36);
        assert_eq!(valid_seen, VALID.len());
        assert_eq!(checked - valid_seen, 28, "every other pair is invalid");
    }

    #[test]
    fn completed_is_final() {
        assert!(Completed.is_final());
        assert!(Completed.allowed_next().is_empty());
        for status in ReportStatus::ALL {
            assert_eq!(status.is_final(), status == Completed);
        }
    }

    #[test]
    fn names_round_trip() {
        for status in ReportStatus::ALL {
            assert_eq!(status.as_str().parse::<ReportStatus>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<ReportStatus>(&json).unwrap(), status);
        }
        for bad in ["", "Pending", "PENDING", " pending", "done", "cancelled"] {
            assert!(
                bad.parse::<ReportStatus>().is_err(),
                "{bad:?} must not parse"
            );
            assert!(serde_json::from_str::<ReportStatus>(&format!("\"{bad}\"")).is_err());
        }
    }
}
