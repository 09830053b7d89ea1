//! One (channel, user)'s replay history: its last frames in publish order and the floor below
//! which nothing is known any more. The Hub owns the byte budget all histories share; this
//! file only reports what each change costs.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::domain::EventId;

/// Memory accounted per history entry on top of its frame bytes.
const ENTRY_OVERHEAD: usize = 64;

/// The recent frames of one (channel, user).
pub(super) struct History {
    entries: VecDeque<Entry>,
    /// Every message of this topic with a sequence number above `floor` is in `entries`.
    floor: u64,
}

struct Entry {
    /// Local sequence number (also for messages with a Kafka id: it orders the history).
    seq: u64,
    id: EventId,
    frame: Bytes,
}

impl Entry {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

impl History {
    /// An empty history that knows every message after sequence number `floor`.
    pub(super) fn new(floor: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            floor,
        }
    }

    /// Number of frames held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes accounted to this history (frames plus a fixed overhead each).
    pub(super) fn cost(&self) -> usize {
        self.entries.iter().map(Entry::cost).sum()
    }

    /// Whether a message with this id is held (a redelivery from the broker).
    pub(super) fn contains(&self, id: &EventId) -> bool {
        self.entries.iter().any(|e| &e.id == id)
    }

    /// Appends a frame; returns the bytes it costs.
    pub(super) fn push(&mut self, seq: u64, id: EventId, frame: Bytes) -> usize {
        let entry = Entry { seq, id, frame };
        let cost = entry.cost();
        self.entries.push_back(entry);
        cost
    }

    /// Drops the oldest frame, raising the floor to it; returns the bytes freed.
    pub(super) fn pop_oldest(&mut self) -> Option<usize> {
        let old = self.entries.pop_front()?;
        self.floor = old.seq;
        Some(old.cost())
    }

    /// The frames published after `last`, or `None` when they are not all known any more.
    ///
    /// An id this process gave out (`{boot}-{seq}`) is a position: everything of this user
    /// after it is known while it is not older than the history's floor. Any other id (a Kafka
    /// position, given by every instance alike) must still be in the history.
    pub(super) fn missed_since(&self, last: &str, boot: u64, current: u64) -> Option<Vec<Bytes>> {
        let after = |seq: u64| {
            self.entries
                .iter()
                .filter(|e| e.seq > seq)
                .map(|e| e.frame.clone())
                .collect()
        };
        if let Some((b, seq)) = EventId::parse_pair(last)
            && b == boot
        {
            return (seq >= self.floor && seq <= current).then(|| after(seq));
        }
        let entry = self.entries.iter().find(|e| e.id.as_str() == last)?;
        Some(after(entry.seq))
    }
}
