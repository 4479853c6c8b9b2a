//! What a Socket.IO transport writes for the items it took from a connection's
//! outbox: Engine.IO packets, v1 frames translated on the way (`translate`), and
//! where the connection ends.
//!
//! **Encoding once.** A broadcast reaches every member's outbox as the same shared
//! bytes; translating it per member would parse and re-encode it once per Socket.IO
//! member. [`Drain`] keeps the last frame it translated with its result, per thread
//! (an actix worker drains many connections in turn), keyed by the frame's buffer
//! (held, so the address cannot be reused while cached) and the namespace: members
//! drained on one worker share one translation, and its packets are shared bytes
//! too (a clone is a reference count, not a copy). Members on other workers translate
//! once per worker; the room still encodes only the v1 frame.
//!
//! Must not know: HTTP, actix.

use super::translate::{self, Namespace};
use crate::actors::Outbound;
use bytestring::ByteString;
use std::cell::RefCell;

/// What ended a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// More may come.
    Open,
    /// The connection closes with this code and reason after what was written.
    Close(u16, String),
}

struct Cached {
    frame: ByteString,
    namespace: String,
    packets: Vec<ByteString>,
}

thread_local! {
    static LAST: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// Appends the Engine.IO packets for `items` to `out`.
pub fn drain(
    items: Vec<Outbound>,
    namespace: Option<&Namespace>,
    out: &mut Vec<ByteString>,
) -> End {
    for item in items {
        match item {
            Outbound::Text(text) if text.starts_with('{') => {
                if let Some(namespace) = namespace {
                    translated(&text, namespace, out);
                }
            }
            Outbound::Text(text) => out.push(text),
            // WebSocket pongs are v1's; Engine.IO has its own.
            Outbound::Pong(_) => {}
            Outbound::Close(code, reason) => return End::Close(code, reason),
        }
    }
    End::Open
}

fn translated(frame: &ByteString, namespace: &Namespace, out: &mut Vec<ByteString>) {
    let same = |cached: &Cached| {
        cached.frame.as_bytes().as_ptr() == frame.as_bytes().as_ptr()
            && cached.frame.len() == frame.len()
            && cached.namespace == namespace.name
    };
    let hit = LAST.with(|last| {
        let last = last.borrow();
        match last.as_ref().filter(|cached| same(cached)) {
            Some(cached) => {
                out.extend(cached.packets.iter().cloned());
                true
            }
            None => false,
        }
    });
    if hit {
        return;
    }
    let mut encoded = Vec::new();
    translate::server_frame(frame, namespace, &mut encoded);
    let packets: Vec<ByteString> = encoded.into_iter().map(ByteString::from).collect();
    out.extend(packets.iter().cloned());
    LAST.with(|last| {
        *last.borrow_mut() = Some(Cached {
            frame: frame.clone(),
            namespace: namespace.name.clone(),
            packets,
        })
    });
}
