//! A publish's structured `data` (protocol v1 addition): any JSON value, kept as its
//! compact JSON text.
//!
//! Owns [`MessageData`]: how `data` is read from a frame, how its size is counted
//! against the content bounds, and how it is written back into frames exactly as the
//! value it was. It is kept as text, not as a `serde_json::Value`, because the room
//! logs store messages in postcard, which cannot carry a self-describing value; the
//! text is also what a frame's size is counted in. Knows nothing of limits' values:
//! the session and the server API check [`MessageData::len`] against them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

/// Structured data attached to a message: a JSON value (never `null`: a `null` or
/// absent `data` is no data), held as its compact JSON text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageData(Arc<str>);

impl MessageData {
    /// The data of a frame's `data` field; None for `null`.
    pub fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => None,
            // Writing a Value cannot fail (its keys are strings).
            value => Some(Self(Arc::from(value.to_string()))),
        }
    }

    /// Data from JSON text, which must be one JSON value (any spacing; it is kept
    /// compacted). None for `null`; an error for text that is not JSON.
    pub fn from_json_text(text: &str) -> Result<Option<Self>, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        Ok(Self::from_value(&value))
    }

    /// The compact JSON text, as stored and as written into frames.
    pub fn as_json_text(&self) -> &str {
        &self.0
    }

    /// Bytes of the compact JSON text: what `data` counts against the content bound.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value, parsed again (for behaviours and tests; frames use the text).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl std::fmt::Debug for MessageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageData({})", self.0)
    }
}

impl Serialize for MessageData {
    /// Writes the value itself (not a string holding it) into JSON.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MessageData {
    /// Reads any JSON value (from text or from a `Value` alike). A `null` here is
    /// refused: an optional field maps `null` to None before this is called.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(&value).ok_or_else(|| serde::de::Error::custom("data is null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn written_back_as_the_value_it_was() {
        let value = json!({"kind": "poll", "options": ["a", "b"], "n": 2.5, "ok": true});
        let data = MessageData::from_value(&value).expect("not null");
        assert_eq!(serde_json::to_value(&data).unwrap(), value);
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            data.as_json_text(),
            "written as the stored text, not as a string"
        );
        let back: MessageData = serde_json::from_str(data.as_json_text()).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn counted_in_compact_bytes_and_null_is_none() {
        let data = MessageData::from_json_text("[ 1 ,  2 ]").unwrap().unwrap();
        assert_eq!(data.as_json_text(), "[1,2]");
        assert_eq!(data.len(), 5);
        assert_eq!(MessageData::from_value(&Value::Null), None);
        assert_eq!(MessageData::from_json_text("null").unwrap(), None);
        assert!(MessageData::from_json_text("{").is_err());
        let scalar = MessageData::from_value(&json!("é")).unwrap();
        assert_eq!(scalar.to_value(), json!("é"));
    }
}
