//! The JSON line format: one flat JSON object per event.
//!
//! Every line starts with `timestamp` (RFC 3339, UTC), `level`, `node` (this node's
//! name, on every line whatever logged it: our code, ractor, ractor_cluster, actix
//! through the `log` bridge) and `target`, then `message` and the event's own fields,
//! then the fields of the spans the event happened in (innermost first; an event's own
//! field wins over a span's of the same name). Flat, so that a log shipper can filter
//! on `room` without knowing which span carried it.
//!
//! The node name is fixed when logging starts: one process runs one node. (Tests that
//! run several nodes in one process log through whichever node installed the
//! subscriber; their lines carry that name.)

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every line has, in this order; an event or span field of the same name is
/// dropped rather than written twice.
const FIXED_KEYS: [&str; 4] = ["timestamp", "level", "node", "target"];

/// The name of the span ractor runs each actor in.
const RACTOR_ACTOR_SPAN: &str = "Actor";

/// Formats events as JSON lines carrying the node's name.
pub struct JsonLines {
    node: String,
}

impl JsonLines {
    /// A formatter for the node called `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = fields.log_target.take();

        let mut line = Line::default();
        line.push("timestamp", Value::String(timestamp));
        line.push("level", Value::String(meta.level().as_str().to_owned()));
        line.push("node", Value::String(self.node.clone()));
        line.push(
            "target",
            Value::String(target.unwrap_or_else(|| meta.target().to_owned())),
        );
        for (key, value) in fields.entries {
            line.push_field(key, value);
        }
        if let Some(scope) = ctx.event_scope() {
            // ractor runs each actor in a span "Actor" (its `id`), and by default runs
            // a handler in the span of whoever sent the message: a Room handling a
            // Session's publish would show the Session's id. Left out, rather than
            // name the wrong actor.
            for span in scope.filter(|span| span.name() != RACTOR_ACTOR_SPAN) {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                // Span fields are stored as a JSON object by `JsonFields`.
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted) else {
                    continue;
                };
                for (key, value) in map {
                    line.push_field(key, value);
                }
            }
        }
        writeln!(writer, "{}", line.into_json())
    }
}

/// A line being built: the fixed keys, then the rest in the order first seen.
#[derive(Default)]
struct Line {
    fixed: Vec<(&'static str, Value)>,
    map: Map<String, Value>,
    order: Vec<String>,
}

impl Line {
    fn push(&mut self, key: &'static str, value: Value) {
        self.fixed.push((key, value));
    }

    fn push_field(&mut self, key: String, value: Value) {
        if FIXED_KEYS.contains(&key.as_str()) || self.map.contains_key(&key) {
            return;
        }
        self.order.push(key.clone());
        self.map.insert(key, value);
    }

    /// The object with the fixed keys first and the others in the order they were
    /// seen (serde_json's own map would sort them).
    fn into_json(mut self) -> String {
        let mut out = String::with_capacity(256);
        out.push('{');
        let mut first = true;
        let mut entry = |key: &str, value: &Value| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&Value::String(key.to_owned()).to_string());
            out.push(':');
            out.push_str(&value.to_string());
        };
        for (key, value) in &self.fixed {
            entry(key, value);
        }
        for key in &self.order {
            if let Some(value) = self.map.remove(key) {
                entry(key, &value);
            }
        }
        out.push('}');
        out
    }
}

/// Collects an event's fields; the `log` bridge's metadata fields are folded in.
#[derive(Default)]
struct Fields {
    entries: Vec<(String, Value)>,
    /// The target of a record that came through the `log` crate.
    log_target: Option<String>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match name {
            "log.target" => {
                if let Value::String(target) = value {
                    self.log_target = Some(target);
                }
            }
            // Where a `log` record was made; tracing's own events do not say either.
            "log.module_path" | "log.file" | "log.line" => {}
            _ => self.entries.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.add(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines_of(log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::new("node-a"))
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_line_has_the_fixed_keys_first_then_fields_then_span_fields() {
        let lines = lines_of(|| {
            let span = tracing::debug_span!("room", room = "lobby", session = "outer");
            let _in = span.enter();
            tracing::info!(session = "s1", count = 3, ok = true, "said \"hi\"");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        let keys: Vec<&str> = line
            .split(",\"")
            .map(|part| part.trim_start_matches("{\"").split('"').next().unwrap())
            .collect();
        assert_eq!(
            &keys[..8],
            [
                "timestamp",
                "level",
                "node",
                "target",
                "message",
                "session",
                "count",
                "ok"
            ],
            "{line}"
        );
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["node"], "node-a");
        assert_eq!(value["message"], "said \"hi\"");
        assert_eq!(value["session"], "s1", "the event's own field wins");
        assert_eq!(value["room"], "lobby");
        assert_eq!(value["count"], 3);
        assert!(value["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_fields_of_ractors_actor_span_are_left_out() {
        let lines = lines_of(|| {
            let actor = tracing::info_span!("Actor", id = "0.7");
            let _in_actor = actor.enter();
            let room = tracing::debug_span!("room", room = "lobby");
            let _in_room = room.enter();
            tracing::info!("inside");
        });
        let value: Value = serde_json::from_str(&lines[0]).unwrap();
        assert!(value.get("id").is_none(), "{}", lines[0]);
        assert_eq!(value["room"], "lobby");
    }

    #[test]
    fn a_field_named_like_a_fixed_key_does_not_repeat_it() {
        let lines = lines_of(|| tracing::warn!(node = "other", "hello"));
        let value: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["node"], "node-a");
        assert_eq!(lines[0].matches("\"node\"").count(), 1, "{}", lines[0]);
    }
}
