//! The actor system of one node: one supervision tree on a tokio runtime of its own.
//!
//! ```text
//!                    NodeSupervisor                      (node.rs)
//!           ┌──────────────┼──────────────────┐
//!  SessionSupervisor   RoomSupervisor       Presence      (session_supervisor.rs,
//!           │                │                             room_supervisor.rs,
//!     Session × N       Room × M                           presence.rs)
//!   (one per socket)  (one per active room)
//!
//!  Room ··monitors··> Session     Presence ··monitors··> Session
//! ```
//!
//! Solid lines are links (parent supervises child); dotted ones are monitors. A Room
//! monitors the Session of every connection joined to it and Presence monitors every
//! Session, so however a session ends (close frame, dropped TCP, heartbeat timeout,
//! slow consumer, panic) its rooms and presence learn it from the actor system, not
//! from a disconnect callback that might not run.
//!
//! What each supervisor does when a child stops or fails is stated in its file. The
//! actors know nothing of HTTP: the transport hands a Session its [`Outbox`] and
//! forwards decoded frames; the Session answers through the same outbox.

pub(crate) mod bucket;
pub(crate) mod churn;
mod context;
mod message_rate;
mod node;
mod outbound_budget;
mod outbox;
pub mod port;
mod presence;
mod room;
mod room_supervisor;
mod session;
mod session_supervisor;

pub use context::{NodeContext, RoomDirectory};
pub use message_rate::MessageRate;
pub use node::{start_node, NodeHandle, PortBoot};
pub use outbound_budget::OutboundBudget;
pub use outbox::{
    Fanout, Outbound, Outbox, OutboxBounds, OutboxReader, PushError, SharedFrame, Taken, WakeRelay,
};
pub use presence::PresenceMessage;
pub use room::RoomMessage;
pub use room_supervisor::RoomSupervisorMessage;
pub(crate) use session::{check_content, check_publish};
pub use session::{
    FrameHold, FrameHolds, InflightPermit, SessionAnswer, SessionArgs, SessionCall, SessionHandle,
    SessionMessage,
};
pub use session_supervisor::SessionSupervisorMessage;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use std::time::Duration;

/// How long an actor waits for another's answer before it gives up with `internal`.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an `ask` got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AskError {
    /// The actor had stopped, or stopped before answering.
    Gone,
    /// The actor did not answer within [`ASK_TIMEOUT`].
    Timeout,
}

/// Sends a request and waits for its answer, bounded by [`ASK_TIMEOUT`].
pub(crate) async fn ask<M, T>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, AskError>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(build, Some(ASK_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(AskError::Timeout),
        Ok(CallResult::SenderError) | Err(_) => Err(AskError::Gone),
    }
}
