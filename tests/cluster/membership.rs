//! Cluster membership phase by phase: three nodes find each other and agree on one
//! view; a killed node is declared down and comes back after a restart; a frozen node
//! (SIGSTOP) is declared down and rejoins after SIGCONT; a node with the wrong cookie
//! and a node with a taken name are refused, and nobody crashes.
//!
//! Nodes are watched through `GET /cluster` and their logs. One test drives the phases
//! in order, so that the timings measured are not disturbed by other clusters on the
//! same machine. The helpers below serve tests/cluster/tls.rs too.

use crate::support::{
    peer_state, view_names, wait_for, Cluster, NodeSpec, COOKIE, DETECTION_BOUND,
    FAILURE_TIMEOUT_MS,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long forming a cluster, rejoining, or logging a refusal may take.
pub const CONVERGE: Duration = Duration::from_secs(10);
/// How long a refused node is watched for, to see it never comes up anywhere.
pub const WATCH_REFUSED: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS * 3);

fn incarnation(status: &Value) -> u64 {
    status["incarnation"].as_u64().expect("incarnation")
}

/// Asserts that every peer in every status is up, with a round-trip time.
pub fn assert_peers_up(statuses: &[Value]) {
    for status in statuses {
        for peer in status["peers"].as_array().expect("peers") {
            assert_eq!(peer["state"], "up", "{status}");
            assert!(peer["rtt_ms"].is_number(), "{status}");
        }
    }
}

/// Waits until every node of `nodes` has logged `text`.
pub async fn all_logged(cluster: &Cluster, nodes: &[&str], text: &str, what: &str) {
    wait_for(CONVERGE, what, async || {
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|n| !cluster.log(n).contains(text))
            .copied()
            .collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("not yet logged by {missing:?}"))
    })
    .await;
}

/// Watches for [`WATCH_REFUSED`]: every member keeps the view `view` and never sees an
/// impostor up; an impostor that answers sees only itself, without a quorum. Then the
/// members still agree, on that same view, and every node (impostors too) still runs.
pub async fn watch_refused(
    cluster: &mut Cluster,
    members: &[&str],
    impostors: &[&str],
    view: &Value,
) {
    let impostor_names: Vec<String> = impostors
        .iter()
        .map(|key| cluster.config(key).name.clone())
        .collect();
    let watch_until = Instant::now() + WATCH_REFUSED;
    while Instant::now() < watch_until {
        for member in members {
            let status = cluster.cluster_status(member).await;
            assert_eq!(status["view_id"], *view, "{status}");
            for impostor in &impostor_names {
                // A namesake is refused under a member's name: that member is up.
                if !members.contains(&impostor.as_str()) {
                    assert_ne!(peer_state(&status, impostor), Some("up"), "{status}");
                }
            }
        }
        for impostor in impostors {
            if let Some(status) = cluster.try_cluster_status(impostor).await {
                assert_eq!(view_names(&status).len(), 1, "{status}");
                assert_eq!(status["has_quorum"], false, "{status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = cluster
        .converged_within(members, CONVERGE, "the members to still agree")
        .await;
    assert_eq!(statuses[0]["view_id"], *view);
    for node in members.iter().chain(impostors) {
        assert!(
            cluster.is_running(node),
            "{node} exited; its log:\n{}",
            cluster.log(node)
        );
    }
}

/// Waits until every node in `watchers` sees `peer` down while keeping a quorum;
/// returns how long that took from `since`.
async fn detected_down(
    cluster: &Cluster,
    watchers: &[&str],
    peer: &str,
    since: Instant,
) -> Duration {
    let what = format!("{peer} to be declared down");
    wait_for(DETECTION_BOUND, &what, async || {
        for watcher in watchers {
            let status = cluster
                .try_cluster_status(watcher)
                .await
                .ok_or(format!("{watcher} does not answer"))?;
            if peer_state(&status, peer) != Some("down") || status["has_quorum"] != true {
                return Err(status.to_string());
            }
        }
        Ok(since.elapsed())
    })
    .await
}

#[tokio::test]
async fn membership_forms_detects_failures_and_refuses_impostors() {
    let mut cluster = Cluster::plan("membership", 3).await;
    let all = ["a", "b", "c"];
    // Reverse order: start order must not matter.
    let started = Instant::now();
    for name in all.iter().rev() {
        cluster.start_node(name).await;
    }
    let statuses = cluster
        .converged_within(&all, CONVERGE, "three nodes to form one view")
        .await;
    println!("formed: {:?}", started.elapsed());
    assert_peers_up(&statuses);

    // ---- kill -9 of c: declared down in time, the others keep quorum ----
    cluster.kill9("c");
    let killed = Instant::now();
    let took = detected_down(&cluster, &["a", "b"], "c", killed).await;
    println!("kill -9 detected by both others in {took:?}");
    assert!(took <= DETECTION_BOUND);
    cluster
        .converged_within(&["a", "b"], CONVERGE, "a and b to agree without c")
        .await;

    // ---- restart of c: back up everywhere, with a new incarnation ----
    let old_incarnation = incarnation(&statuses[2]);
    cluster.start_node("c").await;
    let restarted = Instant::now();
    let statuses = cluster
        .converged_within(&all, CONVERGE, "the restarted c to rejoin")
        .await;
    println!("restarted c rejoined in {:?}", restarted.elapsed());
    assert_ne!(incarnation(&statuses[2]), old_incarnation);

    // ---- SIGSTOP of b: declared down in time; after SIGCONT it rejoins ----
    let frozen_incarnation = incarnation(&statuses[1]);
    cluster.sigstop("b");
    let stopped = Instant::now();
    let took = detected_down(&cluster, &["a", "c"], "b", stopped).await;
    println!("SIGSTOP detected by both others in {took:?}");
    cluster
        .converged_within(&["a", "c"], CONVERGE, "a and c to agree without b")
        .await;
    cluster.sigcont("b");
    let resumed = Instant::now();
    let statuses = cluster
        .converged_within(&all, CONVERGE, "b to rejoin after SIGCONT")
        .await;
    println!("b rejoined {:?} after SIGCONT", resumed.elapsed());
    assert_eq!(
        incarnation(&statuses[1]),
        frozen_incarnation,
        "same process"
    );
    let view_before_impostors = statuses[0]["view_id"].clone();
    let seeds: Vec<String> = all.map(|n| cluster.bind_addr(n).to_string()).to_vec();

    // ---- a node with the wrong cookie: refused, logged, never up ----
    // It believes it is one of four (a, b, c and itself): alone it has no majority.
    cluster.plan_extra(NodeSpec {
        key: "intruder".to_owned(),
        name: "intruder".to_owned(),
        cookie: "wrong-cookie".to_owned(),
        seeds: seeds.clone(),
    });
    cluster.start_node("intruder").await;
    all_logged(
        &cluster,
        &all,
        "failed the cookie check",
        "the wrong cookie to be logged",
    )
    .await;

    // ---- a second node named a: refused, logged, the first a stays ----
    cluster.plan_extra(NodeSpec {
        key: "a-namesake".to_owned(),
        name: "a".to_owned(),
        cookie: COOKIE.to_owned(),
        seeds,
    });
    cluster.start_node("a-namesake").await;
    wait_for(CONVERGE, "the taken name to be logged", async || {
        let original = cluster.log("a").contains("it is also named");
        let others = ["b", "c"]
            .iter()
            .filter(|n| cluster.log(n).contains("is taken by the node at"))
            .count();
        (original && others == 2)
            .then_some(())
            .ok_or(format!("a logged it: {original}; {others} of 2 others did"))
    })
    .await;

    // Watch both impostors for a while: never up anywhere, the view never moves.
    watch_refused(
        &mut cluster,
        &all,
        &["intruder", "a-namesake"],
        &view_before_impostors,
    )
    .await;
    let namesake_log = cluster.log("a-namesake");
    assert!(namesake_log.contains("it is also named"), "{namesake_log}");
    assert!(
        !namesake_log.contains("failed the cookie check"),
        "a refusal is not a cookie failure: {namesake_log}"
    );
    println!("total: {:?}", started.elapsed());
}
