//! Connection state recovery (Socket.IO 4.6's `pid` and offsets), kept by the
//! client rather than by any node, so that it works on whichever node the client
//! reconnects to.
//!
//! Pure: v1 frames in, Socket.IO packets out; no I/O. One [`Recovery`] per connected
//! namespace, owned by the connection's drain, which is where frames are delivered:
//!
//! - Every CONNECT answer carries a `pid`. Every `message` event carries, as its last
//!   argument, an **offset**: the position the client has reached in each room it is
//!   in, `room=seq,room=seq` (room names as the namespace shows them). socket.io-client
//!   keeps the last offset it received and sends `{pid, offset}` in the `auth` of its
//!   next CONNECT. A join or leave moves the positions without a message, so its ack
//!   is followed by a `joined` / `left` event carrying the new offset.
//! - A CONNECT with `pid` and `offset` ([`Recovery::resuming`]) makes the connection
//!   join each room again with `since` = its position (rooms keep their history in
//!   the cluster's room logs, so any node can do this). The CONNECT answer is held
//!   until every join has answered; then it goes out with the client's own `pid`
//!   (socket.io-client then sets `socket.recovered = true`) if every room gave back
//!   everything after its position (no `gap`, no `more`), else with a new one, and the
//!   missed messages follow it as `message` events. Frames arriving meanwhile wait
//!   behind them, and a live message already replayed is not sent twice.
//!
//! Must not know: sessions, transports.

use super::drain::translated;
use super::translate::{self, Namespace};
use crate::actors::SharedFrame;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Refs of the joins a recovery makes: above every ack id a client can send
/// (`packet` refuses ids past 2^53 - 1), so their replies are never taken for acks.
pub const RECOVERY_REF_BASE: u64 = 1 << 53;

/// Frames held while a recovery's joins are answered; past it the recovery gives up
/// (not recovered) and lets everything through.
const MAX_HELD: usize = 4096;

/// One namespace's recovery state.
#[derive(Debug)]
pub struct Recovery {
    /// `[socketio] recovery`: off, frames go through as they are.
    enabled: bool,
    pid: String,
    /// The position reached in each room, by the name the namespace shows.
    positions: BTreeMap<String, u64>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    client_pid: String,
    /// Joins not answered yet.
    left: usize,
    complete: bool,
    /// The session id, once `welcome` came.
    session: Option<String>,
    welcome: Vec<ByteString>,
    replay: Vec<ByteString>,
    /// Frames that came meanwhile, each frame's packets together (an event and its
    /// attachments), with the room and seq of a message.
    later: Vec<(Option<RoomPosition>, Vec<ByteString>)>,
}

/// A room (as the namespace shows it) and a seq in it.
type RoomPosition = (String, u64);

#[derive(Deserialize)]
struct Position {
    room: String,
    seq: u64,
}

impl Recovery {
    /// Recovery turned off: no `pid`, no offsets.
    pub fn off() -> Self {
        Self {
            enabled: false,
            pid: String::new(),
            positions: BTreeMap::new(),
            pending: None,
        }
    }

    /// A namespace connected afresh: a new `pid`.
    pub fn fresh() -> Self {
        Self {
            enabled: true,
            pid: uuid::Uuid::new_v4().simple().to_string(),
            positions: BTreeMap::new(),
            pending: None,
        }
    }

    /// A namespace connected with the `pid` and offset of an earlier connection: the
    /// CONNECT answer waits for `rooms` joins (refs `RECOVERY_REF_BASE + i`).
    pub fn resuming(client_pid: String, rooms: usize) -> Self {
        Self {
            pending: Some(Pending {
                client_pid,
                left: rooms,
                complete: true,
                session: None,
                welcome: Vec::new(),
                replay: Vec::new(),
                later: Vec::new(),
            }),
            ..Self::fresh()
        }
    }

    /// The rooms and positions an offset names, at most `max_rooms` of them; None
    /// for an offset that is not one of ours.
    pub fn parse_offset(offset: &str, max_rooms: usize) -> Option<Vec<(String, u64)>> {
        if offset.is_empty() {
            return Some(Vec::new());
        }
        let rooms: Option<Vec<(String, u64)>> = offset
            .split(',')
            .map(|entry| {
                let (room, seq) = entry.rsplit_once('=')?;
                Some((room.to_owned(), seq.parse().ok()?))
            })
            .collect();
        rooms.filter(|rooms| rooms.len() <= max_rooms)
    }

    fn offset(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        for (room, seq) in &self.positions {
            if !text.is_empty() {
                text.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(text, "{room}={seq}");
        }
        text
    }

    /// An event packet (ending in `]`) with the offset as its last argument: one
    /// allocation per packet (a message's is made for every member it reaches). An
    /// attachment (`b<base64>`) goes as it is.
    fn with_offset(&self, packet: &str) -> ByteString {
        if packet.starts_with('b') {
            return ByteString::from(packet);
        }
        let body = packet.strip_suffix(']').unwrap_or(packet);
        let offset = self.offset();
        let mut text = String::with_capacity(body.len() + offset.len() + 4);
        text.push_str(body);
        text.push(',');
        if offset.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            text.push('"');
            text.push_str(&offset);
            text.push('"');
        } else {
            text.push_str(&Value::String(offset).to_string());
        }
        text.push(']');
        ByteString::from(text)
    }

    /// The packets for one v1 frame of this namespace, meant for this connection.
    pub fn frame(&mut self, frame: &ByteString, namespace: &Namespace, out: &mut Vec<ByteString>) {
        if !self.enabled {
            return translated(frame, namespace, out);
        }
        match kind_of(frame) {
            "welcome" => self.welcome(frame, namespace, out),
            "reply" => self.reply(frame, namespace, out),
            _ => self.deliver(&Translation::of(frame, namespace), namespace, out),
        }
    }

    /// The packets for a broadcast's frame: its translation is made once, by the first
    /// member to take it, and kept in the frame for the others.
    pub fn shared(
        &mut self,
        frame: &SharedFrame,
        namespace: &Namespace,
        out: &mut Vec<ByteString>,
    ) {
        let translation = frame.translation(|text| Translation::of(text, namespace));
        match translation {
            Some(t) if t.namespace == namespace.name && !t.personal => {
                if self.enabled {
                    self.deliver(t, namespace, out);
                } else {
                    out.extend(t.packets.iter().cloned());
                }
            }
            // Made in another namespace (no room is in two), or a frame that is
            // handled per connection: translated here.
            _ => self.frame(frame.text(), namespace, out),
        }
    }

    fn deliver(&mut self, t: &Translation, namespace: &Namespace, out: &mut Vec<ByteString>) {
        if let Some(pending) = &mut self.pending {
            pending.later.push((t.position.clone(), t.packets.clone()));
            self.give_up_if_full(namespace, out);
            return;
        }
        match &t.position {
            Some((room, seq)) => self.deliver_message(room, *seq, &t.packets, out),
            None => out.extend(t.packets.iter().cloned()),
        }
    }

    fn deliver_message(
        &mut self,
        room: &str,
        seq: u64,
        packets: &[ByteString],
        out: &mut Vec<ByteString>,
    ) {
        match self.positions.get_mut(room) {
            // Replayed already.
            Some(at) if *at >= seq => return,
            Some(at) => *at = seq,
            None => {
                self.positions.insert(room.to_owned(), seq);
            }
        }
        out.extend(packets.iter().map(|packet| self.with_offset(packet)));
    }

    fn welcome(&mut self, frame: &ByteString, namespace: &Namespace, out: &mut Vec<ByteString>) {
        let mut packets = Vec::new();
        translate::server_frame(frame, namespace, &mut packets);
        let session = serde_json::from_str::<Value>(frame)
            .ok()
            .and_then(|v| v.get("session").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        // packets[0] is the CONNECT, made again below with the pid.
        let rest: Vec<ByteString> = packets.into_iter().skip(1).map(ByteString::from).collect();
        match &mut self.pending {
            Some(pending) => {
                pending.session = Some(session);
                pending.welcome = rest;
                if pending.left == 0 {
                    self.finish(namespace, out);
                }
            }
            None => {
                out.push(connect_packet(namespace, &session, &self.pid));
                out.extend(rest);
            }
        }
    }

    fn reply(&mut self, frame: &ByteString, namespace: &Namespace, out: &mut Vec<ByteString>) {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(frame) else {
            return;
        };
        let reference = fields.get("ref").and_then(Value::as_u64);
        let data = fields.get("data");
        if reference.is_some_and(|r| r >= RECOVERY_REF_BASE) {
            return self.recovered_join(fields.get("ok"), data, namespace, out);
        }
        let mut packets = Vec::new();
        translated(frame, namespace, &mut packets);
        let event = match data {
            // A join: the room's position is its seq (its history is in the reply).
            Some(Value::Object(d)) if d.contains_key("members") && d.contains_key("history") => {
                let (Some(room), Some(seq)) = (
                    d.get("room").and_then(Value::as_str),
                    d.get("seq").and_then(Value::as_u64),
                ) else {
                    return out.extend(packets);
                };
                let room = bare(room, namespace).to_owned();
                self.positions.insert(room.clone(), seq);
                Some(("joined", serde_json::json!({"room": room, "seq": seq})))
            }
            Some(Value::Object(d)) if d.len() == 1 && d.contains_key("room") => {
                let room = d.get("room").and_then(Value::as_str).unwrap_or_default();
                let room = bare(room, namespace).to_owned();
                self.positions.remove(&room);
                Some(("left", serde_json::json!({"room": room})))
            }
            _ => None,
        };
        let packets: Vec<ByteString> = match event {
            Some((name, body)) => {
                let json = format!("[{},{body}]", Value::String(name.to_owned()));
                let event = event_packet(namespace, &json);
                packets
                    .into_iter()
                    .chain([self.with_offset(&event)])
                    .collect()
            }
            None => packets,
        };
        match &mut self.pending {
            Some(pending) => pending.later.push((None, packets)),
            None => out.extend(packets),
        }
    }

    fn recovered_join(
        &mut self,
        ok: Option<&Value>,
        data: Option<&Value>,
        namespace: &Namespace,
        out: &mut Vec<ByteString>,
    ) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        pending.left = pending.left.saturating_sub(1);
        let d = data.and_then(Value::as_object);
        let whole = ok == Some(&Value::Bool(true))
            && d.is_some_and(|d| {
                d.get("gap") == Some(&Value::Bool(false))
                    && d.get("more").is_none_or(|m| m == &Value::Bool(false))
            });
        if !whole {
            pending.complete = false;
        }
        if let Some(d) = d {
            let room = d
                .get("room")
                .and_then(Value::as_str)
                .map(|r| bare(r, namespace).to_owned());
            if let Some(room) = room {
                for message in d
                    .get("history")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(seq) = message.get("seq").and_then(Value::as_u64) else {
                        continue;
                    };
                    let mut message = message.clone();
                    if let Some(Value::String(r)) = message.get_mut("room") {
                        *r = room.clone();
                    }
                    let mut packets = Vec::new();
                    translate::message_event(message, namespace, &mut packets);
                    self.positions.insert(room.clone(), seq);
                    let packets: Vec<ByteString> =
                        packets.iter().map(|p| self.with_offset(p)).collect();
                    if let Some(pending) = &mut self.pending {
                        pending.replay.extend(packets);
                    }
                }
                if let Some(seq) = d.get("seq").and_then(Value::as_u64) {
                    let at = self.positions.entry(room).or_insert(seq);
                    *at = (*at).max(seq);
                }
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.left == 0 && p.session.is_some())
        {
            self.finish(namespace, out);
        }
    }

    fn give_up_if_full(&mut self, namespace: &Namespace, out: &mut Vec<ByteString>) {
        if let Some(pending) = &mut self.pending {
            if pending.later.len() > MAX_HELD && pending.session.is_some() {
                pending.complete = false;
                self.finish(namespace, out);
            }
        }
    }

    /// The held CONNECT answer, the replayed messages, then what came meanwhile.
    fn finish(&mut self, namespace: &Namespace, out: &mut Vec<ByteString>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if pending.complete {
            self.pid = pending.client_pid;
        }
        out.push(connect_packet(
            namespace,
            pending.session.as_deref().unwrap_or(""),
            &self.pid,
        ));
        out.extend(pending.welcome);
        out.extend(pending.replay);
        for (position, packets) in pending.later {
            match position {
                Some((room, seq)) => self.deliver_message(&room, seq, &packets, out),
                None => out.extend(packets),
            }
        }
    }
}

/// `40[/ns,]{"sid":...,"pid":...}`.
fn connect_packet(namespace: &Namespace, sid: &str, pid: &str) -> ByteString {
    let json = serde_json::json!({"sid": sid, "pid": pid}).to_string();
    let mut text = String::from("4");
    text.push_str(&super::packet::encode(
        super::packet::PacketType::Connect,
        &namespace.name,
        None,
        &json,
    ));
    ByteString::from(text)
}

fn event_packet(namespace: &Namespace, json: &str) -> String {
    let mut text = String::from("4");
    text.push_str(&super::packet::encode(
        super::packet::PacketType::Event,
        &namespace.name,
        None,
        json,
    ));
    text
}

/// A room's name as the namespace shows it.
fn bare<'a>(room: &'a str, namespace: &Namespace) -> &'a str {
    room.strip_prefix(namespace.prefix.as_str()).unwrap_or(room)
}

/// A v1 frame's `type`.
fn kind_of(frame: &str) -> &str {
    frame
        .strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.split_once('"'))
        .map_or("", |(kind, _)| kind)
}

/// What one v1 frame becomes in one namespace, whatever the connection: its packets,
/// and for a `message`, the room (as the namespace shows it) and seq it moves the
/// offset to. A broadcast's is made once and kept in its [`SharedFrame`].
pub struct Translation {
    /// The namespace it was made in.
    namespace: String,
    /// `welcome` and `reply`: handled per connection (see [`Recovery::frame`]), so
    /// nothing is made.
    personal: bool,
    position: Option<(String, u64)>,
    packets: Vec<ByteString>,
}

impl Translation {
    pub fn of(frame: &str, namespace: &Namespace) -> Self {
        let kind = kind_of(frame);
        let personal = matches!(kind, "welcome" | "reply");
        let position = match kind {
            "message" => serde_json::from_str::<Position>(frame)
                .ok()
                .map(|p| (bare(&p.room, namespace).to_owned(), p.seq)),
            _ => None,
        };
        let mut packets = Vec::new();
        if !personal {
            translated(frame, namespace, &mut packets);
        }
        Self {
            namespace: namespace.name.clone(),
            personal,
            position,
            packets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Namespace {
        Namespace::new("/chat").unwrap()
    }

    fn message(room: &str, seq: u64) -> ByteString {
        format!(
            r#"{{"type":"message","room":"{room}","id":"m{seq}","seq":{seq},"from":{{"id":"a","name":"A"}},"content":"c{seq}","ts":1}}"#
        )
        .into()
    }

    fn run(recovery: &mut Recovery, frames: &[ByteString]) -> Vec<String> {
        let mut out = Vec::new();
        for frame in frames {
            recovery.frame(frame, &chat(), &mut out);
        }
        out.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_broadcast_is_translated_once_and_each_member_gets_its_own_offset() {
        let frame = SharedFrame::new(message("chat:r1", 7));
        let mut ann = Recovery::fresh();
        let mut bob = Recovery::fresh();
        // bob is also in r2, at 3: his offset names both rooms.
        run(&mut bob, &[message("chat:r2", 3)]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ann.shared(&frame, &chat(), &mut a);
        let made = frame.translation(|_| -> Translation { unreachable!("made once") });
        let made = made.expect("a Socket.IO translation") as *const Translation;
        bob.shared(&frame, &chat(), &mut b);
        // bob's came from the frame: the translation is still the one ann's drain made.
        let kept = frame.translation(|_| -> Translation { unreachable!("made once") });
        assert!(std::ptr::eq(kept.unwrap(), made));
        let body = r#"42/chat,["message",{"content":"c7","from":{"id":"a","name":"A"},"id":"m7","room":"r1","seq":7,"ts":1}"#;
        assert_eq!(a, [format!(r#"{body},"r1=7"]"#)]);
        assert_eq!(b, [format!(r#"{body},"r1=7,r2=3"]"#)]);
        // The same frame again is a repeat for both: nothing.
        let mut again = Vec::new();
        ann.shared(&frame, &chat(), &mut again);
        assert!(again.is_empty());
        // A member of another namespace gets its own translation, not /chat's.
        let mut root = Recovery::off();
        let mut r = Vec::new();
        root.shared(&frame, &Namespace::new("/").unwrap(), &mut r);
        assert!(
            r[0].starts_with(r#"42["message",{"room":"chat:r1""#),
            "{r:?}"
        );
        // With recovery off the packets are the frame's own, shared bytes.
        let (mut off_a, mut off_b) = (Vec::new(), Vec::new());
        Recovery::off().shared(&frame, &chat(), &mut off_a);
        Recovery::off().shared(&frame, &chat(), &mut off_b);
        assert_eq!(off_a[0].as_bytes().as_ptr(), off_b[0].as_bytes().as_ptr());
        assert_eq!(off_a[0], body.to_owned() + "]");
    }

    #[test]
    fn offsets_parse_and_bound() {
        assert_eq!(
            Recovery::parse_offset("r1=3,a:b=10", 5),
            Some(vec![("r1".into(), 3), ("a:b".into(), 10)])
        );
        assert_eq!(Recovery::parse_offset("", 5), Some(vec![]));
        assert_eq!(Recovery::parse_offset("r1", 5), None);
        assert_eq!(Recovery::parse_offset("r1=x", 5), None);
        assert_eq!(Recovery::parse_offset("a=1,b=2", 1), None);
    }

    #[test]
    fn messages_carry_the_position_in_every_room() {
        let mut recovery = Recovery::fresh();
        let welcome: ByteString = r#"{"type":"welcome","session":"s1","user":{"id":"a","name":"A"},"node":"n","protocol":1,"heartbeat_ms":1}"#.into();
        let out = run(&mut recovery, &[welcome]);
        assert!(
            out[0].starts_with(r#"40/chat,{"pid":""#) && out[0].ends_with(r#","sid":"s1"}"#),
            "{out:?}"
        );
        let join: ByteString = r#"{"type":"reply","ref":1,"ok":true,"data":{"room":"chat:r2","seq":7,"history":[],"members":[],"gap":false}}"#.into();
        let out = run(&mut recovery, &[join, message("chat:r1", 4)]);
        assert_eq!(out[1], r#"42/chat,["joined",{"room":"r2","seq":7},"r2=7"]"#);
        assert!(out[2].ends_with(r#"},"r1=4,r2=7"]"#), "{}", out[2]);
    }

    #[test]
    fn binary_messages_are_replayed_and_held_with_their_attachments() {
        let mut recovery = Recovery::resuming("old-pid".into(), 1);
        let welcome: ByteString = r#"{"type":"welcome","session":"s2","user":{"id":"a","name":"A"},"node":"n","protocol":1,"heartbeat_ms":1}"#.into();
        // A live binary message comes while the join is out: held, with its part.
        let live: ByteString = r#"{"type":"message","room":"chat:r1","id":"m7","seq":7,"from":{"id":"a","name":"A"},"content":"","data":{"_binary":"Bw=="},"ts":1}"#.into();
        assert!(run(&mut recovery, &[welcome, live]).is_empty());
        let back = format!(
            r#"{{"type":"reply","ref":{RECOVERY_REF_BASE},"ok":true,"data":{{"room":"chat:r1","seq":6,"history":[{{"room":"chat:r1","id":"m6","seq":6,"from":{{"id":"a","name":"A"}},"content":"","data":{{"_binary":"Bg=="}},"ts":1}}],"members":[],"gap":false}}}}"#
        );
        let out = run(&mut recovery, &[back.into()]);
        assert_eq!(out[0], r#"40/chat,{"pid":"old-pid","sid":"s2"}"#);
        assert!(out[1].starts_with(r#"42/chat,["welcome""#));
        // The replayed one: a BINARY_EVENT with the offset, then its part.
        assert!(out[2].starts_with(r#"451-/chat,["message""#), "{}", out[2]);
        assert!(out[2].ends_with(r#","r1=6"]"#), "{}", out[2]);
        assert_eq!(out[3], "bBg==");
        // The held live one, after it, with its part too.
        assert!(out[4].starts_with(r#"451-/chat,["message""#), "{}", out[4]);
        assert!(out[4].ends_with(r#","r1=7"]"#), "{}", out[4]);
        assert_eq!(out[5], "bBw==");
        assert_eq!(out.len(), 6, "{out:?}");
    }

    #[test]
    fn a_recovery_holds_the_connect_until_the_rooms_are_back_and_sends_nothing_twice() {
        let mut recovery = Recovery::resuming("old-pid".into(), 1);
        let welcome: ByteString = r#"{"type":"welcome","session":"s2","user":{"id":"a","name":"A"},"node":"n","protocol":1,"heartbeat_ms":1}"#.into();
        assert!(run(&mut recovery, &[welcome, message("chat:r1", 6)]).is_empty());
        let back = format!(
            r#"{{"type":"reply","ref":{RECOVERY_REF_BASE},"ok":true,"data":{{"room":"chat:r1","seq":6,"history":[{{"room":"chat:r1","id":"m5","seq":5,"from":{{"id":"a","name":"A"}},"content":"c5","ts":1}},{{"room":"chat:r1","id":"m6","seq":6,"from":{{"id":"a","name":"A"}},"content":"c6","ts":1}}],"members":[],"gap":false}}}}"#
        );
        let out = run(&mut recovery, &[back.into()]);
        assert_eq!(
            out[0], r#"40/chat,{"pid":"old-pid","sid":"s2"}"#,
            "recovered: the client's pid"
        );
        assert!(out[1].starts_with(r#"42/chat,["welcome""#));
        assert!(out[2].contains(r#""seq":5"#) && out[2].ends_with(r#","r1=5"]"#));
        assert!(out[3].contains(r#""seq":6"#) && out[3].ends_with(r#","r1=6"]"#));
        assert_eq!(out.len(), 4, "the live seq 6 was replayed already: {out:?}");

        let mut lost = Recovery::resuming("old-pid".into(), 1);
        let welcome: ByteString = r#"{"type":"welcome","session":"s3","user":{"id":"a","name":"A"},"node":"n","protocol":1,"heartbeat_ms":1}"#.into();
        let gap = format!(
            r#"{{"type":"reply","ref":{RECOVERY_REF_BASE},"ok":true,"data":{{"room":"chat:r1","seq":90,"history":[],"members":[],"gap":true}}}}"#
        );
        let out = run(&mut lost, &[welcome, gap.into()]);
        assert!(
            !out[0].contains("old-pid"),
            "a gap: not recovered, a new pid"
        );
    }
}
