//! Membership: who is in the cluster and who is up. (Being written: see the spec in
//! the cluster issue; this file currently holds its interface only.)

use super::wire::Body;
use ractor::RpcReplyPort;
use ractor_cluster::RactorMessage;
use serde::Serialize;

/// Messages to Membership.
#[derive(RactorMessage)]
pub enum MembershipMessage {
    /// A heartbeat (`Ping` / `Pong`) from a peer, routed here by the Endpoint.
    Wire { from: String, inc: u64, body: Body },
    /// The state shown at `GET /cluster`.
    Status(RpcReplyPort<ClusterStatus>),
}

/// This node's view of the cluster, as served at `GET /cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub incarnation: u64,
    pub advertise: String,
    pub view_id: u64,
    pub view: Vec<String>,
    pub quorum: usize,
    pub has_quorum: bool,
    pub lease_valid: bool,
    pub peers: Vec<PeerStatus>,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub addr: String,
    /// "up" or "down".
    pub state: &'static str,
    pub incarnation: u64,
    /// Round trip of the last answered heartbeat, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// How long ago anything was heard from the peer, in milliseconds.
    pub last_heard_ms_ago: Option<u64>,
}

/// The Membership actor (placeholder until the implementation lands).
pub struct MembershipActor {
    pub(crate) ctx: std::sync::Arc<crate::actors::NodeContext>,
}

impl ractor::Actor for MembershipActor {
    type Msg = MembershipMessage;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        let _ = &self.ctx;
        Ok(())
    }
}
