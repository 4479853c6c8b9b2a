//! Binary attachments, between Socket.IO's placeholders and protocol v1's JSON.
//!
//! Socket.IO sends an event with binary parts as a BINARY_EVENT whose arguments hold
//! `{"_placeholder":true,"num":N}` where each part was, followed by the parts as binary
//! messages. hubbub keeps a part inside the v1 frame as the object
//! `{"_binary":"<base64>"}` (docs/protocol.md, "Binary data"), so that it is stored
//! in history, replicated and checked against the limits like any other data, and a
//! v1 client reads and sends the same form. Going out to a Socket.IO client, each such
//! object becomes a placeholder again and its bytes a binary message after the event.
//!
//! The binary messages of an outgoing event travel in the drain's packet list as
//! Engine.IO's polling record `b<base64>`: written as they are into a polling
//! payload, and as a binary frame on a WebSocket (`transport::socketio`).
//!
//! Pure: no I/O. Must not know: sessions, transports.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The key of the one-key object that stands for binary data in a v1 frame.
pub const KEY: &str = "_binary";

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Puts each attachment where its placeholder is, as `{"_binary":"<base64>"}`.
/// Errors name what is wrong: a placeholder for a part that did not come.
pub fn fill(value: &mut Value, parts: &[Vec<u8>]) -> Result<(), String> {
    match value {
        Value::Object(fields) if is_placeholder(fields) => {
            let num = fields.get("num").and_then(Value::as_u64);
            let part = num
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| parts.get(n))
                .ok_or_else(|| {
                    format!(
                        "placeholder {} names no attachment (the event has {})",
                        num.map_or("without a number".to_owned(), |n| n.to_string()),
                        parts.len()
                    )
                })?;
            *value = binary_object(BASE64.encode(part));
            Ok(())
        }
        Value::Object(fields) => fields.values_mut().try_for_each(|v| fill(v, parts)),
        Value::Array(items) => items.iter_mut().try_for_each(|v| fill(v, parts)),
        _ => Ok(()),
    }
}

fn is_placeholder(fields: &Map<String, Value>) -> bool {
    fields.get("_placeholder") == Some(&Value::Bool(true)) && fields.len() == 2
}

fn binary_object(base64: String) -> Value {
    Value::Object(Map::from_iter([(KEY.to_owned(), Value::String(base64))]))
}

/// Whether a v1 frame's text may hold binary data (then it is translated through
/// [`extract`]); false for nearly every frame, at the cost of one search.
pub fn may_hold(frame: &str) -> bool {
    frame.contains("\"_binary\":")
}

/// Replaces each `{"_binary":"<base64>"}` (valid base64 only) with a placeholder
/// numbered in order, and appends its `b<base64>` record to `parts`.
pub fn extract(value: &mut Value, parts: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if let Some(record) = as_record(fields) {
                let num = parts.len();
                parts.push(record);
                *value = serde_json::json!({"_placeholder": true, "num": num});
                return;
            }
            fields.values_mut().for_each(|v| extract(v, parts));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| extract(v, parts)),
        _ => {}
    }
}

fn as_record(fields: &Map<String, Value>) -> Option<String> {
    if fields.len() != 1 {
        return None;
    }
    let Some(Value::String(text)) = fields.get(KEY) else {
        return None;
    };
    BASE64.decode(text).ok()?;
    Some(format!("b{text}"))
}

/// The bytes of a `b<base64>` record made by [`extract`]; None for any other text.
pub fn record_bytes(packet: &str) -> Option<Vec<u8>> {
    BASE64.decode(packet.strip_prefix('b')?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_take_their_parts_in_place() {
        let mut args = json!([{
            "room": "r",
            "data": {"file": {"_placeholder": true, "num": 1}, "thumbs": [{"_placeholder": true, "num": 0}]}
        }]);
        fill(&mut args, &[vec![0xff], vec![1, 2, 3]]).unwrap();
        assert_eq!(
            args,
            json!([{
                "room": "r",
                "data": {"file": {"_binary": "AQID"}, "thumbs": [{"_binary": "/w=="}]}
            }])
        );
        let mut missing = json!([{"_placeholder": true, "num": 2}]);
        assert!(fill(&mut missing, &[vec![1]]).is_err());
        let mut unnumbered = json!([{"_placeholder": true, "n": 0}]);
        assert!(fill(&mut unnumbered, &[vec![1]]).is_err());
        // An object that merely has the key, among others, is data.
        let mut data = json!({"_placeholder": true, "num": 0, "label": "x"});
        fill(&mut data, &[]).unwrap();
        assert_eq!(data["label"], "x");
    }

    #[test]
    fn binary_objects_become_placeholders_and_records() {
        let mut fields = json!({
            "data": {"file": {"_binary": "AQID"}, "list": [{"_binary": "/w=="}]},
            "not": {"_binary": "not base64!"},
            "also_not": {"_binary": "AQID", "other": 1}
        });
        let mut parts = Vec::new();
        extract(&mut fields, &mut parts);
        assert_eq!(parts.len(), 2);
        // Numbered in the order serde_json keeps keys (sorted): "data" then its keys.
        assert_eq!(
            fields["data"]["file"],
            json!({"_placeholder": true, "num": 0})
        );
        assert_eq!(
            fields["data"]["list"][0],
            json!({"_placeholder": true, "num": 1})
        );
        assert_eq!(parts, ["bAQID", "b/w=="]);
        assert_eq!(fields["not"], json!({"_binary": "not base64!"}));
        assert_eq!(fields["also_not"]["other"], 1);
        assert_eq!(record_bytes(&parts[0]), Some(vec![1, 2, 3]));
        assert_eq!(record_bytes("42[\"x\"]"), None);
    }

    #[test]
    fn a_round_trip_gives_back_the_bytes() {
        let parts = vec![vec![0u8, 1, 2, 254, 255], Vec::new()];
        let mut args =
            json!([{"a": {"_placeholder": true, "num": 0}, "b": {"_placeholder": true, "num": 1}}]);
        fill(&mut args, &parts).unwrap();
        assert!(may_hold(&args.to_string()));
        let mut records = Vec::new();
        extract(&mut args, &mut records);
        let back: Vec<Vec<u8>> = records.iter().map(|r| record_bytes(r).unwrap()).collect();
        assert_eq!(back, parts);
        assert!(!may_hold(&args.to_string()));
    }
}
