//! The validated domain types every layer uses: [`Channel`], [`Username`], [`UserId`],
//! [`ReportId`], [`EventName`] and [`EventId`]. This module sits below every other one and
//! imports none of them, so no layer has to reach sideways or up for a type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A family of routes with its own users: a v2 POST never reaches a v3 stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `/v1`: the timer demo (counted in metrics only, not registered in the Hub).
    V1,
    /// `/v2`: per-user push over HTTP.
    V2,
    /// `/v3`: like v2, plus Kafka.
    V3,
    /// `/v4`: report status events.
    V4,
}

impl Channel {
    /// Number of channels.
    pub const COUNT: usize = 4;
    /// Every channel, in order.
    pub const ALL: [Channel; Self::COUNT] = [Channel::V1, Channel::V2, Channel::V3, Channel::V4];

    /// Position in per-channel arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The channel's name as used in routes and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::V1 => "v1",
            Channel::V2 => "v2",
            Channel::V3 => "v3",
            Channel::V4 => "v4",
        }
    }
}

/// A user name: 1–128 characters of ASCII letters, digits, `-`, `_`, `.` and `@`.
/// The same rule holds for HTTP and Kafka, so a name can never carry a line break or `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Validates a name; the error message is fit for a client.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(format!(
                "username must be 1-{} characters long",
                Self::MAX_LEN
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        {
            return Err(
                "username may contain only letters, digits, '-', '_', '.' and '@'".to_owned(),
            );
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! uuid_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_v4() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            /// Lowercase hyphenated form, as stored.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            /// Parses any UUID form the `uuid` crate accepts; fails on anything else.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_newtype!(
    /// The owner of reports (serialized as a bare UUID string).
    UserId
);
uuid_newtype!(
    /// A report's id (serialized as a bare UUID string).
    ReportId
);

/// An SSE event type: 1–64 characters of ASCII letters, digits, `_`, `.` and `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventName(String);

impl EventName {
    /// Maximum length of an event name.
    pub const MAX_LEN: usize = 64;

    /// Validates an event name; fails with a message fit for a client when it is not allowed.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(format!(
                "event must be 1-{} characters long, got {}",
                Self::MAX_LEN,
                name.len()
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err("event may contain only letters, digits, '_', '.' and '-'".to_owned());
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event id as sent in `id:`. Built only by the server, from digits, lowercase hex and `-`,
/// so it never holds a line break or NUL (a WHATWG client ignores an `id` containing NUL).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// An id made of two numbers, `"{a}-{b}"`: (boot, sequence) locally, (partition, offset) on Kafka.
    pub fn pair(a: u64, b: u64) -> Self {
        Self(format!("{a}-{b}"))
    }

    /// The id of an event recorded in the report store's outbox: its UUID, lowercase and
    /// hyphenated, the same on every instance and across restarts.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id.hyphenated().to_string())
    }

    /// An outbox id received from the broker (the `event-id` header): only a UUID is one,
    /// normalised to [`EventId::from_uuid`]'s form; anything else is `None`.
    pub fn parse_uuid(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(Self::from_uuid)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Splits an id received from a client (`Last-Event-ID`) into its two numbers, if it is one
    /// of ours. Anything else, however malformed, is simply `None`.
    pub fn parse_pair(text: &str) -> Option<(u64, u64)> {
        let (a, b) = text.split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in [
            "demo",
            "a",
            "john.doe@example.com",
            "A-Z_0.9",
            &"x".repeat(128),
        ] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\nb",
            "a:b",
            "a/b",
            "ü",
            "a%0Ab",
            &"x".repeat(129),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_names_are_allow_listed() {
        assert!(EventName::parse("notification").is_ok());
        assert!(EventName::parse("a.b-c_D9").is_ok());
        assert!(EventName::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "a\nb", "a:b", "ümlaut", &"x".repeat(65)] {
            assert!(EventName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn outbox_ids_are_canonical_uuids() {
        let id = EventId::parse_uuid("0B8E7D6C-5A4F-4E3D-8C2B-1A0F9E8D7C6B").unwrap();
        assert_eq!(id.as_str(), "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b");
        for bad in [
            "",
            "1-2",
            "x\nid: 1",
            "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b\n",
        ] {
            assert_eq!(EventId::parse_uuid(bad), None, "{bad:?}");
        }
        assert_eq!(EventId::parse_pair(id.as_str()), None);
    }

    #[test]
    fn id_pairs_parse_strictly() {
        assert_eq!(EventId::parse_pair("1-2"), Some((1, 2)));
        assert_eq!(EventId::pair(3, 4).as_str(), "3-4");
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1 -2",
            "99999999999999999999999-1",
        ] {
            assert_eq!(EventId::parse_pair(bad), None, "{bad:?}");
        }
    }
}
