//! The SessionSupervisor: parent of every Session actor.
//!
//! Owns: the set of live sessions. The transport asks it to `Open` a Session for each
//! accepted WebSocket.
//!
//! When a child stops (its connection closed): it is forgotten. When a child fails (a
//! panic): it is logged and forgotten, never restarted, since its socket closed with it
//! (the Session's state holds a guard that closes the socket with 1011). Rooms and
//! Presence learn of either through their monitors.

use super::session::{SessionActor, SessionArgs, SessionMessage};
use super::NodeContext;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::Arc;

/// Messages to the SessionSupervisor.
#[derive(RactorMessage)]
pub enum SessionSupervisorMessage {
    /// Start a Session for a new connection.
    Open {
        args: SessionArgs,
        reply: RpcReplyPort<Result<ActorRef<SessionMessage>, String>>,
    },
    /// Presence restarted: every session registers again.
    ReregisterAll,
    /// The node is shutting down: every session says goodbye and closes with 1012,
    /// `batch` sessions every `interval`. Each client is told to wait a different
    /// time, up to `spread_ms`, so they do not all reconnect at once.
    Drain {
        reason: String,
        spread_ms: u64,
        batch: usize,
        interval: std::time::Duration,
    },
    /// The next batch of a drain.
    DrainNext,
    /// How many sessions are live.
    Count { reply: RpcReplyPort<usize> },
}

/// The SessionSupervisor actor.
pub struct SessionSupervisor {
    pub(crate) ctx: Arc<NodeContext>,
}

/// Live sessions.
#[derive(Default)]
pub struct SessionSupervisorState {
    sessions: HashMap<ActorId, ActorRef<SessionMessage>>,
    /// A drain in progress: who is still to be told, and how.
    draining: Option<Draining>,
}

struct Draining {
    left: Vec<ActorRef<SessionMessage>>,
    reason: String,
    spread_ms: u64,
    batch: usize,
    interval: std::time::Duration,
}

impl Draining {
    /// Says goodbye to the next batch; true while more are left.
    fn next_batch(&mut self) -> bool {
        let cut = self.left.len().saturating_sub(self.batch.max(1));
        for session in self.left.drain(cut..) {
            let jitter =
                (uuid::Uuid::new_v4().as_u128() % u128::from(self.spread_ms.max(1))) as u64;
            let _ = session.cast(SessionMessage::Goodbye {
                reason: self.reason.clone(),
                reconnect_after_ms: jitter,
            });
        }
        !self.left.is_empty()
    }
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMessage;
    type State = SessionSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionSupervisorState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionSupervisorMessage,
        state: &mut SessionSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionSupervisorMessage::Open { args, reply } => {
                let handler = SessionActor {
                    ctx: self.ctx.clone(),
                };
                let answer = match Actor::spawn_linked(None, handler, args, myself.get_cell()).await
                {
                    Ok((actor, _)) => {
                        state.sessions.insert(actor.get_id(), actor.clone());
                        Ok(actor)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not start a session");
                        Err("could not start the session".to_owned())
                    }
                };
                let _ = reply.send(answer);
            }
            SessionSupervisorMessage::ReregisterAll => {
                for session in state.sessions.values() {
                    let _ = session.cast(SessionMessage::Reregister);
                }
            }
            SessionSupervisorMessage::Drain {
                reason,
                spread_ms,
                batch,
                interval,
            } => {
                tracing::info!(
                    sessions = state.sessions.len(),
                    batch,
                    "saying goodbye to every session"
                );
                state.draining = Some(Draining {
                    left: state.sessions.values().cloned().collect(),
                    reason,
                    spread_ms,
                    batch,
                    interval,
                });
                let _ = myself.cast(SessionSupervisorMessage::DrainNext);
            }
            SessionSupervisorMessage::DrainNext => {
                if let Some(draining) = &mut state.draining {
                    if draining.next_batch() {
                        let interval = draining.interval;
                        myself.send_after(interval, || SessionSupervisorMessage::DrainNext);
                    }
                }
            }
            SessionSupervisorMessage::Count { reply } => {
                let _ = reply.send(state.sessions.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SessionSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, ..) => {
                state.sessions.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                state.sessions.remove(&cell.get_id());
                tracing::error!(error = %error, "session failed; its connection was closed");
            }
            _ => {}
        }
        Ok(())
    }
}
