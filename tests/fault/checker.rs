//! The fault suite's checker: pure, over everything every client saw and every reply
//! it got, plus each surviving node's final history of each room and the presence
//! samples taken after each fault. It knows nothing of processes or sockets.
//!
//! Rules (the cluster's promise, as issue #9 states it):
//! - **(a) order**: each client saw each room's messages in order and without a gap
//!   from its join point: the join reply's history is contiguous and ends at its `seq`
//!   N, a resume with `since` S starts at S+1 (unless the reply says `gap`), and live
//!   messages then go N+1, N+2, ...; a `gap` notice lets the next one jump; nothing
//!   twice. A client still joined when the run ends must have reached the room's last
//!   seq (else it missed the tail and was never told).
//! - **(b) one content per seq**: no (room, seq) has two ids anywhere.
//! - **(c) acked is kept**: every acknowledged message is in every surviving node's
//!   history of its room (unless retention evicted it).
//! - **(d) presence**: every presence sample matched the connections that exist within
//!   its bound.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// One message as a client or a node holds it: (seq, id).
pub type Entry = (u64, String);

/// Something one client saw or did, in the order it happened to that client.
#[derive(Clone, Debug)]
pub enum Event {
    /// A join request went out: messages of the room may arrive before its reply (the
    /// protocol does not order the two), and count as live once the reply came.
    JoinSent { room: String },
    /// A join reply (`since` as sent).
    Joined {
        room: String,
        since: Option<u64>,
        seq: u64,
        history: Vec<Entry>,
        gap: bool,
    },
    /// A live `message` frame.
    Message { room: String, seq: u64, id: String },
    /// A publish acknowledged with (id, seq).
    Ack { room: String, seq: u64, id: String },
    /// A `gap` notice: messages of `room` were lost to this client.
    Gap { room: String },
    /// A leave reply.
    Left { room: String },
    /// The connection ended; a reconnect joins again (with `since`).
    Disconnected,
    /// The run ended with this client connected and joined to `room`.
    End { room: String },
}

/// One client's event, tagged with the client.
#[derive(Clone, Debug)]
pub struct Seen {
    pub client: String,
    pub event: Event,
}

/// A presence sample: what a node said a room's members were, against the members
/// the connections that exist make, polled until they matched or the bound passed.
#[derive(Clone, Debug)]
pub struct PresenceSample {
    pub node: String,
    pub room: String,
    pub expected: BTreeMap<String, u64>,
    pub last_seen: BTreeMap<String, u64>,
    /// The last presence request that failed, when the last one did.
    pub last_error: Option<String>,
    /// How long after the fault it matched; None: not within the bound.
    pub matched_after: Option<Duration>,
    pub bound: Duration,
    pub after: String,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Record {
    pub seen: Vec<Seen>,
    /// node → room → its history, oldest first.
    pub histories: BTreeMap<String, BTreeMap<String, Vec<Entry>>>,
    /// `rooms.history`: a node holds at most this many messages per room.
    pub retention: usize,
    pub presence: Vec<PresenceSample>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: char,
    pub client: String,
    pub room: String,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule ({}) client {} room {}: {}",
            self.rule, self.client, self.room, self.detail
        )
    }
}

/// Where a client stands in one room.
#[derive(Default)]
struct Cursor {
    joined: bool,
    /// The seq the next live message must have.
    next: u64,
    /// The last seq delivered (history or live).
    last: Option<u64>,
    /// A `gap` notice came: the next message may jump.
    gap_told: bool,
    /// A join is on its way: messages that arrive before its reply, in order.
    joining: Option<Vec<u64>>,
}

/// A live message `seq` reaching a joined client.
fn deliver(cursor: &mut Cursor, seq: u64, found: &mut Vec<Violation>, client: &str, room: &str) {
    if seq < cursor.next {
        violation(
            found,
            'a',
            client,
            room,
            format!(
                "seq {seq} delivered again or out of order (expected {})",
                cursor.next
            ),
        );
        return;
    }
    if seq > cursor.next && !cursor.gap_told {
        violation(
            found,
            'a',
            client,
            room,
            format!(
                "missed seq {} to {} (got {seq} after {:?}) and was not told gap",
                cursor.next,
                seq - 1,
                cursor.last
            ),
        );
    }
    cursor.next = seq + 1;
    cursor.last = Some(seq);
    cursor.gap_told = false;
}

/// Every violation of the rules, in the order found: (a), (b), (c), (d).
pub fn check(record: &Record) -> Vec<Violation> {
    let mut found = Vec::new();
    check_order(record, &mut found);
    check_unique(record, &mut found);
    check_acked_kept(record, &mut found);
    check_presence(record, &mut found);
    found
}

fn violation(found: &mut Vec<Violation>, rule: char, client: &str, room: &str, detail: String) {
    found.push(Violation {
        rule,
        client: client.to_owned(),
        room: room.to_owned(),
        detail,
    });
}

/// The last seq any surviving node holds of `room`.
fn final_seq(record: &Record, room: &str) -> Option<u64> {
    record
        .histories
        .values()
        .filter_map(|rooms| rooms.get(room)?.last().map(|e| e.0))
        .max()
}

fn check_order(record: &Record, found: &mut Vec<Violation>) {
    let mut cursors: BTreeMap<(String, String), Cursor> = BTreeMap::new();
    for Seen { client, event } in &record.seen {
        let at = |room: &str| (client.clone(), room.to_owned());
        match event {
            Event::Joined {
                room,
                since,
                seq,
                history,
                gap,
            } => {
                let cursor = cursors.entry(at(room)).or_default();
                if let Some(s) = since {
                    if cursor.last.is_some_and(|l| l != *s) {
                        violation(
                            found,
                            'a',
                            client,
                            room,
                            format!(
                                "resumed with since {s} but had seen up to {:?}",
                                cursor.last
                            ),
                        );
                    }
                }
                if let Some(w) = history.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
                    violation(
                        found,
                        'a',
                        client,
                        room,
                        format!("join reply history jumps from seq {} to {}", w[0].0, w[1].0),
                    );
                }
                if let Some(last) = history.last() {
                    if last.0 != *seq {
                        violation(
                            found,
                            'a',
                            client,
                            room,
                            format!(
                                "join reply history ends at seq {} but the reply says seq {seq}",
                                last.0
                            ),
                        );
                    }
                }
                if let (Some(s), false) = (since, gap) {
                    let first = history.first().map(|e| e.0);
                    let ok = if s >= seq {
                        history.is_empty() && s == seq
                    } else {
                        first == Some(s + 1)
                    };
                    if !ok {
                        violation(
                            found,
                            'a',
                            client,
                            room,
                            format!(
                            "resume since {s} got history from {first:?} to seq {seq} without gap"),
                        );
                    }
                }
                cursor.joined = true;
                cursor.next = seq + 1;
                cursor.last = Some(*seq);
                cursor.gap_told = false;
                for early in cursor.joining.take().unwrap_or_default() {
                    deliver(cursor, early, found, client, room);
                }
            }
            Event::Message { room, seq, .. } => {
                let cursor = cursors.entry(at(room)).or_default();
                if let Some(early) = cursor.joining.as_mut() {
                    early.push(*seq);
                } else if cursor.joined {
                    deliver(cursor, *seq, found, client, room);
                } else {
                    violation(
                        found,
                        'a',
                        client,
                        room,
                        format!("message seq {seq} while not joined"),
                    );
                }
            }
            Event::JoinSent { room } => {
                cursors.entry(at(room)).or_default().joining = Some(Vec::new());
            }
            Event::Gap { room } => cursors.entry(at(room)).or_default().gap_told = true,
            Event::Left { room } => cursors.entry(at(room)).or_default().joined = false,
            Event::Disconnected => {
                for ((c, _), cursor) in cursors.iter_mut() {
                    if c == client {
                        cursor.joined = false;
                        cursor.joining = None;
                    }
                }
            }
            Event::End { room } => {
                let last = cursors.get(&at(room)).and_then(|c| c.last);
                if let Some(end) = final_seq(record, room) {
                    if last.is_none_or(|l| l < end) {
                        violation(found, 'a', client, room, format!(
                            "still joined at the end having seen up to {last:?}, but the room reached seq {end}: \
                             the rest never came and no gap was told"));
                    }
                }
            }
            Event::Ack { .. } => {}
        }
    }
}

fn check_unique(record: &Record, found: &mut Vec<Violation>) {
    // (room, seq) → (id, who had it first).
    let mut ids: BTreeMap<(String, u64), (String, String)> = BTreeMap::new();
    let mut note =
        |room: &str, seq: u64, id: &str, who: String, found: &mut Vec<Violation>| match ids
            .get(&(room.to_owned(), seq))
        {
            Some((first, first_who)) if first != id => violation(
                found,
                'b',
                &who,
                room,
                format!("seq {seq} has two ids: {first} ({first_who}) and {id} ({who})"),
            ),
            Some(_) => {}
            None => {
                ids.insert((room.to_owned(), seq), (id.to_owned(), who));
            }
        };
    for Seen { client, event } in &record.seen {
        match event {
            Event::Joined { room, history, .. } => {
                for (seq, id) in history {
                    note(room, *seq, id, format!("client {client} join reply"), found);
                }
            }
            Event::Message { room, seq, id } => {
                note(room, *seq, id, format!("client {client} live"), found)
            }
            Event::Ack { room, seq, id } => {
                note(room, *seq, id, format!("client {client} ack"), found)
            }
            _ => {}
        }
    }
    for (node, rooms) in &record.histories {
        for (room, history) in rooms {
            for (seq, id) in history {
                note(room, *seq, id, format!("node {node} history"), found);
            }
        }
    }
}

fn check_acked_kept(record: &Record, found: &mut Vec<Violation>) {
    for Seen { client, event } in &record.seen {
        let Event::Ack { room, seq, id } = event else {
            continue;
        };
        for (node, rooms) in &record.histories {
            let history = rooms.get(room).map(Vec::as_slice).unwrap_or_default();
            // A full history may have evicted older messages.
            let evicted =
                history.len() >= record.retention && history.first().is_some_and(|e| e.0 > *seq);
            if !evicted && !history.iter().any(|(s, i)| s == seq && i == id) {
                violation(
                    found,
                    'c',
                    client,
                    room,
                    format!(
                        "acknowledged seq {seq} (id {id}) is missing from node {node}'s history"
                    ),
                );
            }
        }
    }
}

fn check_presence(record: &Record, found: &mut Vec<Violation>) {
    for s in &record.presence {
        if s.matched_after.is_none_or(|d| d > s.bound) {
            violation(found, 'd', &format!("(presence on node {})", s.node), &s.room, format!(
                "after {}: not matched within {:?}: expected {:?}, node said {:?} (last error: {:?})",
                s.after, s.bound, s.expected, s.last_seen, s.last_error));
        }
    }
}

/// Panics with the first violation (and how many there were) and the seed to replay.
pub fn assert_holds(record: &Record, seed: u64, label: &str) {
    let found = check(record);
    if let Some(first) = found.first() {
        let mut by_rule: BTreeMap<char, usize> = BTreeMap::new();
        for v in &found {
            *by_rule.entry(v.rule).or_default() += 1;
        }
        let more: Vec<String> = found
            .iter()
            .skip(1)
            .take(9)
            .map(|v| format!("  {v}"))
            .collect();
        panic!(
            "[{label}] the checker found {} violations {by_rule:?}; the first: {first}\n\
             next ones:\n{}\nreplay with FAULT_SEED={seed}",
            found.len(),
            more.join("\n")
        );
    }
    eprintln!("[{label}] checker: every rule holds (seed {seed})");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> String {
        format!("m{seq}")
    }

    fn hist(from: u64, to: u64) -> Vec<Entry> {
        (from..=to).map(|s| (s, id(s))).collect()
    }

    fn seen(client: &str, event: Event) -> Seen {
        Seen {
            client: client.into(),
            event,
        }
    }

    fn joined(room: &str, since: Option<u64>, seq: u64, history: Vec<Entry>, gap: bool) -> Event {
        Event::Joined {
            room: room.into(),
            since,
            seq,
            history,
            gap,
        }
    }

    fn msg(room: &str, seq: u64) -> Event {
        Event::Message {
            room: room.into(),
            seq,
            id: id(seq),
        }
    }

    fn ack(room: &str, seq: u64) -> Event {
        Event::Ack {
            room: room.into(),
            seq,
            id: id(seq),
        }
    }

    /// A good run: x joins at 2, sees 3..5 live, drops, resumes since 5 with 6..7,
    /// then 8 live; p published 3..8; both nodes hold 1..8; presence matched.
    fn good() -> Record {
        let mut histories = BTreeMap::new();
        for node in ["a", "b"] {
            histories.insert(
                node.to_owned(),
                BTreeMap::from([("r".to_owned(), hist(1, 8))]),
            );
        }
        Record {
            seen: vec![
                seen("x", joined("r", None, 2, hist(1, 2), false)),
                seen("p", joined("r", None, 2, hist(1, 2), false)),
                seen("x", msg("r", 3)),
                seen("p", ack("r", 3)),
                seen("x", msg("r", 4)),
                seen("x", msg("r", 5)),
                seen("x", Event::Disconnected),
                seen("x", joined("r", Some(5), 7, hist(6, 7), false)),
                seen("x", msg("r", 8)),
                seen("p", ack("r", 8)),
                seen("x", Event::End { room: "r".into() }),
            ],
            histories,
            retention: 100,
            presence: vec![PresenceSample {
                node: "a".into(),
                room: "r".into(),
                expected: BTreeMap::from([("x".into(), 1)]),
                last_seen: BTreeMap::from([("x".into(), 1)]),
                last_error: None,
                matched_after: Some(Duration::from_millis(300)),
                bound: Duration::from_millis(1600),
                after: "kill -9 of c".into(),
            }],
        }
    }

    fn rules(record: &Record) -> Vec<char> {
        check(record).iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_good_history_holds() {
        assert_eq!(check(&good()), vec![]);
    }

    #[test]
    fn a_missed_live_message_is_a_gap() {
        let mut r = good();
        r.seen.remove(4); // x's seq 4
        let found = check(&r);
        assert_eq!(rules(&r), vec!['a']);
        assert!(
            found[0].detail.contains("missed seq 4 to 4"),
            "{}",
            found[0]
        );
        assert_eq!(found[0].client, "x");
    }

    #[test]
    fn a_gap_notice_excuses_the_jump() {
        let mut r = good();
        r.seen[4] = seen("x", Event::Gap { room: "r".into() });
        assert_eq!(check(&r), vec![]);
    }

    #[test]
    fn a_duplicate_or_reorder_is_caught() {
        let mut r = good();
        r.seen.insert(5, seen("x", msg("r", 4)));
        assert_eq!(rules(&r), vec!['a']);
        let mut r = good();
        r.seen.swap(4, 5); // 5 before 4
        assert!(rules(&r).iter().all(|c| *c == 'a') && !rules(&r).is_empty());
    }

    #[test]
    fn a_join_reply_and_live_stream_must_meet() {
        // The issue's join-during-traffic case: reply ends at N = 2, next live is 4.
        let mut r = good();
        r.seen[2] = seen("x", msg("r", 4));
        r.seen.remove(4);
        assert!(
            check(&r)[0].detail.contains("missed seq 3"),
            "{:?}",
            check(&r)
        );
        // A history with a hole, or not ending at the reply's seq.
        let mut r = good();
        r.seen[0] = seen(
            "x",
            joined("r", None, 2, vec![(0, id(0)), (2, id(2))], false),
        );
        assert_eq!(rules(&r), vec!['a']);
    }

    #[test]
    fn a_message_before_its_join_reply_is_live() {
        // Wire order: msg 3, then the join reply at 2, then msg 4: x saw 3 and 4 live.
        let mut r = good();
        r.seen.splice(
            0..1,
            [
                seen("x", Event::JoinSent { room: "r".into() }),
                seen("x", msg("r", 3)),
                seen("x", joined("r", None, 2, hist(1, 2), false)),
            ],
        );
        r.seen.remove(4); // x's later copy of 3
        assert_eq!(check(&r), vec![], "{:?}", r.seen);
        // An early message the history already held is a duplicate.
        r.seen[1] = seen("x", msg("r", 2));
        assert!(rules(&r).contains(&'a'));
        // A message with no join on its way is not.
        let mut r = good();
        r.seen.insert(0, seen("x", msg("r", 1)));
        assert_eq!(rules(&r), vec!['a']);
    }

    #[test]
    fn a_resume_must_continue_exactly() {
        let mut r = good();
        r.seen[7] = seen("x", joined("r", Some(5), 7, hist(7, 7), false));
        assert_eq!(rules(&r), vec!['a']);
        // ... unless the reply says gap.
        r.seen[7] = seen("x", joined("r", Some(5), 7, hist(7, 7), true));
        assert_eq!(check(&r), vec![]);
        // A resume that repeats what was seen is a duplicate.
        r.seen[7] = seen("x", joined("r", Some(5), 7, hist(5, 7), false));
        assert_eq!(rules(&r), vec!['a']);
        // A since the client never reached.
        r.seen[7] = seen("x", joined("r", Some(4), 7, hist(5, 7), false));
        assert_eq!(rules(&r), vec!['a']);
    }

    #[test]
    fn a_missed_tail_is_caught() {
        let mut r = good();
        r.seen.remove(8); // x never gets 8, yet stays joined
        let found = check(&r);
        assert_eq!(rules(&r), vec!['a']);
        assert!(
            found[0].detail.contains("the room reached seq 8"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_message_after_leave_or_disconnect_is_caught() {
        let mut r = good();
        r.seen
            .insert(6, seen("x", Event::Left { room: "r".into() }));
        r.seen.truncate(7);
        r.seen.push(seen("x", msg("r", 6)));
        assert_eq!(rules(&r), vec!['a']);
    }

    #[test]
    fn b_two_ids_for_one_seq_are_caught() {
        let mut r = good();
        r.seen[5] = seen(
            "x",
            Event::Message {
                room: "r".into(),
                seq: 5,
                id: "other".into(),
            },
        );
        let found = check(&r);
        assert_eq!(rules(&r), vec!['b', 'b']);
        assert!(found[0].detail.contains("two ids"), "{}", found[0]);
        // A node holding another content for an acked seq.
        let mut r = good();
        r.histories.get_mut("b").unwrap().get_mut("r").unwrap()[2].1 = "forked".into();
        assert_eq!(rules(&r), vec!['b', 'c']);
    }

    #[test]
    fn c_an_acked_message_missing_from_a_survivor_is_caught() {
        let mut r = good();
        r.histories
            .get_mut("b")
            .unwrap()
            .get_mut("r")
            .unwrap()
            .truncate(7); // lost 8
        let found = check(&r);
        // x saw 8 and is still joined: the tail rule agrees with the node that has it.
        assert_eq!(rules(&r), vec!['c']);
        assert!(found[0].detail.contains("node b"), "{}", found[0]);
    }

    #[test]
    fn c_eviction_by_retention_is_not_loss() {
        let mut r = good();
        r.retention = 5;
        for rooms in r.histories.values_mut() {
            rooms.insert("r".into(), hist(4, 8));
        }
        // seq 3 was acked and evicted from both: fine; x's join history 1..2 too.
        assert_eq!(check(&r), vec![]);
        r.retention = 6;
        assert_eq!(rules(&r), vec!['c', 'c']);
    }

    #[test]
    fn d_presence_not_matched_within_the_bound_is_caught() {
        let mut r = good();
        r.presence[0].matched_after = None;
        r.presence[0].last_seen.insert("ghost".into(), 1);
        let found = check(&r);
        assert_eq!(rules(&r), vec!['d']);
        assert!(found[0].detail.contains("ghost"), "{}", found[0]);
        // Matching only after the bound is a violation too.
        let mut r = good();
        r.presence[0].matched_after = Some(Duration::from_millis(1700));
        assert_eq!(rules(&r), vec!['d']);
    }

    #[test]
    #[should_panic(expected = "FAULT_SEED=42")]
    fn a_failure_names_the_seed() {
        let mut r = good();
        r.seen.remove(4);
        assert_holds(&r, 42, "unit");
    }
}
