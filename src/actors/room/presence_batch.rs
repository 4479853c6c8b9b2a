//! The joins and leaves a large room gathers for one `presence_diff` (see
//! `rooms.presence_batch_members` and `rooms.presence_batch_ms`).

use super::state::MemberChanges;
use crate::protocol::Member;
use std::collections::BTreeMap;
use std::time::Duration;

/// Joins and leaves a large room gathers for one `presence_diff` (see
/// `rooms.presence_batch_members` and `rooms.presence_batch_ms`). Holds the net
/// change per user since the batch began: one entry per user who joined or left
/// meanwhile, so it is bounded by the members plus those who left.
pub struct PresenceBatch {
    /// Rooms with more members than this batch.
    over: usize,
    /// How long a batch gathers; zero turns batching off.
    pub every: Duration,
    /// User → whether it was a member when the batch began, and as what it is now.
    changes: BTreeMap<String, Change>,
    /// Whether a `PresenceTick` is on its way.
    pub armed: bool,
}

struct Change {
    was_member: bool,
    /// Whether it is a member now; `member` is how it joined or left last.
    present: bool,
    member: Member,
}

impl PresenceBatch {
    pub fn new(over: usize, every: Duration) -> Self {
        Self {
            over,
            every,
            changes: BTreeMap::new(),
            armed: false,
        }
    }

    /// Users with a change waiting.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether changes to a room of `members` members go into a batch.
    pub fn applies(&self, members: usize) -> bool {
        !self.every.is_zero() && (self.armed || members > self.over)
    }

    /// Adds one change to the batch: a later change of a user replaces an earlier one.
    pub fn fold(&mut self, changes: MemberChanges) {
        let MemberChanges {
            joins,
            leaves,
            updates,
        } = changes;
        // (was a member before this change, is one after it, as what)
        let all = joins
            .into_iter()
            .map(|m| (false, true, m))
            .chain(updates.into_iter().map(|m| (true, true, m)))
            .chain(leaves.into_iter().map(|m| (true, false, m)));
        for (was_member, present, member) in all {
            match self.changes.get_mut(&member.id) {
                Some(change) => {
                    change.present = present;
                    change.member = member;
                }
                None => {
                    self.changes.insert(
                        member.id.clone(),
                        Change {
                            was_member,
                            present,
                            member,
                        },
                    );
                }
            }
        }
    }

    /// The net joins, leaves and count changes since the batch began; the batch starts
    /// afresh.
    pub fn take(&mut self) -> MemberChanges {
        self.armed = false;
        let mut out = MemberChanges::default();
        for change in std::mem::take(&mut self.changes).into_values() {
            match (change.was_member, change.present) {
                (false, true) => out.joins.push(change.member),
                (true, false) => out.leaves.push(change.member),
                // Present before and after (another count, or left and came back):
                // its count now, absolute, so a repeat is harmless.
                (true, true) => out.updates.push(change.member),
                // Joined and left again within one batch.
                (false, false) => {}
            }
        }
        out
    }
}
