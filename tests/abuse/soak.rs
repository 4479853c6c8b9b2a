//! Attack 8: the soak. For [`SOAK`], ever-new users connect, join [`ROOMS_PER_CYCLE`]
//! of [`ROOMS`] rooms, leave them and disconnect, from [`WORKERS`] addresses ×
//! [`TASKS`] tasks, each once every [`CYCLE_EVERY`]; each room keeps an idle member all along, so none of them ever
//! retires. A room must hold state only for its current members: the node's memory
//! has to stop growing.
//!
//! The criterion: the median RSS of the last [`WINDOW`] against the median of the
//! window that starts at [`WARMUP`] may grow by at most [`NOISE`] plus [`PER_CYCLE`]
//! for every cycle run between the two windows. Medians of some 300 samples each
//! ignore allocator spikes; the fixed part covers allocator steps, and the per-cycle
//! part is an eighth of the 0.8 KB a cycle that issue #13 measured leaking. At the
//! 400 cycles a second aimed at, that leak is about 29 MB over the 95 s between the
//! windows against 6.6 MiB allowed; the soak refuses to judge with fewer than
//! [`MIN_CYCLES`] cycles between the windows, where the leak would hide in the noise.
//! Each cycle joins several rooms because what a room keeps of a departed user is
//! per room: the same handshake then shows several times the leak.
//!
//! Where the node counts what its rooms hold per user (`hubbub_room_state_entries`),
//! that count must be back where it was once the churning users are gone: an exact
//! witness, whatever rate a loaded machine allowed. Memory is then judged only when
//! at least [`MIN_CYCLES`] ran between the windows.

use crate::support::{
    assert_withstood, crowd, loopback, masked_text, record_figures, AbuseNode, Conversation,
    Monitor, RawWs, MIB,
};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the soak lasts.
const SOAK: Duration = Duration::from_secs(150);
/// Rooms the churn goes through, each held in use by one idle member.
const ROOMS: usize = 200;
/// Rooms each cycle joins and leaves.
const ROOMS_PER_CYCLE: usize = 4;
/// Source addresses the churn comes from (127.0.0.150 on).
const WORKERS: u8 = 40;
/// Churning tasks on each address: a cycle waits for its replies, so the rate a
/// loaded node allows comes from several at once.
const TASKS: usize = 4;
/// One cycle of each task this often: 10 a second from each address (under the
/// default `handshakes_per_ip_per_sec` of 20), 400 a second in all.
const CYCLE_EVERY: Duration = Duration::from_millis(400);
/// Time for the node's tables and the allocator to reach their working size.
const WARMUP: Duration = Duration::from_secs(40);
/// The length of each window whose median RSS is compared.
const WINDOW: Duration = Duration::from_secs(15);
/// Growth allowed whatever the cycles, for allocator noise: before the limits of
/// issue #13 the same 1.6 MiB appeared between the windows at 2,500 and at 6,800
/// cycles, so it does not come from them.
const NOISE: u64 = 3 * MIB;
/// Growth allowed per cycle between the windows.
const PER_CYCLE: u64 = 100;
/// Fewer cycles than this between the windows, and the criterion could not see the
/// leak it is for (3 MiB / (800 B - 100 B) is 4,500): the soak is void.
const MIN_CYCLES: u64 = 6_000;

/// The gauge of per-user entries the rooms hold.
const ROOM_STATE_ENTRIES: &str = "hubbub_room_state_entries";

fn room(i: usize) -> String {
    format!("soak-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_of_join_leave_churn_by_ever_new_users_stops_growing() {
    let node = AbuseNode::start("soak").await;
    let monitor = Monitor::start(&node);
    let keepers = crowd(node.http, "keeper", ROOMS, 200, |i| vec![room(i)], None).await;
    let _keepers = match keepers {
        Ok(keepers) => keepers,
        Err(e) => monitor.fail("soak", e).await,
    };
    let conversation = Conversation::start(&node, &room(0)).await;
    // What the rooms hold for their current members (where the node counts it).
    let entries_before = node.metric(ROOM_STATE_ENTRIES).await;
    let started = monitor.elapsed();
    let ends = Instant::now() + SOAK;
    let cycles = Arc::new(AtomicU64::new(0));
    // (time since the monitor started, cycles so far), once a second.
    let counter = {
        let cycles = cycles.clone();
        let origin = monitor.started();
        tokio::spawn(async move {
            let mut counts = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < ends {
                tick.tick().await;
                counts.push((origin.elapsed(), cycles.load(Ordering::Relaxed)));
            }
            counts
        })
    };
    let mut workers = Vec::new();
    for (w, t) in (0..WORKERS).flat_map(|w| (0..TASKS).map(move |t| (w, t))) {
        let addr = node.http;
        let cycles = cycles.clone();
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(CYCLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0u64;
            for n in 0usize.. {
                tick.tick().await;
                if Instant::now() >= ends {
                    break;
                }
                let query = format!("user=soak-{w}-{t}-{n}");
                let cycle = async {
                    let mut ws = RawWs::dial(addr, loopback(150 + w), &query)
                        .await
                        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                    ws.next_of("welcome").await?;
                    let first = (n * TASKS + t) * WORKERS as usize + w as usize;
                    let targets: Vec<String> = (0..ROOMS_PER_CYCLE)
                        .map(|r| room((first * ROOMS_PER_CYCLE + r) % ROOMS))
                        .collect();
                    // The joins go out together, then the leaves: the node answers a
                    // connection's requests in order, one reply each.
                    let mut ok = true;
                    for kind in ["join", "leave"] {
                        let mut frames = Vec::new();
                        for target in &targets {
                            let frame = json!({"type": kind, "room": target}).to_string();
                            frames.extend(masked_text(frame.as_bytes()));
                        }
                        ws.send_bytes(&frames).await?;
                        for _ in &targets {
                            let reply = ws.next_answer().await?;
                            ok &= reply.is_some_and(|r| r["ok"] == true);
                        }
                    }
                    std::io::Result::Ok(ok)
                };
                match tokio::time::timeout_at(ends.into(), cycle).await {
                    Ok(Ok(true)) => {
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for worker in workers {
        failures += worker.await.expect("worker");
    }
    let counts = counter.await.expect("cycle counter");
    // Every churning user is gone: the rooms hold what they held before.
    let entries_after = match entries_before {
        Some(before) => Some(node.metric_settles(ROOM_STATE_ENTRIES, before).await),
        None => None,
    };
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;

    let total = cycles.load(Ordering::Relaxed);
    let early_from = started + WARMUP;
    let late_from = started + SOAK - WINDOW;
    let early = rss.median_between(early_from, early_from + WINDOW);
    let late = rss.median_between(late_from, late_from + WINDOW);
    let cycles_at = |t: Duration| {
        counts
            .iter()
            .find(|(at, _)| *at >= t)
            .or(counts.last())
            .map_or(0, |c| c.1)
    };
    let between = cycles_at(late_from + WINDOW / 2) - cycles_at(early_from + WINDOW / 2);
    let (early, late) = (early.unwrap_or(0), late.unwrap_or(0));
    let growth = late.saturating_sub(early);
    let allowed = NOISE + PER_CYCLE * between;
    let mib = |b: u64| b as f64 / MIB as f64;
    let figures = format!(
        "{total} cycles in {SOAK:?} ({:.0}/s), {failures} failed; median RSS {:.1} MiB at \
         {:?}, {:.1} MiB at {:?}: grew {:.2} MiB over {between} cycles ({:.0} B/cycle), \
         allowed {:.2} MiB; {ROOM_STATE_ENTRIES} {entries_before:?} before, \
         {entries_after:?} after; {}",
        total as f64 / SOAK.as_secs_f64(),
        mib(early),
        WARMUP,
        mib(late),
        SOAK - WINDOW,
        mib(growth),
        growth as f64 / between.max(1) as f64,
        mib(allowed),
        report.summary()
    );
    assert_withstood("soak", &rss, &health, &figures);
    report.assert_complete("soak");
    assert!(
        early > 0 && late > 0,
        "soak: a window without samples\n{figures}"
    );
    if let (Some(before), Some(after)) = (entries_before, entries_after) {
        assert!(
            after <= before,
            "soak: the rooms hold state for users who left\n{figures}"
        );
    }
    // RSS judges only with enough cycles to show the leak; the node's own count of
    // room state, where it has one, judges whatever the rate the machine allowed.
    assert!(
        between >= MIN_CYCLES || entries_after.is_some(),
        "soak: only {between} cycles between the windows, too few to judge by memory\n{figures}"
    );
    assert!(
        between < MIN_CYCLES || growth <= allowed,
        "soak: the node's memory kept growing\n{figures}"
    );
    record_figures(&format!(
        "soak: held ({:.0} B/cycle)",
        growth as f64 / between as f64
    ));
}
