//! The server API from a node of a three-node cluster where the members are not:
//! real `hubbub` processes, calls on node `c`, members on `a` and `b`.

use crate::cluster_support::{find_room, owner_of, Client, Cluster};
use crate::http::{Answer, Api};
use crate::hubbub_node::toml_list;
use crate::support::eventually;
use crate::{KEY, OTHER_KEY};
use serde_json::{json, Value};

/// Calls `path` until it is not refused as unavailable (a shard electing, a node
/// still catching up), then expects 200.
async fn ok_retry(api: &Api, path: &str, body: Value) -> Value {
    let mut last: Option<Answer> = None;
    for _ in 0..100 {
        let answer = api.post(path, &body).await;
        if answer.status == 200 {
            return answer.json();
        }
        if answer.status != 503 {
            panic!("{path} {body}: {answer:?}");
        }
        last = Some(answer);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} {body} stayed unavailable: {last:?}");
}

#[tokio::test]
async fn cluster_every_call_works_from_a_node_without_the_members() {
    let mut cluster = Cluster::plan("api", 3).await;
    let all = ["a", "b", "c"];
    for name in all {
        cluster
            .config(name)
            .set("api", "keys", toml_list(&[KEY, OTHER_KEY]))
            .set("api", "requests_per_second", 0);
    }
    for name in all {
        cluster.start_node(name).await;
    }
    let names = cluster.names();
    cluster.wait_converged(&names).await;
    // A room ordered by another node than the one called: the publish is forwarded.
    let room = find_room("api-room", |room| owner_of(room, &all) != "c");
    let api = Api::new(cluster.http_addr("c"), KEY);

    let mut alice: Client = cluster.connect("a", "alice").await;
    let mut bob: Client = cluster.connect("b", "bob").await;
    alice.join_retry(&room).await;
    bob.join_retry(&room).await;

    // Presence on c, which has no member of the room, sees both (once the
    // tracker has told it).
    let presence = eventually("c sees both members", || async {
        let answer = api.post("/api/presence", &json!({"room": room})).await;
        (answer.status == 200 && answer.json()["count"] == 2).then(|| answer.json())
    })
    .await;
    let ids: Vec<&str> = presence["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    let count = api.ok("/api/presence_count", json!({"room": room})).await;
    assert_eq!(
        (count["count"].clone(), count["connections"].clone()),
        (json!(2), json!(2))
    );
    let rooms = api.ok("/api/rooms", json!({})).await;
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .contains(&json!({"room": room, "members": 2, "connections": 2})),
        "{rooms}"
    );

    // Publish from c: one order, the same frame for members on a and on b.
    let published = ok_retry(
        &api,
        "/api/publish",
        json!({"room": room, "content": "from the backend", "idempotency_key": "once"}),
    )
    .await;
    let on_a = alice
        .expect(
            |f| f["type"] == "message" && f["content"] == "from the backend",
            "on a",
        )
        .await;
    let on_b = bob
        .expect(
            |f| f["type"] == "message" && f["content"] == "from the backend",
            "on b",
        )
        .await;
    assert_eq!(on_a, on_b);
    assert_eq!(
        (on_a["seq"].clone(), on_a["id"].clone()),
        (published["seq"].clone(), published["id"].clone())
    );
    assert_eq!(on_a["from"]["id"], "system");
    // Idempotent across nodes: the same key from a gives the same message.
    let again = ok_retry(
        &Api::new(cluster.http_addr("a"), OTHER_KEY),
        "/api/publish",
        json!({"room": room, "content": "from the backend", "idempotency_key": "once"}),
    )
    .await;
    assert_eq!(
        (again["id"].clone(), again["duplicate"].clone()),
        (published["id"].clone(), json!(true))
    );
    // Stored: c's copy of the log has it.
    let history = eventually("c's history has the message", || async {
        let answer = api.post("/api/history", &json!({"room": room})).await;
        let json = answer.json();
        json["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == published["id"]))
            .then_some(json)
    })
    .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );

    // Direct from c to a user on a.
    let sent = api
        .ok("/api/direct", json!({"to": "alice", "content": "just you"}))
        .await;
    assert_eq!(sent["delivered"], 1, "{sent}");
    let direct = alice.expect_type("direct").await;
    assert_eq!(direct["content"], "just you");
    api.refused(
        "/api/direct",
        json!({"to": "nobody", "content": "x"}),
        404,
        "user_offline",
    )
    .await;

    // One user's connections, from c.
    let user = api.ok("/api/user", json!({"user_id": "bob"})).await;
    assert_eq!(user["connections"].as_array().unwrap().len(), 1, "{user}");
    assert_eq!(user["connections"][0]["node"], "b");
    assert_eq!(user["connections"][0]["rooms"], json!([room]));

    // Subscribe bob (on b) to a second room from c, then take him out again.
    let side = format!("{room}-side");
    let joined = ok_retry(
        &api,
        "/api/subscribe",
        json!({"user_id": "bob", "room": side}),
    )
    .await;
    assert_eq!(joined["connections"], 1, "{joined}");
    assert_eq!(bob.expect_type("subscribed").await["room"], side.as_str());
    let user = api.ok("/api/user", json!({"user_id": "bob"})).await;
    let mut rooms = vec![room.clone(), side.clone()];
    rooms.sort();
    assert_eq!(user["connections"][0]["rooms"], json!(rooms));
    api.ok("/api/unsubscribe", json!({"user_id": "bob", "room": side}))
        .await;
    assert_eq!(bob.expect_type("unsubscribed").await["room"], side.as_str());

    // Disconnect alice (on a) from c.
    let answer = api
        .ok(
            "/api/disconnect",
            json!({"user_id": "alice", "reason": "bye"}),
        )
        .await;
    assert_eq!(answer["disconnected"], 1, "{answer}");
    assert_eq!(alice.expect_close().await, Some(4010));
    bob.expect(
        |f| f["type"] == "presence_diff" && f["leaves"][0]["id"] == "alice",
        "alice leaving",
    )
    .await;
}
