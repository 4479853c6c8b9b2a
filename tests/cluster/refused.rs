//! Nodes that must not get in: one with the wrong cookie, one with a name already
//! taken. Neither ever enters a view, the refusal is logged, nobody crashes, the
//! cluster keeps working, and no cookie is ever written to a log.

use crate::support::{is_message, view_names, Cluster, NodeSpec, COOKIE, DEADLINE};
use serde_json::Value;
use std::time::{Duration, Instant};

const WRONG_COOKIE: &str = "not-the-test-cookie";
/// How long the views are watched after the refusal was logged (the intruder keeps
/// redialling meanwhile).
const WATCH_AFTER_REFUSAL: Duration = Duration::from_secs(2);

/// Watches the views of the cluster's `members` and of `intruder` until a log line
/// containing `logged` (lower case) appears in any node's log, then for
/// [`WATCH_AFTER_REFUSAL`] more. `members` must keep exactly their view (same
/// incarnations) and the intruder must stay alone. Returns when the line appeared.
async fn watch_refusal(
    cluster: &Cluster,
    members: &[String],
    intruder: &str,
    logged: &str,
) -> Duration {
    let before: Vec<Value> = {
        let mut statuses = Vec::new();
        for name in members {
            statuses.push(cluster.cluster_status(name).await);
        }
        statuses
    };
    let started = Instant::now();
    let mut refused_after: Option<Duration> = None;
    while refused_after.is_none_or(|at| started.elapsed() < at + WATCH_AFTER_REFUSAL) {
        for (name, before) in members.iter().zip(&before) {
            let status = cluster.cluster_status(name).await;
            assert_eq!(
                status["view_id"], before["view_id"],
                "{name}'s view changed while {intruder} knocked: {status}"
            );
        }
        let status = cluster.cluster_status(intruder).await;
        assert_eq!(
            view_names(&status).len(),
            1,
            "{intruder} must stay alone: {status}"
        );
        assert_eq!(status["has_quorum"], false, "{intruder}: {status}");
        if refused_after.is_none()
            && cluster.names().iter().any(|name| {
                cluster
                    .log(name)
                    .lines()
                    .any(|line| line.to_lowercase().contains(logged))
            })
        {
            refused_after = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no node logged {logged:?} within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refused_after.unwrap_or_default()
}

/// The cluster's own nodes still chat with each other, and every process runs.
async fn still_working(cluster: &mut Cluster, room: &str) {
    let mut on_a = cluster.connect("a", "alice").await;
    let mut on_b = cluster.connect("b", "bob").await;
    let mut on_c = cluster.connect("c", "carol").await;
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        client.join_retry(room).await;
    }
    let ack = on_c.publish_retry(room, "still just us").await;
    for client in [&mut on_a, &mut on_b] {
        let got = client
            .expect(|f| is_message(f, room), "carol's message")
            .await;
        assert_eq!(got["seq"], ack["seq"]);
    }
    for name in cluster.names() {
        assert!(cluster.is_running(&name), "node {name} exited");
    }
}

#[tokio::test]
async fn a_node_with_the_wrong_cookie_is_refused() {
    let mut cluster = Cluster::start("cookie", 3).await;
    let members = cluster.names();
    cluster.plan_extra(NodeSpec {
        key: "d".to_owned(),
        name: "d".to_owned(),
        cookie: WRONG_COOKIE.to_owned(),
        seeds: Vec::new(),
    });
    cluster.start_node("d").await;
    let logged = watch_refusal(&cluster, &members, "d", "cookie").await;
    eprintln!("[cookie] the refusal was logged {logged:?} after d was ready");

    // Secrets never reach a log.
    for name in cluster.names() {
        let log = cluster.log(&name);
        assert!(!log.contains(COOKIE), "{name} logged the cookie");
        assert!(!log.contains(WRONG_COOKIE), "{name} logged d's cookie");
    }
    still_working(&mut cluster, "guarded").await;
}

#[tokio::test]
async fn a_second_node_with_a_taken_name_is_refused() {
    let mut cluster = Cluster::start("taken-name", 3).await;
    let members = cluster.names();
    let b_before = cluster.cluster_status("b").await;
    // Another process calling itself b, with the right cookie.
    cluster.plan_extra(NodeSpec {
        key: "b-twin".to_owned(),
        name: "b".to_owned(),
        cookie: COOKIE.to_owned(),
        seeds: Vec::new(),
    });
    cluster.start_node("b-twin").await;
    let logged = watch_refusal(&cluster, &members, "b-twin", "names must be unique").await;
    eprintln!("[taken-name] the refusal was logged {logged:?} after the twin was ready");

    // The original b is still the b everyone knows.
    let b_after = cluster.cluster_status("b").await;
    assert_eq!(b_after["incarnation"], b_before["incarnation"]);
    for name in ["a", "c"] {
        let status = cluster.cluster_status(name).await;
        let b = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["name"] == "b"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            b["incarnation"], b_before["incarnation"],
            "{name}: {status}"
        );
        assert_eq!(b["state"], "up", "{name}: {status}");
    }
    still_working(&mut cluster, "named").await;
}
