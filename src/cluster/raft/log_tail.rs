//! The newest entries of one shard's Raft log, kept in memory beside the durable
//! engine so that the reads openraft makes right after an append (applying the
//! committed entries, replicating them to followers) are answered without a trip to
//! a blocking thread and the disk.
//!
//! Every such trip is a thread handoff, and on a busy machine (2 cores saturated by
//! fan-out) each handoff waits for the scheduler: the hops, not the CPU, made durable
//! fan-out slower than in-memory fan-out (bench/profiling.md). The tail only ever
//! holds entries the database already holds (it is told of a write once the write is
//! committed), it covers one contiguous run of indexes, and a read it cannot answer
//! whole goes to the database, so it changes no result, only where it comes from.
//!
//! Pure: no I/O, no locks; `log_store.rs` owns one per shard behind its mutex.
//! Bounded in entries and in bytes ([`LogTail::new`]); the oldest go first.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Most entries one shard's tail keeps.
pub const TAIL_ENTRIES: usize = 1024;
/// Most bytes (encoded entries) one shard's tail keeps.
pub const TAIL_BYTES: usize = 1024 * 1024;

/// One shard's newest log entries, encoded, over a contiguous run of indexes.
#[derive(Debug)]
pub struct LogTail {
    entries: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for LogTail {
    fn default() -> Self {
        Self::new(TAIL_ENTRIES, TAIL_BYTES)
    }
}

impl LogTail {
    /// An empty tail that keeps at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Entry `index` was written. An index that does not follow the newest one held
    /// starts a new run (what was held is dropped: the run must stay contiguous).
    pub fn put(&mut self, index: u64, bytes: Vec<u8>) {
        if let Some((&last, _)) = self.entries.last_key_value() {
            if last.checked_add(1) != Some(index) {
                self.clear();
            }
        }
        self.bytes += bytes.len();
        self.entries.insert(index, bytes);
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            match self.entries.pop_first() {
                Some((_, gone)) => self.bytes -= gone.len(),
                None => break,
            }
        }
    }

    /// Truncate: entries from `index` on are gone.
    pub fn remove_from(&mut self, index: u64) {
        let gone = self.entries.split_off(&index);
        self.bytes -= gone.values().map(Vec::len).sum::<usize>();
    }

    /// Purge: entries up to and including `index` are gone.
    pub fn remove_through(&mut self, index: u64) {
        let Some(next) = index.checked_add(1) else {
            self.clear();
            return;
        };
        let kept = self.entries.split_off(&next);
        self.entries = kept;
        self.bytes = self.entries.values().map(Vec::len).sum();
    }

    /// The entries in `start..end` if the tail holds every one of them, else `None`
    /// (the caller reads the database). A range reaching past the newest entry held is
    /// `None`: the database may already hold more than the tail was told of.
    pub fn get(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<(u64, Vec<u8>)>> {
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        let from = match start {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        // `to` is one past the last index asked for.
        let to = match end {
            Bound::Excluded(e) => e,
            Bound::Included(e) => e.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        if to <= from {
            return Some(Vec::new());
        }
        if from < first || to > last.checked_add(1)? {
            return None;
        }
        Some(
            self.entries
                .range(from..to)
                .map(|(i, bytes)| (*i, bytes.clone()))
                .collect(),
        )
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn indexes(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Bound::{Excluded, Included, Unbounded};

    fn filled(range: std::ops::RangeInclusive<u64>) -> LogTail {
        let mut tail = LogTail::new(100, 10_000);
        for i in range {
            tail.put(i, vec![i as u8; 10]);
        }
        tail
    }

    #[test]
    fn answers_a_range_it_holds_whole() {
        let tail = filled(5..=9);
        let got = tail.get(Included(6), Excluded(9)).expect("held");
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [6, 7, 8]);
        assert_eq!(got[0].1, vec![6u8; 10]);
        let got = tail.get(Excluded(5), Included(9)).expect("held");
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn sends_to_the_database_what_it_does_not_hold_whole() {
        let tail = filled(5..=9);
        assert!(
            tail.get(Included(4), Excluded(8)).is_none(),
            "starts before"
        );
        assert!(tail.get(Included(6), Excluded(11)).is_none(), "ends after");
        assert!(tail.get(Unbounded, Excluded(8)).is_none());
        assert!(tail.get(Included(6), Unbounded).is_none());
        assert!(LogTail::default().get(Included(1), Excluded(2)).is_none());
    }

    #[test]
    fn an_empty_range_is_empty() {
        let tail = filled(5..=9);
        assert_eq!(tail.get(Included(7), Excluded(7)), Some(Vec::new()));
    }

    #[test]
    fn a_gap_starts_a_new_run() {
        let mut tail = filled(5..=9);
        tail.put(20, vec![1]);
        assert_eq!(tail.indexes(), [20]);
        assert!(tail.get(Included(8), Excluded(10)).is_none());
    }

    #[test]
    fn truncate_and_purge_forget_what_the_log_forgot() {
        let mut tail = filled(1..=10);
        tail.remove_from(8);
        assert_eq!(tail.indexes(), (1..=7).collect::<Vec<_>>());
        assert!(tail.get(Included(6), Excluded(9)).is_none());
        // After a truncate, the next append is at the truncation point.
        tail.put(8, vec![42]);
        assert_eq!(tail.get(Included(8), Excluded(9)).expect("held")[0].1, [42]);
        tail.remove_through(3);
        assert_eq!(tail.indexes(), (4..=8).collect::<Vec<_>>());
        assert_eq!(tail.bytes, 4 * 10 + 1);
        tail.remove_through(u64::MAX);
        assert!(tail.indexes().is_empty());
        assert_eq!(tail.bytes, 0);
    }

    #[test]
    fn bounded_in_entries_and_in_bytes() {
        let mut tail = LogTail::new(3, 1_000);
        for i in 1..=10 {
            tail.put(i, vec![0; 10]);
        }
        assert_eq!(tail.indexes(), [8, 9, 10]);
        let mut tail = LogTail::new(100, 25);
        for i in 1..=10 {
            tail.put(i, vec![0; 10]);
        }
        assert_eq!(tail.indexes(), [9, 10]);
        assert!(tail.bytes <= 25);
        // An entry larger than the whole budget is not kept.
        tail.put(11, vec![0; 26]);
        assert!(tail.indexes().is_empty());
        assert_eq!(tail.bytes, 0);
    }
}
