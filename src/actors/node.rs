//! The NodeSupervisor, root of the supervision tree, and the runtime it lives on.
//!
//! [`start_node`] starts a dedicated OS thread running a tokio runtime of its own for
//! the actor system (beside actix's workers), spawns the NodeSupervisor there, and
//! returns a [`NodeHandle`] once the tree is up.
//!
//! The NodeSupervisor starts, in order, the port's implementations (the room logs:
//! see [`PortBoot`]), Presence, the RoomSupervisor, the
//! SessionSupervisor and (when clustered) the ClusterSupervisor, and publishes their
//! references in the [`NodeContext`].
//! When a child stops or fails while the node is running, it is restarted:
//! - Presence: restarted empty, then every Session registers again, so direct
//!   messages and renames keep working.
//! - RoomSupervisor: restarted empty; its Rooms died with it (history is lost) and
//!   sessions get an `internal` reply the next time they use a lost room.
//! - SessionSupervisor: restarted empty; its Sessions died with it and their sockets
//!   closed with 1011; clients reconnect and resume with `since`.
//! - ClusterSupervisor: restarted; peers see this node leave and come back, and its
//!   rooms move and recover as after any view change (docs/cluster.md).
//!
//! A child that keeps failing is restarted at most [`MAX_RESTARTS`] times within
//! [`RESTART_WINDOW`]; past that the node supervisor stops, and the process exits
//! non-zero so that its own supervisor (systemd, the container runtime) restarts it.

use super::port::{PortFuture, Ports};
use super::presence::PresenceActor;
use super::room_supervisor::RoomSupervisor;
use super::session_supervisor::{SessionSupervisor, SessionSupervisorMessage};
use super::NodeContext;
use crate::cluster::supervisor::ClusterSupervisor;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Restarts of one kind of child allowed within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
/// The window over which restarts are counted.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages to the NodeSupervisor (none yet: it only supervises).
#[derive(RactorMessage)]
pub enum NodeMessage {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Presence,
    Rooms,
    Sessions,
    Cluster,
}

/// Starts the port's implementations (the room logs, presence across nodes) on the
/// actor runtime, before any room: given to [`start_node`] by whoever builds the node
/// (src/app.rs), so that `actors/` never names what implements the port.
pub type PortBoot = Box<dyn FnOnce(Arc<NodeContext>) -> PortFuture<Result<Ports, String>> + Send>;

struct NodeSupervisor {
    ctx: Arc<NodeContext>,
}

struct NodeState {
    presence: ActorCell,
    rooms: ActorCell,
    sessions: ActorCell,
    /// The ClusterSupervisor, when clustered.
    cluster: Option<ActorCell>,
    restarts: Vec<(Child, Instant)>,
}

impl NodeSupervisor {
    async fn start_child(
        &self,
        myself: &ActorRef<NodeMessage>,
        child: Child,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let ctx = self.ctx.clone();
        let parent = myself.get_cell();
        Ok(match child {
            Child::Presence => {
                let (actor, _) =
                    Actor::spawn_linked(None, PresenceActor { ctx: ctx.clone() }, (), parent)
                        .await?;
                ctx.set_presence(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Rooms => {
                let (actor, _) =
                    Actor::spawn_linked(None, RoomSupervisor { ctx: ctx.clone() }, (), parent)
                        .await?;
                ctx.set_rooms(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Sessions => {
                let (actor, _): (ActorRef<SessionSupervisorMessage>, _) =
                    Actor::spawn_linked(None, SessionSupervisor { ctx: ctx.clone() }, (), parent)
                        .await?;
                ctx.set_sessions(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Cluster => {
                let (actor, _) =
                    Actor::spawn_linked(None, ClusterSupervisor { ctx: ctx.clone() }, (), parent)
                        .await?;
                actor.get_cell()
            }
        })
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMessage;
    type State = NodeState;
    type Arguments = PortBoot;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        boot: PortBoot,
    ) -> Result<NodeState, ActorProcessingErr> {
        // First the room logs: every room reads and appends through them.
        let ports = boot(self.ctx.clone()).await?;
        self.ctx.set_ports(Some(ports));
        Ok(NodeState {
            presence: self.start_child(&myself, Child::Presence).await?,
            rooms: self.start_child(&myself, Child::Rooms).await?,
            sessions: self.start_child(&myself, Child::Sessions).await?,
            // Last: the cluster routes peer traffic to the actors above.
            cluster: match self.ctx.cluster {
                Some(_) => Some(self.start_child(&myself, Child::Cluster).await?),
                None => None,
            },
            restarts: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        self.ctx.set_presence(None);
        self.ctx.set_rooms(None);
        self.ctx.set_sessions(None);
        if let Some(ports) = self.ctx.ports() {
            ports.log.shutdown().await;
        }
        self.ctx.set_ports(None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let child = if id == state.presence.get_id() {
            Child::Presence
        } else if id == state.rooms.get_id() {
            Child::Rooms
        } else if id == state.sessions.get_id() {
            Child::Sessions
        } else if state.cluster.as_ref().map(|c| c.get_id()) == Some(id) {
            Child::Cluster
        } else {
            return Ok(());
        };
        let now = Instant::now();
        state
            .restarts
            .retain(|(_, at)| now.duration_since(*at) < RESTART_WINDOW);
        let recent = state.restarts.iter().filter(|(c, _)| *c == child).count();
        if recent >= MAX_RESTARTS {
            tracing::error!(?child, "child keeps failing; stopping the node");
            myself.stop(Some(format!("{child:?} failed {recent} times")));
            return Ok(());
        }
        state.restarts.push((child, now));
        tracing::error!(?child, reason = ?failure, "child stopped; restarting it");
        let restarted = self.start_child(&myself, child).await?;
        match child {
            Child::Presence => {
                state.presence = restarted;
                if let Some(sessions) = self.ctx.sessions() {
                    let _ = sessions.cast(SessionSupervisorMessage::ReregisterAll);
                }
            }
            Child::Rooms => state.rooms = restarted,
            Child::Sessions => state.sessions = restarted,
            Child::Cluster => state.cluster = Some(restarted),
        }
        Ok(())
    }
}

/// The running actor system of a node. Dropping it stops the tree.
pub struct NodeHandle {
    ctx: Arc<NodeContext>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl NodeHandle {
    /// The context shared by the node's actors.
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// Resolves when the supervision tree has stopped (by [`NodeHandle::stop`], or
    /// because the NodeSupervisor gave up).
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// Asks the tree to stop; resolve [`NodeHandle::stopped`] to wait for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the actor runtime thread and the supervision tree on it.
pub fn start_node(ctx: Arc<NodeContext>, boot: PortBoot) -> std::io::Result<NodeHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ctx.settings.node.thread_count())
        .thread_name("hubbub-actor")
        .enable_all()
        .build()?;
    let thread_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("hubbub-actors".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let supervisor = NodeSupervisor { ctx: thread_ctx };
                let (node, handle) = match Actor::spawn(None, supervisor, boot).await {
                    Ok(started) => started,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = stop_rx => node.stop(Some("node stopping".to_owned())),
                    _ = node.wait(None) => {}
                }
                let _ = handle.await;
            });
            let _ = stopped_tx.send(true);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(NodeHandle {
            ctx,
            stop: Some(stop_tx),
            stopped: stopped_rx,
        }),
        Ok(Err(e)) => Err(std::io::Error::other(format!(
            "the actor system did not start: {e}"
        ))),
        Err(_) => Err(std::io::Error::other("the actor system thread died")),
    }
}
