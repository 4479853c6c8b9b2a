//! Start order does not matter: nodes started in reverse order form the cluster, and a
//! node that joins late gets the rooms' history and chats with the rest.

use crate::support::{find_room, is_message, owner_of, Cluster, DEADLINE};
use serde_json::Value;
use std::time::Instant;

#[tokio::test]
async fn nodes_started_in_reverse_order_converge() {
    let mut cluster = Cluster::plan("reverse", 3).await;
    for name in ["c", "b", "a"] {
        cluster.start_node(name).await;
    }
    let took = cluster.wait_converged(&cluster.names()).await;
    eprintln!("[reverse] converged {took:?} after a, the last, started");

    // And it works as a cluster: a message from a reaches c.
    let mut on_c = cluster.connect("c", "carol").await;
    on_c.join_retry("hall").await;
    let mut on_a = cluster.connect("a", "alice").await;
    on_a.join_retry("hall").await;
    let ack = on_a.publish_retry("hall", "hello from a").await;
    let got = on_c
        .expect(|f| is_message(f, "hall"), "a's message, on c")
        .await;
    assert_eq!(got["content"], "hello from a");
    assert_eq!(got["seq"], ack["seq"]);
}

#[tokio::test]
async fn a_late_node_converges_and_gets_the_full_history() {
    let mut cluster = Cluster::plan("late", 3).await;
    let all = ["a", "b", "c"];
    // One room that moves to c when it arrives, one that stays where it is.
    let moving = find_room("moving", |room| owner_of(room, &all) == "c");
    let staying = find_room("staying", |room| owner_of(room, &all) != "c");
    let rooms = [moving.as_str(), staying.as_str()];

    cluster.start_node("a").await;
    cluster.start_node("b").await;
    let two = ["a".to_owned(), "b".to_owned()];
    cluster.wait_converged(&two).await;

    let mut alice = cluster.connect("a", "alice").await;
    let mut bob = cluster.connect("b", "bob").await;
    for room in rooms {
        alice.join_retry(room).await;
        bob.join_retry(room).await;
    }
    for k in 0..5 {
        for room in rooms {
            alice.publish_retry(room, &format!("alice {k}")).await;
            bob.publish_retry(room, &format!("bob {k}")).await;
        }
    }
    // An ack says the message is committed and applied on the publisher's node; a
    // reads its own copy, which may apply bob's last one a heartbeat later.
    let mut before = Vec::new();
    for room in rooms {
        let started = Instant::now();
        let history = loop {
            let history = alice.full_history(room).await;
            if history.len() >= 10 || started.elapsed() > DEADLINE {
                break history;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(history.len(), 10, "{room} before c arrives");
        before.push(history);
    }

    let started = Instant::now();
    cluster.start_node("c").await;
    let took = cluster.wait_converged(&cluster.names()).await;
    eprintln!(
        "[late] c converged with a and b {:?} after it was started ({took:?} after it was ready)",
        started.elapsed()
    );

    // A client on c gets each room's whole history: with its join, up to the reply's
    // seq (c's copy of the log may still be catching up), then the rest live, in order.
    let mut carol = cluster.connect("c", "carol").await;
    for (room, history) in rooms.iter().zip(&before) {
        let joined = carol.join_retry(room).await;
        assert_eq!(joined["gap"], false);
        let mut got: Vec<Value> = joined["history"].as_array().cloned().unwrap_or_default();
        let mut seq = joined["seq"].as_u64().expect("a seq");
        assert_eq!(got.len() as u64, seq, "{room}: {joined}");
        while seq < 10 {
            let live = carol
                .expect(|f| is_message(f, room), "the rest of the history, live")
                .await;
            seq += 1;
            assert_eq!(live["seq"].as_u64(), Some(seq), "{room}: {live}");
            let mut message = live.clone();
            if let Some(m) = message.as_object_mut() {
                m.remove("type");
            }
            got.push(message);
        }
        assert_eq!(&got, history, "{room}: c has the whole history");
    }

    // c chats with the others, in both rooms; a and b kept their memberships.
    for room in rooms {
        let from_c = carol.publish_retry(room, "carol here").await;
        assert_eq!(from_c["seq"], 11, "{room}: seq continues on c");
        for client in [&mut alice, &mut bob] {
            let got = client
                .expect(
                    |f| is_message(f, room) && f["content"] == "carol here",
                    "carol's message",
                )
                .await;
            assert_eq!(got["seq"], 11);
        }
        let from_a = alice.publish_retry(room, "welcome carol").await;
        let got = carol
            .expect(
                |f| is_message(f, room) && f["content"] == "welcome carol",
                "alice's message, on c",
            )
            .await;
        assert_eq!(got["seq"], from_a["seq"]);
        assert_eq!(got["seq"], 12, "{room}");
    }
}

#[tokio::test]
async fn a_node_seeded_with_one_peer_meets_them_all() {
    // Four configured nodes; d comes last and knows only a: gossip must introduce it
    // to b and c (and them to it).
    let mut cluster = Cluster::plan("one-seed", 4).await;
    let a = cluster.bind_addr("a");
    cluster.config("d").seeds(&[a]);
    let three: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
    for name in &three {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&three).await;
    let started = Instant::now();
    cluster.start_node("d").await;
    cluster.wait_converged(&cluster.names()).await;
    eprintln!(
        "[one-seed] d, seeded with a only, converged with a, b and c {:?} after its start",
        started.elapsed()
    );
    let status = cluster.cluster_status("d").await;
    for peer in ["a", "b", "c"] {
        let entry = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["name"] == peer))
            .cloned()
            .unwrap_or_default();
        assert_eq!(entry["state"], "up", "d's view of {peer}: {status}");
        assert_eq!(entry["addr"], cluster.bind_addr(peer).to_string());
    }

    let mut on_d = cluster.connect("d", "dora").await;
    let mut on_b = cluster.connect("b", "bob").await;
    on_d.join_retry("mesh").await;
    on_b.join_retry("mesh").await;
    let ack = on_d.publish_retry("mesh", "found you").await;
    let got = on_b
        .expect(|f| is_message(f, "mesh"), "dora's message, on b")
        .await;
    assert_eq!(got["seq"], ack["seq"]);
}
