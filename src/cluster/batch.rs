//! Envelopes to one peer, gathered into frames.
//!
//! A frame costs about the same to carry whatever it holds: ractor_cluster's actors on
//! both sides (session, reader, remote actor, node session), a TCP write and the
//! Endpoint's turn (bench/profiling.md, "Two nodes"). So envelopes to one peer wait
//! here while a flush of them is on its way: the first one queued schedules the flush
//! (a task, which runs as soon as the sender yields: nothing is held back on purpose),
//! and what is queued meanwhile, by any shard or actor, leaves in the same frame. At
//! light load every envelope still goes alone; under load, frames carry several.
//!
//! [`Pending`] is the pure part (queue, frame grouping); `Cluster::send_encoded`
//! (cluster/mod.rs) schedules the flush and casts the frames. Order per peer is kept:
//! one flush is scheduled at a time, and it casts while it holds the queue.

/// The most envelope bytes one frame gathers (an envelope larger than this goes in a
/// frame of its own); far under the frame limit (`wire::MAX_ENVELOPE_BYTES`).
pub const FRAME_BYTES: usize = 1024 * 1024;

/// The most envelopes one frame gathers.
pub const FRAME_ENVELOPES: usize = 256;

/// The envelopes waiting for one peer, each with where it goes (`T`: the peer's
/// Endpoint and the key it issued us, as they were when it was queued).
#[derive(Debug)]
pub struct Pending<T> {
    queued: Vec<(T, Vec<u8>)>,
    flushing: bool,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            queued: Vec::new(),
            flushing: false,
        }
    }
}

impl<T: PartialEq> Pending<T> {
    /// Queues one envelope for `target`; true when the caller must schedule a flush
    /// (none is on its way).
    pub fn push(&mut self, target: T, envelope: Vec<u8>) -> bool {
        self.queued.push((target, envelope));
        !std::mem::replace(&mut self.flushing, true)
    }

    /// Everything queued, in order, as frames: runs of envelopes for the same target
    /// of at most [`FRAME_ENVELOPES`] and [`FRAME_BYTES`] each (a larger envelope
    /// alone). Ends the flush: the next push schedules another.
    pub fn take(&mut self) -> Vec<(T, Vec<Vec<u8>>)> {
        self.flushing = false;
        let mut frames: Vec<(T, Vec<Vec<u8>>, usize)> = Vec::new();
        for (target, envelope) in self.queued.drain(..) {
            match frames.last_mut() {
                Some((to, group, bytes))
                    if *to == target
                        && group.len() < FRAME_ENVELOPES
                        && *bytes + envelope.len() <= FRAME_BYTES =>
                {
                    *bytes += envelope.len();
                    group.push(envelope);
                }
                _ => {
                    let bytes = envelope.len();
                    frames.push((target, vec![envelope], bytes));
                }
            }
        }
        frames
            .into_iter()
            .map(|(target, group, _)| (target, group))
            .collect()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flush_at_a_time_and_everything_in_order() {
        let mut pending = Pending::default();
        assert!(
            pending.push("b", vec![1]),
            "the first envelope schedules a flush"
        );
        assert!(
            !pending.push("b", vec![2]),
            "the flush on its way takes the second"
        );
        assert!(!pending.push("b", vec![3]));
        assert_eq!(pending.take(), vec![("b", vec![vec![1], vec![2], vec![3]])]);
        assert!(pending.is_empty());
        assert!(
            pending.push("b", vec![4]),
            "after a flush, the next schedules one"
        );
        assert_eq!(pending.take(), vec![("b", vec![vec![4]])]);
        assert_eq!(pending.take(), vec![], "nothing twice");
    }

    #[test]
    fn a_new_target_starts_a_new_frame() {
        // The peer restarted (a new Endpoint, a new key) while envelopes waited.
        let mut pending = Pending::default();
        pending.push("old", vec![1]);
        pending.push("old", vec![2]);
        pending.push("new", vec![3]);
        pending.push("new", vec![4]);
        assert_eq!(
            pending.take(),
            vec![
                ("old", vec![vec![1], vec![2]]),
                ("new", vec![vec![3], vec![4]])
            ]
        );
    }

    #[test]
    fn frames_stay_under_their_bounds() {
        let mut pending = Pending::default();
        let half = vec![0u8; FRAME_BYTES / 2];
        for _ in 0..3 {
            pending.push("b", half.clone());
        }
        pending.push("b", vec![0u8; FRAME_BYTES + 1]);
        pending.push("b", vec![7]);
        let frames = pending.take();
        let sizes: Vec<Vec<usize>> = frames
            .iter()
            .map(|(_, group)| group.iter().map(Vec::len).collect())
            .collect();
        let h = FRAME_BYTES / 2;
        assert_eq!(
            sizes,
            vec![vec![h, h], vec![h], vec![FRAME_BYTES + 1], vec![1]]
        );
        for _ in 0..FRAME_ENVELOPES + 1 {
            pending.push("b", vec![1]);
        }
        let counts: Vec<usize> = pending.take().iter().map(|(_, g)| g.len()).collect();
        assert_eq!(counts, vec![FRAME_ENVELOPES, 1]);
    }
}
