//! Room behaviours chosen by pattern: the shipped examples, the join/leave hooks, and
//! what happens when a behaviour panics (the room fails; the node carries on).

use crate::support::{test_settings, TestNode};
use hubbub::behaviour::{AnnounceOnly, WordFilter};
use hubbub::protocol::{Member, RoomName, UserInfo};
use hubbub::{Behaviours, Rejection, RoomBehaviour};
use serde_json::json;
use std::sync::{Arc, Mutex};

async fn node_with(behaviours: Behaviours) -> TestNode {
    TestNode::start_with(test_settings(), behaviours).await
}

#[tokio::test]
async fn announce_rooms_let_only_announcers_publish() {
    let behaviours = Behaviours::new()
        .with("news:*", AnnounceOnly::new(["editor"]))
        .unwrap();
    let node = node_with(behaviours).await;
    let mut editor = node.connect("editor", "Editor").await;
    let mut reader = node.connect("reader", "Reader").await;
    editor.join("news:today").await;
    reader.join("news:today").await;

    editor.publish("news:today", "extra, extra").await;
    assert_eq!(
        reader.expect_type("message").await["content"],
        "extra, extra"
    );

    let reply = reader
        .request(json!({"type": "publish", "room": "news:today", "content": "me too"}))
        .await;
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "forbidden");
    // Other rooms are plain chat.
    reader.join("lobby").await;
    reader.publish("lobby", "fine here").await;
    // The refused publish took no sequence number.
    let data = reader
        .ok(json!({"type": "history", "room": "news:today"}))
        .await;
    assert_eq!(data["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_word_filter_transforms_content_before_it_is_stored() {
    let behaviours = Behaviours::new()
        .with("kids:*", WordFilter::new(["darn"]))
        .unwrap();
    let node = node_with(behaviours).await;
    let mut a = node.connect("a", "A").await;
    a.join("kids:club").await;
    a.publish("kids:club", "oh DARN it").await;
    assert_eq!(a.expect_type("message").await["content"], "oh **** it");
    let data = a.ok(json!({"type": "history", "room": "kids:club"})).await;
    assert_eq!(data["messages"][0]["content"], "oh **** it");
}

/// Records hook calls, refuses joins from `banned`, and panics on "boom".
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl RoomBehaviour for Recorder {
    fn authorize_join(&self, room: &RoomName, user: &UserInfo) -> Result<(), Rejection> {
        if user.id == "banned" {
            return Err(Rejection::forbidden(format!("not welcome in {room}")));
        }
        Ok(())
    }

    fn on_publish(&self, _: &RoomName, _: &UserInfo, content: String) -> Result<String, Rejection> {
        if content == "boom" {
            panic!("a behaviour bug");
        }
        Ok(content)
    }

    fn on_join(&self, room: &RoomName, member: &Member) {
        self.events
            .lock()
            .unwrap()
            .push(format!("join {room} {}", member.id));
    }

    fn on_leave(&self, room: &RoomName, member: &Member) {
        self.events
            .lock()
            .unwrap()
            .push(format!("leave {room} {}", member.id));
    }
}

#[tokio::test]
async fn hooks_see_members_join_and_leave_and_can_refuse_a_join() {
    let recorder = Arc::new(Recorder::default());
    let node = node_with(Behaviours::new().with("*", recorder.clone()).unwrap()).await;
    let mut a = node.connect("a", "A").await;
    let mut a2 = node.connect("a", "A").await;
    a.join("r").await;
    a2.join("r").await;
    let mut banned = node.connect("banned", "B").await;
    let reply = banned.request(json!({"type": "join", "room": "r"})).await;
    assert_eq!(reply["error"]["code"], "forbidden");
    a.ok(json!({"type": "leave", "room": "r"})).await;
    a2.vanish();
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    while recorder.events.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no leave hook");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        *recorder.events.lock().unwrap(),
        vec!["join r a", "leave r a"]
    );
}

#[tokio::test]
async fn a_panicking_behaviour_fails_its_room_not_the_node() {
    let recorder = Arc::new(Recorder::default());
    let node = node_with(Behaviours::new().with("fragile", recorder).unwrap()).await;
    let mut a = node.connect("a", "A").await;
    let mut b = node.connect("b", "B").await;
    a.join("fragile").await;
    b.join("fragile").await;
    b.join("lobby").await;
    a.publish("fragile", "before").await;

    let reply = a
        .request(json!({"type": "publish", "room": "fragile", "content": "boom"}))
        .await;
    assert_eq!(reply["error"]["code"], "internal");
    // Another member holding the failed room gets `internal` once, then may rejoin.
    let reply = b
        .request(json!({"type": "history", "room": "fragile"}))
        .await;
    assert_eq!(reply["error"]["code"], "internal");
    let reply = b
        .request(json!({"type": "history", "room": "fragile"}))
        .await;
    assert_eq!(reply["error"]["code"], "not_joined");
    // The failed room is dropped by the session; joining again starts it afresh from
    // the room's log, which the panic did not touch.
    let data = a.join("fragile").await;
    assert_eq!(data["seq"], 1, "{data}");
    assert_eq!(data["history"][0]["content"], "before", "{data}");
    let ack = a.publish("fragile", "after").await;
    assert_eq!(ack["seq"], 2);
    // Other rooms and other clients were never affected.
    b.publish("lobby", "still here").await;
    assert_eq!(
        b.expect(
            |f| f["type"] == "message" && f["room"] == "lobby",
            "lobby message"
        )
        .await["content"],
        "still here"
    );
}
