//! One scenario run: a [`FaultCluster`], its recording [`Member`]s, publisher streams,
//! presence samples, the schedule's random numbers, and at the end the collection of
//! every surviving node's history and the checker's verdict.
//!
//! The schedule's seed is printed at the start; `FAULT_SEED=<n>` replays it.

use crate::checker::{self, PresenceSample, Record};
use crate::harness::{FaultCluster, Log, Member, NodeAddr, DEADLINE};
use crate::hubbub_node::HISTORY;
use crate::ws_client::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A small deterministic generator (splitmix64): schedules replay from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// The node expected to lead `room`'s shard when exactly `nodes` are up: the first
/// up voter of the shard (the first voter campaigns first; see cluster/shards.rs).
pub fn owner_of(room: &str, all: &[String], nodes: &[String]) -> String {
    let all = all.to_vec();
    let placement = hubbub::cluster::shards::Placement::new(&all, 16, 3).expect("placement");
    let shard = placement.shard_of(room);
    placement
        .voters(shard)
        .into_iter()
        .filter_map(|id| placement.name_of(id))
        .find(|name| nodes.iter().any(|n| n == name))
        .map_or_else(|| nodes[0].clone(), str::to_owned)
}

/// The first room `<prefix>-<i>` that `pick` accepts.
pub fn find_room(prefix: &str, pick: impl Fn(&str) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|room| pick(room))
        .expect("some room name fits")
}

pub struct Run {
    pub label: String,
    pub seed: u64,
    pub rng: Rng,
    pub cluster: FaultCluster,
    pub log: Log,
    pub members: Vec<Member>,
    pub presence: Vec<PresenceSample>,
    streams: Vec<JoinHandle<()>>,
    /// Members that publish a stream: not presence observers, since their presence
    /// answers queue behind their publishes' (docs/protocol.md, Frames).
    streamers: BTreeSet<usize>,
    next_user: usize,
    /// False: [`Run::sample_presence`] samples nothing (rule (d) is not checked).
    pub check_presence: bool,
}

impl Run {
    /// Picks the seed (printed), makes the namespaces and starts `n` nodes.
    pub async fn start(label: &str, n: usize) -> Self {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("[{label}] schedule seed {seed} (replay with FAULT_SEED={seed})");
        let cluster = FaultCluster::start(label, n).await;
        Self {
            label: label.to_owned(),
            seed,
            rng: Rng(seed),
            cluster,
            log: Default::default(),
            members: Vec::new(),
            presence: Vec::new(),
            streams: Vec::new(),
            streamers: BTreeSet::new(),
            next_user: 0,
            check_presence: true,
        }
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.cluster.node_count())
            .map(|i| self.cluster.name(i))
            .collect()
    }

    /// What node `i` says of `room`'s shard: its leader as `i` last heard, and the
    /// index of the last log entry `i` applied (None while `i` does not answer).
    pub async fn shard_seen_by(&self, i: usize, room: &str) -> Option<(Option<String>, u64)> {
        let names = self.names();
        let placement = hubbub::cluster::shards::Placement::new(&names, 16, 3).expect("placement");
        let status = self.cluster.status(i).await?;
        let shard = &status["shards"][placement.shard_of(room) as usize];
        Some((
            shard["leader"].as_str().map(str::to_owned),
            shard["applied"].as_u64()?,
        ))
    }

    /// A room name for this run whose owner (all nodes up) is `owner` and, when given,
    /// whose next owner without `owner` is `next`.
    pub fn room_owned_by(&self, tag: &str, owner: usize, next: Option<usize>) -> String {
        let names = self.names();
        let without: Vec<String> = names
            .iter()
            .filter(|n| **n != names[owner])
            .cloned()
            .collect();
        find_room(&format!("f{}{tag}", self.seed % 10_000), |room| {
            owner_of(room, &names, &names) == names[owner]
                && next.is_none_or(|x| owner_of(room, &names, &without) == names[x])
        })
    }

    /// Connects a new member to `node` and joins it to `rooms`; returns its index.
    pub async fn add_member(&mut self, node: usize, rooms: &[String]) -> usize {
        self.next_user += 1;
        let user = format!("u{}{}", self.cluster.name(node), self.next_user);
        let member = Member::connect(&self.cluster, node, &user, &self.log).await;
        for room in rooms {
            member.join(room).await;
        }
        self.members.push(member);
        self.members.len() - 1
    }

    /// Publishes `count` messages to `room` through member `by`, `rate` per second,
    /// in a task of its own; [`Run::finish`] waits for it.
    pub fn stream(&mut self, by: usize, room: &str, count: u64, rate: u64) {
        self.streamers.insert(by);
        let publisher = self.members[by].publisher();
        let (room, label) = (room.to_owned(), self.members[by].label.clone());
        let interval = Duration::from_micros(1_000_000 / rate.max(1));
        self.streams.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for k in 0..count {
                publisher.publish(&room, format!("{label}:{k}"));
                tokio::time::sleep_until(start + interval * (k as u32 + 1)).await;
            }
        }));
    }

    /// Waits for every stream task to have sent everything.
    pub async fn streams_sent(&mut self) {
        for stream in self.streams.drain(..) {
            let _ = tokio::time::timeout(DEADLINE * 4, stream).await;
        }
    }

    /// For every node in `up` and every room: polls the node's presence (through a
    /// member of its own joined to the room) until it equals the members of the room
    /// connected to nodes in `up`, or `bound` after `since` passes. The (node, room)
    /// pairs are polled side by side, so each is timed by when it matched, not by when
    /// its turn came. Records one sample per pair.
    pub async fn sample_presence(
        &mut self,
        after: &str,
        up: &[usize],
        since: Instant,
        bound: Duration,
    ) {
        if !self.check_presence {
            return;
        }
        let mut rooms: Vec<String> = self
            .members
            .iter()
            .flat_map(|m| {
                m.rooms
                    .lock()
                    .expect("lock")
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        rooms.sort();
        rooms.dedup();
        struct Probe {
            node: usize,
            observer: usize,
            room: String,
            expected: BTreeMap<String, u64>,
            last_seen: BTreeMap<String, u64>,
            last_error: Option<String>,
            matched_after: Option<Duration>,
        }
        let mut probes = Vec::new();
        for room in &rooms {
            let expected: BTreeMap<String, u64> = self
                .members
                .iter()
                .filter(|m| {
                    m.is_alive()
                        && up.contains(&m.node)
                        && m.rooms.lock().expect("lock").contains(room)
                })
                .map(|m| (m.user.clone(), 1))
                .collect();
            for node in up {
                let observes = |i: &usize| {
                    let m = &self.members[*i];
                    m.node == *node && m.is_alive() && m.rooms.lock().expect("lock").contains(room)
                };
                let observer = (0..self.members.len())
                    .filter(|i| !self.streamers.contains(i))
                    .find(observes)
                    .or_else(|| (0..self.members.len()).find(observes));
                if let Some(observer) = observer {
                    probes.push(Probe {
                        node: *node,
                        observer,
                        room: room.clone(),
                        expected: expected.clone(),
                        last_seen: BTreeMap::new(),
                        last_error: None,
                        matched_after: None,
                    });
                }
            }
        }
        // Each pair polls on its own, so one node that is slow to answer does not delay
        // the verdict on the others.
        let members = &self.members;
        futures_util::future::join_all(probes.iter_mut().map(|probe| async move {
            loop {
                match members[probe.observer].presence(&probe.room).await {
                    Ok(seen) => (probe.last_seen, probe.last_error) = (seen, None),
                    Err(e) => probe.last_error = Some(e),
                }
                let at = since.elapsed();
                // Matching late is not matching within the bound.
                if probe.last_seen == probe.expected && at <= bound {
                    probe.matched_after = Some(at);
                    return;
                }
                if at > bound {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
        .await;
        for p in probes {
            eprintln!(
                "[{}] presence of {} on {} after {after}: {}",
                self.label,
                p.room,
                self.cluster.name(p.node),
                p.matched_after.map_or(
                    format!(
                        "NOT matched within {bound:?}: {:?} vs {:?} (last error: {:?})",
                        p.last_seen, p.expected, p.last_error
                    ),
                    |d| format!("matched after {d:?}")
                )
            );
            self.presence.push(PresenceSample {
                node: self.cluster.name(p.node),
                room: p.room,
                expected: p.expected,
                last_seen: p.last_seen,
                last_error: p.last_error,
                matched_after: p.matched_after,
                bound,
                after: after.to_owned(),
            });
        }
    }

    /// Nodes whose process runs and is not stopped.
    pub fn running(&self) -> Vec<usize> {
        (0..self.cluster.node_count())
            .filter(|i| self.cluster.is_running(*i) && !self.cluster.is_stopped(*i))
            .collect()
    }

    /// Ends the run: waits for the streams, heals the network, continues stopped
    /// nodes, waits for the survivors to converge, publishes one last message per room
    /// and lets it reach everyone (bounded), samples presence, collects each
    /// survivor's history of each room and runs the checker.
    pub async fn finish(mut self) {
        self.streams_sent().await;
        self.cluster.net.heal_all();
        for i in 0..self.cluster.node_count() {
            if self.cluster.is_stopped(i) {
                self.cluster.sigcont(i);
            }
        }
        let healed = Instant::now();
        let survivors = self.running();
        let took = self.cluster.wait_converged(&survivors).await;
        eprintln!(
            "[{}] survivors {survivors:?} converged {took:?} after the heal",
            self.label
        );
        for m in &self.members {
            m.drain().await;
        }
        // One last message per room, so a member that silently lost the stream's tail
        // shows it (rule (a)'s end check).
        let rooms: Vec<String> = {
            let mut all: Vec<String> = self
                .members
                .iter()
                .flat_map(|m| {
                    m.rooms
                        .lock()
                        .expect("lock")
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect();
            all.sort();
            all.dedup();
            all
        };
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for room in &rooms {
            let Some(by) = self
                .members
                .iter()
                .find(|m| m.is_alive() && m.rooms.lock().expect("lock").contains(room))
            else {
                continue;
            };
            let mut marker =
                Client::connect(self.cluster.http(by.node), "user=marker&name=marker").await;
            marker.join_retry(room).await;
            let ack = marker.publish_retry(room, "marker").await;
            last.insert(room.clone(), ack["seq"].as_u64().unwrap_or_default());
            marker.close().await;
        }
        let started = Instant::now();
        loop {
            let behind: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.is_alive())
                .flat_map(|m| {
                    let seqs = m.last_seq.lock().expect("lock").clone();
                    m.rooms
                        .lock()
                        .expect("lock")
                        .iter()
                        .filter(|r| {
                            seqs.get(*r).copied().unwrap_or_default()
                                < last.get(*r).copied().unwrap_or_default()
                        })
                        .map(|r| format!("{} in {r}", m.label))
                        .collect::<Vec<_>>()
                })
                .collect();
            if behind.is_empty() || started.elapsed() > Duration::from_secs(5) {
                if !behind.is_empty() {
                    eprintln!(
                        "[{}] never reached the last message: {behind:?}",
                        self.label
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let everyone = self.running();
        self.sample_presence("the heal (convergence bound)", &everyone, healed, DEADLINE)
            .await;
        for m in &self.members {
            if m.is_alive() {
                m.end().await;
            }
        }
        let mut record = Record {
            seen: self.log.lock().expect("lock").clone(),
            retention: HISTORY,
            presence: std::mem::take(&mut self.presence),
            ..Default::default()
        };
        for i in &everyone {
            let mut probe: Client =
                Client::connect(NodeAddr(self.cluster.http(*i).0), "user=probe&name=probe").await;
            let mut rooms_of = BTreeMap::new();
            for room in &rooms {
                probe.join_retry(room).await;
                // A node that does not lead the room's shard answers from its own copy,
                // which may trail the marker by a heartbeat (more just after a heal):
                // read once it holds the marker.
                let history = match last.get(room) {
                    Some(&marker) => probe.full_history_through(room, marker).await,
                    None => probe.full_history(room).await,
                };
                let entries = history
                    .iter()
                    .filter_map(|m| Some((m["seq"].as_u64()?, m["id"].as_str()?.to_owned())))
                    .collect();
                rooms_of.insert(room.clone(), entries);
            }
            record.histories.insert(self.cluster.name(*i), rooms_of);
            probe.close().await;
        }
        let acked: u64 = self
            .members
            .iter()
            .map(|m| m.outcomes.lock().expect("lock").acked)
            .sum();
        let refused: u64 = self
            .members
            .iter()
            .map(|m| m.outcomes.lock().expect("lock").refused)
            .sum();
        let events = record.seen.len();
        eprintln!(
            "[{}] {acked} publishes acked, {refused} refused; {events} events from {} members; histories: {}",
            self.label,
            self.members.len(),
            record
                .histories
                .iter()
                .map(|(n, rooms)| format!("{n}: {:?}", rooms.iter().map(|(r, h)| (r.clone(), h.len())).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
                .join("; ")
        );
        checker::assert_holds(&record, self.seed, &self.label);
    }
}
