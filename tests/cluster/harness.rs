//! The harness itself: processes start from their generated configs, and signals reach
//! them. Needs no cluster behaviour, so a failure here is the harness's, not the
//! node's.

use crate::support::{try_http, Cluster};

#[tokio::test]
async fn harness_starts_processes_and_signals_reach_them() {
    let mut cluster = Cluster::plan("harness", 3).await;
    for name in cluster.names() {
        cluster.start_node(&name).await;
    }
    // A node takes clients once it can order messages: with a majority up.
    cluster.wait_converged(&cluster.names()).await;
    for name in cluster.names() {
        let client = cluster.connect(&name, &format!("user-{name}")).await;
        assert_eq!(client.user_id(), format!("user-{name}"));
        client.close().await;
    }

    // A stopped process accepts TCP connections but answers nothing (from the moment
    // the signal has taken effect: `kill` returns once it is sent).
    cluster.sigstop("b");
    let stopped = std::time::Instant::now();
    while let Some(answer) = try_http(cluster.http_addr("b"), "/healthz").await {
        assert!(
            stopped.elapsed() < crate::support::DEADLINE,
            "b still answers after SIGSTOP: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cluster.sigcont("b");
    let (status, _) = cluster.http("b", "/healthz").await;
    assert_eq!(status, 200);
    assert!(cluster.is_running("b"));

    cluster.kill9("c");
    assert!(!cluster.is_running("c"));
    assert_eq!(try_http(cluster.http_addr("c"), "/healthz").await, None);
    cluster.restart("c").await;
    assert!(cluster.is_running("c"));
    assert!(cluster.log("c").contains("harness: start #2 of node c"));

    // Still answering after all that.
    for name in cluster.names() {
        let (status, _) = cluster.http(&name, "/healthz").await;
        assert_eq!(status, 200, "node {name}");
    }
}
