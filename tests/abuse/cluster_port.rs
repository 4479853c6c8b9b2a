//! Attack 6: oversized and slow frames on the cluster port before authentication. The
//! node runs with the cluster enabled (a one-node cluster on loopback, a 48-character
//! cookie); raw TCP connections that never authenticate announce frames of almost
//! 16 MiB (ractor_cluster's framing: a big-endian u64 length, then the bytes) and send
//! most of them, or trickle a byte at a time. One the node closes comes back.

use crate::support::{assert_withstood, loopback, tcp_from, AbuseNode, Conversation, Monitor};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Connections sending one huge frame each.
const HUGE_FRAMES: usize = 64;
/// The length they announce: just under the 16 MiB that ractor_cluster allows.
const ANNOUNCED: u64 = 16 * 1024 * 1024 - 1;
/// How much of it they send (then they hold the connection without finishing).
const SENT: usize = 15 * 1024 * 1024;
/// Connections that announce a frame and trickle it.
const TRICKLERS: usize = 100;
/// One byte this often from each trickler.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(15);

/// One attacker: connect, announce, send `sent` bytes in chunks of `chunk` every
/// `every`, hold; again when the node closes, until the attack ends. Connections made.
async fn attacker(
    to: SocketAddr,
    from: u8,
    sent: usize,
    chunk: usize,
    every: Duration,
    ends: Instant,
) -> u64 {
    let mut connections = 0;
    while Instant::now() < ends {
        let Ok(mut stream) = tcp_from(loopback(from), to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        connections += 1;
        let zeros = vec![0u8; chunk];
        let flood = async {
            stream.write_all(&ANNOUNCED.to_be_bytes()).await?;
            let mut written = 0;
            while written < sent {
                let n = chunk.min(sent - written);
                stream.write_all(&zeros[..n]).await?;
                written += n;
                tokio::time::sleep(every).await;
            }
            // Hold it open, half a frame in the node's hands, until the node gives up.
            let mut byte = [0u8; 1];
            loop {
                use tokio::io::AsyncReadExt;
                if stream.read(&mut byte).await? == 0 {
                    return std::io::Result::Ok(());
                }
            }
        };
        let _ = tokio::time::timeout_at(ends.into(), flood).await;
    }
    connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_frames_on_the_cluster_port_before_authentication() {
    let node = AbuseNode::start_clustered("cluster-port").await;
    let cluster = node.cluster.expect("clustered");
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let ends = Instant::now() + ATTACK;
    let mut attackers = Vec::new();
    for i in 0..HUGE_FRAMES {
        attackers.push(tokio::spawn(attacker(
            cluster,
            120 + (i % 10) as u8,
            SENT,
            64 * 1024,
            Duration::from_millis(1),
            ends,
        )));
    }
    for i in 0..TRICKLERS {
        attackers.push(tokio::spawn(attacker(
            cluster,
            130 + (i % 10) as u8,
            usize::MAX,
            1,
            TRICKLE_EVERY,
            ends,
        )));
    }
    let mut connections = 0;
    for attacker in attackers {
        connections += attacker.await.expect("attacker");
    }
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "cluster-port",
        &rss,
        &health,
        &format!(
            "{connections} unauthenticated connections to the cluster port; {}",
            report.summary()
        ),
    );
    report.assert_complete("cluster-port");
}
