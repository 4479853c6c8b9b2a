//! Attack 11: plain HTTP connections that never finish their request head. From
//! [`ADDRESSES`] addresses (no per-address limit applies before a request is read),
//! [`PER_ADDRESS`] connections each send the start of a request with a header of
//! [`PAD`] bytes, and stall. actix-http would read a head up to 128 KiB; the node reads
//! 16 KiB and answers 431 (vendor/actix-http). Before that bound, 5,000 connections
//! sending 120,000-byte heads at once took a node to a 626 MiB peak within its 5 s
//! request timeout (a throwaway script, 2026-12-07). This attack is paced and smaller,
//! so that it measures what the node holds rather than how it weathers a flood; the
//! 431s show the bound (without it these heads would wait for the timeout, 408).
//! docs/operations.md, "Memory under abuse".

use crate::support::{
    assert_withstood, loopback, paced, tcp_from, AbuseNode, Conversation, Monitor,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Source addresses.
const ADDRESSES: u8 = 50;
/// Connections from each.
const PER_ADDRESS: usize = 60;
/// The header's bytes: past the 16 KiB a head may take, and under the 128 KiB
/// actix-http allows (where a head still coming would get 408 after 5 s, not 431).
const PAD: usize = 40_000;
/// Between two connections from one address.
const PACE: Duration = Duration::from_millis(50);
/// How long the attack holds its connections (within the node's 5 s request
/// timeout, which would close them anyway).
const ATTACK: Duration = Duration::from_secs(4);

/// What became of one connection: the status of the node's answer, or None if it
/// closed without one (or could not be opened, or gave nothing in time).
async fn stall(node: std::net::SocketAddr, a: u8) -> Result<Option<u16>, String> {
    let mut tcp = tcp_from(loopback(150 + a), node)
        .await
        .map_err(|e| e.to_string())?;
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', PAD));
    // The node may close while this is still being written.
    let _ = tcp.write_all(&head).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(ATTACK, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    Ok(String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_request_head() {
    let node = AbuseNode::start("http-heads").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    // Paced: 1,000 heads a second, 40 MB/s: a test of what is held, not a flood.
    let addr = node.http;
    let attacks = paced(ADDRESSES, PER_ADDRESS, PACE, |a, _| stall(addr, a)).await;
    let mut answered_431 = 0;
    let mut other = Vec::new();
    for attack in attacks {
        match attack {
            Ok(Ok(Some(431))) => answered_431 += 1,
            Ok(result) => other.push(format!("{result:?}")),
            Err(e) => other.push(e.to_string()),
        }
    }
    let took = monitor.elapsed();
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    let wanted = usize::from(ADDRESSES) * PER_ADDRESS;
    assert_withstood(
        "unfinished request heads",
        &rss,
        &health,
        &format!(
            "{wanted} connections sent {PAD}-byte heads over {took:?}: {answered_431} \
             answered 431, {} otherwise ({:?}); {}",
            other.len(),
            &other[..other.len().min(3)],
            report.summary()
        ),
    );
    report.assert_complete("unfinished request heads");
    // The attack was made and refused: (nearly) every connection got its 431.
    assert!(
        answered_431 * 10 >= wanted * 9,
        "only {answered_431} of {wanted} heads answered 431: {:?}",
        &other[..other.len().min(5)]
    );
}
