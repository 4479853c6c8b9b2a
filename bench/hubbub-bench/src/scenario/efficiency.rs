//! `efficiency`: inter-node messages per broadcast in a hubbub cluster.
//!
//! For each member count in `--members`, the members of one fresh room are spread
//! over the URLs (one node each), one of them publishes `--messages` messages, and
//! `hubbub_cluster_messages_total` is read from every node's `/metrics` before and
//! after. The target: a broadcast is one entry of its room's Raft log, which the
//! shard's leader (the room's *owner* here) sends to every other node in an
//! AppendEntries (`raft_append`): at most one per other node per broadcast (fewer when
//! publishes share an entry), whatever the number of members. The leader is found in
//! `GET /cluster` (`room_shards` and `shards`). Without the metric the scenario still
//! publishes, checks delivery and reports the metric as not available.

use super::{Common, Context};
use crate::conn::SourcePlan;
use crate::members::{ConnectOptions, Layout, Members};
use crate::probe;
use crate::stats::{tally_line, tally_since, LatencySummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// The counter this scenario reads.
pub const METRIC: &str = "hubbub_cluster_messages_total";
/// The kind of cluster message that carries a broadcast from its shard's leader.
pub const BROADCAST_KIND: &str = "raft_append";

/// Options of `efficiency`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct EfficiencyArgs {
    /// Members of the room, one case per value.
    #[arg(long, value_delimiter = ',', default_value = "2,20,200")]
    pub members: Vec<usize>,
    /// Messages published in each case.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
}

/// One case: a room with some members, some broadcasts.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub room: String,
    pub members: usize,
    /// Members per URL, in `--url` order.
    pub members_per_node: Vec<u64>,
    /// The URL index of the room's shard's leader, from `GET /cluster`.
    pub owner: Option<usize>,
    pub published: u64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub lost: u64,
    pub latency: LatencySummary,
    pub errors: BTreeMap<String, u64>,
    /// Nodes other than the leader (every node applies the log): the most
    /// `raft_append` per broadcast.
    pub expected_per_broadcast: Option<u64>,
    /// Room-log traffic between nodes (`raft_*` kinds sent but heartbeats), per
    /// broadcast, all nodes together; None when the metric is not available.
    pub sent_per_broadcast: Option<BTreeMap<String, f64>>,
    /// `raft_append` sent per broadcast.
    pub broadcast_messages_per_broadcast: Option<f64>,
    pub met: Option<bool>,
}

/// The result of `efficiency`.
#[derive(Debug, Clone, Serialize)]
pub struct EfficiencyResult {
    /// "available", or "metric not available".
    pub metric: String,
    pub cases: Vec<Case>,
}

pub(crate) async fn run(
    common: &Common,
    ctx: &Context,
    args: &EfficiencyArgs,
) -> Result<(EfficiencyResult, String), String> {
    let mut cases = Vec::new();
    let mut metric_seen = true;
    for (k, &members) in args.members.iter().enumerate() {
        let case = run_case(common, ctx, args, k, members).await?;
        metric_seen &= case.sent_per_broadcast.is_some();
        cases.push(case);
    }
    let result = EfficiencyResult {
        metric: if metric_seen {
            "available".to_owned()
        } else {
            "metric not available".to_owned()
        },
        cases,
    };
    let summary = summary(&result);
    Ok((result, summary))
}

async fn run_case(
    common: &Common,
    ctx: &Context,
    args: &EfficiencyArgs,
    k: usize,
    members: usize,
) -> Result<Case, String> {
    let layout = Layout {
        clients: members.max(1),
        rooms: 1,
        publishers: 1,
        room_prefix: format!("eff-{}-{k}-", ctx.run_id),
        user_prefix: format!("e{}c{k}u", ctx.run_id),
    };
    let room = layout.room_name(0);
    let options = ConnectOptions {
        timeout: common.timeout(),
        concurrency: common.connect_concurrency,
        sources: SourcePlan::new(common.source_ips, members),
    };
    let errors_before = ctx.errors.snapshot();
    let bar = ctx.bar(members as u64, "connecting");
    let crowd = Members::connect(&ctx.targets, layout, options, ctx.errors.clone(), &bar).await;
    bar.finish_and_clear();
    if crowd.connected() == 0 {
        return Err(format!("no member of {room} could connect"));
    }
    let members_per_node = crowd.per_room_and_target(ctx.targets.len())[0].clone();
    let owner = find_owner(ctx, &room).await;
    let before = sent_by_kind(ctx).await;
    let spinner = ctx.spinner(&format!("{room}: {members} members"));
    crowd.begin_step(1);
    let duration = Duration::from_secs_f64(args.messages as f64 / args.rate);
    let sent = crowd.publish(1, args.rate, duration, 64).await;
    let published: u64 = sent.iter().sum();
    let expected = published * crowd.connected() as u64;
    crowd
        .drain(expected, Duration::from_secs_f64(args.drain_timeout))
        .await;
    // Counters are updated as messages cross; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = sent_by_kind(ctx).await;
    spinner.finish_and_clear();
    let counts = crowd.counts();
    crowd.close().await;
    let per_broadcast = match (before, after) {
        (Some(before), Some(after)) if published > 0 => Some(
            after
                .iter()
                .filter_map(|(kind, n)| {
                    let grew = n - before.get(kind).copied().unwrap_or(0.0);
                    // Heartbeats and gossip run on their own clock, not per broadcast.
                    (grew > 0.0 && kind.starts_with("raft_") && kind != "raft_heartbeat")
                        .then(|| (kind.clone(), grew / published as f64))
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        _ => None,
    };
    // Every node applies every shard's log, members or not: the leader sends each
    // entry to every other node.
    let expected_per_broadcast = owner.map(|_| ctx.targets.len().saturating_sub(1) as u64);
    let broadcast = per_broadcast
        .as_ref()
        .map(|kinds| kinds.get(BROADCAST_KIND).copied().unwrap_or(0.0));
    let met = match (broadcast, expected_per_broadcast) {
        (Some(measured), Some(want)) => Some(measured <= want as f64 + 0.01),
        _ => None,
    };
    Ok(Case {
        room,
        members: crowd_size(&members_per_node),
        members_per_node,
        owner,
        published,
        expected_deliveries: expected,
        received: counts.received,
        lost: expected.saturating_sub(counts.received),
        latency: LatencySummary::of(&counts.latency),
        errors: tally_since(&errors_before, &ctx.errors.snapshot()),
        expected_per_broadcast,
        sent_per_broadcast: per_broadcast,
        broadcast_messages_per_broadcast: broadcast,
        met,
    })
}

fn crowd_size(per_node: &[u64]) -> usize {
    per_node.iter().sum::<u64>() as usize
}

/// The index of the URL whose node leads `room`'s shard, from `GET /cluster`: the
/// room's shard from `room_shards` of a node running it, that shard's leader from
/// `shards`, and the URL whose node has that name.
pub(crate) async fn find_owner(ctx: &Context, room: &str) -> Option<usize> {
    let mut names = Vec::new();
    let mut leader = None;
    for target in &ctx.targets {
        let status = match probe::http_get(target.addr, &target.host, "/cluster").await {
            Some((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok(),
            _ => None,
        };
        let status = status.unwrap_or_default();
        names.push(status["node"].as_str().map(str::to_owned));
        if leader.is_none() {
            if let Some(shard) = status["room_shards"][room].as_u64() {
                leader = status["shards"][shard as usize]["leader"]
                    .as_str()
                    .map(str::to_owned);
            }
        }
    }
    let leader = leader?;
    names
        .iter()
        .position(|n| n.as_deref() == Some(leader.as_str()))
}

/// Cluster messages sent so far by kind, all nodes together; None when any node lacks
/// the metric.
async fn sent_by_kind(ctx: &Context) -> Option<BTreeMap<String, f64>> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for target in &ctx.targets {
        let samples = probe::metrics(target.addr, &target.host).await?;
        let ours: Vec<_> = samples.iter().filter(|s| s.name == METRIC).collect();
        if ours.is_empty() {
            return None;
        }
        for sample in ours {
            let sent = sample.labels.get("direction").is_none_or(|d| {
                matches!(d.as_str(), "out" | "sent" | "tx" | "outbound" | "egress")
            });
            if sent {
                let kind = sample.labels.get("kind").cloned().unwrap_or_default();
                *total.entry(kind).or_default() += sample.value;
            }
        }
    }
    Some(total)
}

fn summary(result: &EfficiencyResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "efficiency: {METRIC} {}", result.metric);
    for c in &result.cases {
        let measured = match (&c.sent_per_broadcast, c.broadcast_messages_per_broadcast) {
            (Some(kinds), Some(broadcast)) => format!(
                "{BROADCAST_KIND} per broadcast {broadcast:.2} (target {}){}; all kinds: {}",
                c.expected_per_broadcast
                    .map_or("owner unknown".to_owned(), |n| n.to_string()),
                match c.met {
                    Some(true) => " met",
                    Some(false) => " NOT met",
                    None => "",
                },
                kinds
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "metric not available".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} members {:?} (owner: {}): {} published, delivered {}/{}, lost {}; {}; errors: {}",
            c.members,
            c.members_per_node,
            c.owner
                .map_or("unknown".to_owned(), |o| format!("url #{o}")),
            c.published,
            c.received,
            c.expected_deliveries,
            c.lost,
            measured,
            tally_line(&c.errors)
        );
    }
    out
}
