//! The Engine.IO connections of this node, by sid.
//!
//! A polling client sends each GET and POST as a request of its own, and its upgrade
//! arrives as a new WebSocket naming the sid: all of them find the connection here.
//! An entry holds the connection's [`Shared`] half, the reader of its Engine.IO
//! outbox (who holds it drains the connection: a GET, and after the upgrade the
//! WebSocket's body) and its inbound [`Connection`]. The entry is removed when the connection ends (its keepalive
//! task ends with it); the registry is bounded by `limits.max_connections`, since
//! every entry holds one of the connection permits.
//!
//! In a cluster without sticky sessions a polling request may reach a node that does
//! not hold its sid: on this branch it gets Engine.IO's "Session ID unknown" (400)
//! and the client reconnects; forwarding to the holder is a later step.
//!
//! Must not know: HTTP.

use super::connection::{Connection, Shared};
use crate::actors::OutboxReader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One Engine.IO connection, whatever its transport.
pub struct EngineConnection {
    pub shared: Arc<Shared>,
    /// The outbox's reader while the connection polls; taken by the upgrade.
    pub reader: Mutex<Option<OutboxReader>>,
    /// Packets from POSTs and from the WebSocket go through here, one at a time.
    pub inbound: tokio::sync::Mutex<Connection>,
    /// A GET is waiting (Engine.IO allows one at a time).
    pub polling: AtomicBool,
    /// A POST is being read (one at a time too).
    pub posting: AtomicBool,
    /// A WebSocket took over (or is probing to).
    pub upgrading: AtomicBool,
    /// The connection ended while a GET had packets to answer: the next GET answers
    /// the close.
    pub closing: AtomicBool,
}

impl EngineConnection {
    pub fn new(shared: Arc<Shared>, reader: Option<OutboxReader>, inbound: Connection) -> Self {
        Self {
            shared,
            reader: Mutex::new(reader),
            inbound: tokio::sync::Mutex::new(inbound),
            polling: AtomicBool::new(false),
            posting: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    /// The reader slot; never poisoned in a way that matters (nothing panics under it).
    pub fn reader(&self) -> MutexGuard<'_, Option<OutboxReader>> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `flag`, returning a guard that clears it; None when it was already set.
    pub fn claim<'a>(&'a self, flag: &'a AtomicBool) -> Option<Claim<'a>> {
        (!flag.swap(true, Ordering::AcqRel)).then_some(Claim(flag))
    }
}

/// Clears its flag when dropped (a request ended, or its client went away).
pub struct Claim<'a>(&'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The connections by sid.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<String, Arc<EngineConnection>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<EngineConnection>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, connection: Arc<EngineConnection>) {
        let sid = connection.shared.sid.clone();
        self.lock().insert(sid, connection);
    }

    pub fn get(&self, sid: &str) -> Option<Arc<EngineConnection>> {
        self.lock().get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
