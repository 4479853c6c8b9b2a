//! Attack 5: a direct-message flood at one victim from many throwaway anonymous ids.
//! The default message rate is per user (a burst of 10, then 50 a minute), so each
//! sender connects as a new id, sends its burst of [`BURST`] large direct messages to
//! the victim, reads the replies, and comes back as another id. The victim is the
//! reader of the well-behaved conversation: it must stay connected and keep
//! receiving its room's messages.

use crate::support::{assert_withstood, loopback, AbuseNode, Conversation, Monitor, RawWs};
use serde_json::json;
use std::time::{Duration, Instant};

/// Source addresses the senders use (each may start 20 handshakes a second).
const ADDRESSES: u8 = 10;
/// Senders per address, each connecting as one new id after another.
const SENDERS_PER_ADDRESS: usize = 4;
/// Direct messages per id: the default `rate_limit.burst`.
const BURST: usize = 10;
/// Characters per direct message: `"` escapes to two bytes in JSON.
const CONTENT_CHARS: usize = 2_000;
/// How long the flood lasts.
const ATTACK: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_flood_at_one_victim() {
    let node = AbuseNode::start("direct-flood").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let victim = conversation.reader_id().to_owned();
    let ends = Instant::now() + ATTACK;
    let mut senders = Vec::new();
    for a in 0..ADDRESSES {
        for s in 0..SENDERS_PER_ADDRESS {
            let addr = node.http;
            let victim = victim.clone();
            senders.push(tokio::spawn(async move {
                let frame =
                    json!({"type": "direct", "to": victim, "content": "\"".repeat(CONTENT_CHARS)});
                let frame = frame.to_string();
                let (mut ids, mut delivered) = (0u64, 0u64);
                while Instant::now() < ends {
                    let query = format!("user=spam-{a}-{s}-{ids}");
                    let Ok(mut ws) = RawWs::dial_until(addr, loopback(80 + a), &query, ends).await
                    else {
                        break;
                    };
                    ids += 1;
                    let burst = async {
                        for _ in 0..BURST {
                            ws.send(&frame).await?;
                        }
                        let mut ok = 0;
                        for _ in 0..BURST {
                            let reply = ws.next_answer().await?;
                            if reply.is_some_and(|r| r["ok"] == true) {
                                ok += 1;
                            }
                        }
                        std::io::Result::Ok(ok)
                    };
                    if let Ok(Ok(ok)) = tokio::time::timeout_at(ends.into(), burst).await {
                        delivered += ok;
                    }
                }
                (ids, delivered)
            }));
        }
    }
    let (mut ids, mut accepted) = (0, 0);
    for sender in senders {
        let (i, d) = sender.await.expect("sender");
        ids += i;
        accepted += d;
    }
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "direct-flood",
        &rss,
        &health,
        &format!(
            "{ids} throwaway ids, {accepted} direct messages accepted, {} reached the victim; {}",
            report.directs,
            report.summary()
        ),
    );
    report.assert_complete("direct-flood");
}
