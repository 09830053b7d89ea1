//! One (channel, user)'s replay history: its last frames in publish order and the floor below
//! which nothing is known any more. The Hub owns the byte budget all histories share; this
//! file says what each change costs.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::domain::EventId;

/// Bytes charged per history entry on top of its frame: the entry itself and the frame's
/// allocation.
const ENTRY_OVERHEAD: usize = 96;

/// Bytes charged to a (channel, user) entry while it holds any history, on top of its name:
/// the map slot, the entry and its queue buffers. This is what bounds the entries of users
/// without a connection: they exist only while they hold history.
pub const TOPIC_OVERHEAD: usize = 320;

/// The recent frames of one (channel, user).
pub(super) struct History {
    entries: VecDeque<Entry>,
    /// Every message of this topic with a sequence number above `floor` is in `entries`.
    floor: u64,
    /// Bytes charged for the frames held, without `base`.
    bytes: usize,
    /// Charged once while any frame is held ([`TOPIC_OVERHEAD`] plus the user's name).
    base: usize,
}

struct Entry {
    /// Local sequence number (also for messages with a Kafka id: it orders the history).
    seq: u64,
    id: EventId,
    frame: Bytes,
}

fn entry_cost(frame: &Bytes) -> usize {
    frame.len() + ENTRY_OVERHEAD
}

impl History {
    /// An empty history that knows every message after sequence number `floor`, of a user
    /// whose name is `name_len` bytes long.
    pub(super) fn new(floor: u64, name_len: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            floor,
            bytes: 0,
            base: TOPIC_OVERHEAD + name_len,
        }
    }

    /// Number of frames held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes charged to this history now.
    pub(super) fn cost(&self) -> usize {
        if self.entries.is_empty() {
            0
        } else {
            self.bytes + self.base
        }
    }

    /// Bytes that keeping `frame` would add.
    pub(super) fn cost_of(&self, frame: &Bytes) -> usize {
        entry_cost(frame)
            + if self.entries.is_empty() {
                self.base
            } else {
                0
            }
    }

    /// Whether a message with this id is held (a redelivery from the broker).
    pub(super) fn contains(&self, id: &EventId) -> bool {
        self.entries.iter().any(|e| &e.id == id)
    }

    /// Appends a frame whose [`History::cost_of`] the caller has charged.
    pub(super) fn push(&mut self, seq: u64, id: EventId, frame: Bytes) {
        self.bytes += entry_cost(&frame);
        self.entries.push_back(Entry { seq, id, frame });
    }

    /// Records that message `seq` is not kept: resuming from before it is no longer possible.
    pub(super) fn skip(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
    }

    /// Drops the oldest frame, raising the floor to it; returns the bytes freed.
    pub(super) fn pop_oldest(&mut self) -> Option<usize> {
        let old = self.entries.pop_front()?;
        self.floor = self.floor.max(old.seq);
        let mut freed = entry_cost(&old.frame);
        self.bytes -= freed;
        if self.entries.is_empty() {
            freed += self.base;
            // Give the buffer back too: an idle user's empty history holds no memory.
            self.entries = VecDeque::new();
        }
        Some(freed)
    }

    /// The frames published after `last` (shared handles, not copies), or `None` when they are
    /// not all known any more.
    ///
    /// An id still in the history is a position: everything after it is replayed. Another id
    /// this process gave out (`{boot}-{seq}`) is a position too: everything after it is known
    /// while it is not older than the floor. Any other id (a Kafka position of a message no
    /// longer held, or not one of ours) cannot be resumed from.
    pub(super) fn missed_since(&self, last: &str, boot: u64, current: u64) -> Option<Vec<Bytes>> {
        if let Some(at) = self.entries.iter().position(|e| e.id.as_str() == last) {
            return Some(
                self.entries
                    .iter()
                    .skip(at + 1)
                    .map(|e| e.frame.clone())
                    .collect(),
            );
        }
        let (b, seq) = EventId::parse_pair(last)?;
        if b != boot || seq < self.floor || seq > current {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|e| e.seq > seq)
                .map(|e| e.frame.clone())
                .collect(),
        )
    }
}
