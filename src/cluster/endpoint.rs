//! The Endpoint: the one actor of a node that peers can address.
//!
//! It joins the process group `hubbub.node.<name>`; peers find it there and cast it
//! `Frame(bytes)`. It decodes each envelope (malformed or foreign-version traffic is
//! logged and dropped) and routes the body: heartbeats to Membership, Raft calls and
//! answers to the shard host (cluster/raft/host.rs), direct messages and renames to
//! Presence, presence traffic to the presence port (cluster/presence_sync.rs). It
//! never waits on anyone.

use super::wire::{self, Body};
use crate::actors::{NodeContext, PresenceMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;
use std::sync::Arc;

/// The only message peers send: an encoded [`wire::Envelope`].
#[derive(RactorClusterMessage)]
pub enum EndpointMessage {
    Frame(Vec<u8>),
}

/// The Endpoint actor.
pub struct Endpoint {
    pub(crate) ctx: Arc<NodeContext>,
}

impl Actor for Endpoint {
    type Msg = EndpointMessage;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        let name = super::endpoint_group(&self.ctx.settings.node.name);
        ractor::pg::join(name, vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: EndpointMessage,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let EndpointMessage::Frame(bytes) = message;
        let envelope = match wire::decode(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.ctx.metrics.cluster_message_invalid();
                tracing::warn!(error = %e, "dropped cluster traffic");
                return Ok(());
            }
        };
        self.ctx.metrics.cluster_message_in(envelope.body.kind());
        let from = envelope.from;
        let inc = envelope.inc;
        match envelope.body {
            body @ (Body::Ping { .. } | Body::Pong { .. } | Body::Leaving {}) => {
                if let Some(membership) = self.ctx.membership() {
                    let _ = membership.cast(crate::cluster::membership::MembershipMessage::Wire {
                        from,
                        inc,
                        body,
                    });
                }
            }
            body @ (Body::Direct { .. } | Body::DirectResult { .. } | Body::UserRenamed { .. }) => {
                if let Some(presence) = self.ctx.presence() {
                    let _ = presence.cast(PresenceMessage::Remote { from, body });
                }
            }
            body @ (Body::PresenceDelta { .. }
            | Body::PresenceDigest { .. }
            | Body::PresenceAsk { .. }
            | Body::PresenceState { .. }
            | Body::PresenceTyping { .. }) => {
                if let Some(port) = self.ctx.cluster.as_ref().and_then(|c| c.presence_port()) {
                    port.on_wire(&from, inc, body);
                }
            }
            Body::RaftCall(call) => {
                // A call names its caller: it must be the node that sent the envelope.
                if call.from != crate::cluster::shards::node_id(&from) {
                    self.ctx.metrics.cluster_message_invalid();
                    tracing::warn!(%from, "dropped a raft call naming another node as its caller");
                    return Ok(());
                }
                if let Some(host) = self.ctx.cluster.as_ref().and_then(|c| c.shard_host()) {
                    host.serve(call);
                }
            }
            Body::RaftAnswer(answer) => {
                if let Some(host) = self.ctx.cluster.as_ref().and_then(|c| c.shard_host()) {
                    host.answered(answer);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointMessage;
    use crate::actors::{
        PresenceMessage, RoomMessage, RoomSupervisorMessage, SessionMessage,
        SessionSupervisorMessage,
    };
    use crate::cluster::membership::MembershipMessage;
    use ractor::Message;

    /// ractor_cluster advertises to peers exactly the actors whose message type is
    /// serialisable. Only the Endpoint may be one: Sessions (and every other actor)
    /// stay node-local, so peers never hold a stub per connection.
    #[test]
    fn only_the_endpoint_is_visible_to_peers() {
        assert!(EndpointMessage::serializable());
        assert!(!SessionMessage::serializable());
        assert!(!SessionSupervisorMessage::serializable());
        assert!(!RoomMessage::serializable());
        assert!(!RoomSupervisorMessage::serializable());
        assert!(!PresenceMessage::serializable());
        assert!(!MembershipMessage::serializable());
    }
}
