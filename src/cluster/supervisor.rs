//! The ClusterSupervisor: parent of Membership and the Endpoint.
//!
//! When either child stops or fails it is restarted. A restarted Membership starts a
//! new NodeServer, so every peer connection is re-established (peers see this node
//! leave and come back); a restarted Endpoint rejoins its process group. More than
//! [`MAX_RESTARTS`] restarts in [`RESTART_WINDOW`] stop the supervisor, and with it
//! the node (see actors/node.rs).

use super::endpoint::Endpoint;
use super::membership::MembershipActor;
use crate::actors::NodeContext;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The ClusterSupervisor takes no messages; it only supervises.
#[derive(RactorMessage)]
pub enum ClusterSupervisorMessage {}

/// The ClusterSupervisor actor.
pub struct ClusterSupervisor {
    pub(crate) ctx: Arc<NodeContext>,
}

/// Its children and recent restarts.
pub struct ClusterSupervisorState {
    membership: ActorCell,
    endpoint: ActorCell,
    restarts: Vec<Instant>,
}

impl ClusterSupervisor {
    async fn start_membership(
        &self,
        myself: &ActorRef<ClusterSupervisorMessage>,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let handler = MembershipActor {
            ctx: self.ctx.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, handler, (), myself.get_cell()).await?;
        self.ctx.set_membership(Some(actor.clone()));
        Ok(actor.get_cell())
    }

    async fn start_endpoint(
        &self,
        myself: &ActorRef<ClusterSupervisorMessage>,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let handler = Endpoint {
            ctx: self.ctx.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, handler, (), myself.get_cell()).await?;
        Ok(actor.get_cell())
    }
}

impl Actor for ClusterSupervisor {
    type Msg = ClusterSupervisorMessage;
    type State = ClusterSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        // The Endpoint first, so that peers dialled by Membership can reach us.
        let endpoint = self.start_endpoint(&myself).await?;
        let membership = self.start_membership(&myself).await?;
        Ok(ClusterSupervisorState {
            membership,
            endpoint,
            restarts: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.ctx.set_membership(None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if id != state.membership.get_id() && id != state.endpoint.get_id() {
            return Ok(());
        }
        let now = Instant::now();
        state
            .restarts
            .retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if state.restarts.len() >= MAX_RESTARTS {
            myself.stop(Some("cluster children keep failing".to_owned()));
            return Ok(());
        }
        state.restarts.push(now);
        if id == state.membership.get_id() {
            tracing::error!(reason = ?reason, "membership stopped; restarting it");
            state.membership = self.start_membership(&myself).await?;
        } else {
            tracing::error!(reason = ?reason, "cluster endpoint stopped; restarting it");
            state.endpoint = self.start_endpoint(&myself).await?;
        }
        Ok(())
    }
}
