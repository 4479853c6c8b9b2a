//! The Endpoint: the one actor of a node that peers can address.
//!
//! It joins the process group `hubbub.node.<name>`; peers find it there and cast it
//! `Frame(bytes)`. It decodes each frame (malformed or foreign-version traffic is
//! logged and dropped), checks that it carries the sender key this node issued to the
//! node it claims to come from (sender_keys.rs; dropped and logged otherwise), and
//! routes the body: heartbeats to Membership, Raft calls and
//! answers to the shard host (cluster/raft/host.rs), direct messages and renames to
//! Presence, presence traffic to the presence port (cluster/presence_sync.rs). It
//! never waits on anyone.

use super::wire::{self, Body};
use crate::actors::{NodeContext, PresenceMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A dropped frame is logged at most this often per reason (a flood of forged frames
/// must not become a flood of log lines); every one is counted.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

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
    type State = DropLog;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<DropLog, ActorProcessingErr> {
        let name = super::endpoint_group(&self.ctx.settings.node.name);
        ractor::pg::join(name, vec![myself.get_cell()]);
        Ok(DropLog::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: EndpointMessage,
        drops: &mut DropLog,
    ) -> Result<(), ActorProcessingErr> {
        let EndpointMessage::Frame(bytes) = message;
        let frame = match wire::decode(&bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.ctx.metrics.cluster_message_invalid();
                self.ctx.metrics.cluster_frame_dropped("undecodable");
                if drops.due("undecodable") {
                    tracing::warn!(error = %e, "dropped cluster traffic");
                }
                return Ok(());
            }
        };
        let Some(cluster) = self.ctx.cluster.as_ref() else {
            return Ok(());
        };
        for envelope in frame.envelopes {
            self.route(cluster, &frame.key, envelope, drops);
        }
        Ok(())
    }
}

impl Endpoint {
    /// Checks one envelope of a frame that carried `key` and hands its body on.
    fn route(
        &self,
        cluster: &crate::cluster::Cluster,
        key: &str,
        envelope: wire::Envelope,
        drops: &mut DropLog,
    ) {
        let from = envelope.from;
        let inc = envelope.inc;
        if let Body::SenderKey { key } = &envelope.body {
            self.ctx.metrics.cluster_message_in(envelope.body.kind());
            if cluster.key_offered(&from, inc, key) {
                tracing::debug!(peer = %from, "took the sender key for our frames to peer");
            }
            return;
        }
        if let Err(refusal) = cluster.check_sender(&from, inc, key) {
            let reason = refusal.reason();
            self.ctx.metrics.cluster_frame_dropped(reason);
            if drops.due(reason) {
                tracing::warn!(
                    claimed = %from,
                    kind = envelope.body.kind(),
                    reason,
                    "dropped a cluster frame that does not carry the sender key issued to \
                     the node it names: another peer holding the cookie may be sending \
                     in that node's name"
                );
            }
            return;
        }
        self.ctx.metrics.cluster_message_in(envelope.body.kind());
        match envelope.body {
            Body::SenderKey { .. } => {}
            body @ (Body::Ping { .. } | Body::Pong { .. } | Body::Leaving {}) => {
                if let Some(membership) = self.ctx.membership() {
                    let _ = membership.cast(crate::cluster::membership::MembershipMessage::Wire {
                        from,
                        inc,
                        body,
                    });
                }
            }
            body @ (Body::Direct { .. }
            | Body::DirectResult { .. }
            | Body::UserRenamed { .. }
            | Body::UserCall { .. }
            | Body::UserCallResult { .. }) => {
                if let Some(presence) = self.ctx.presence() {
                    let _ = presence.cast(PresenceMessage::Remote { from, body });
                }
            }
            body @ (Body::PresenceDelta { .. }
            | Body::PresenceDigest { .. }
            | Body::PresenceAsk { .. }
            | Body::PresenceState { .. }
            | Body::PresenceTyping { .. }) => {
                if let Some(port) = cluster.presence_port() {
                    port.on_wire(&from, inc, body);
                }
            }
            Body::RaftCall(call) => {
                // A call names its caller: it must be the node that sent the envelope.
                if call.from != crate::cluster::shards::node_id(&from) {
                    self.ctx.metrics.cluster_frame_dropped("wrong_caller");
                    if drops.due("wrong_caller") {
                        tracing::warn!(%from, "dropped a raft call naming another node as its caller");
                    }
                    return;
                }
                if let Some(host) = cluster.shard_host() {
                    host.serve(call);
                }
            }
            Body::RaftAnswer(answer) => {
                if let Some(host) = cluster.shard_host() {
                    host.answered(answer);
                }
            }
        }
    }
}

/// When a dropped frame was last logged, by reason.
#[derive(Default)]
pub struct DropLog {
    last: HashMap<&'static str, Instant>,
}

impl DropLog {
    /// Whether a drop for `reason` should be logged now.
    fn due(&mut self, reason: &'static str) -> bool {
        let now = Instant::now();
        match self.last.get(reason) {
            Some(at) if now.duration_since(*at) < DROP_LOG_EVERY => false,
            _ => {
                self.last.insert(reason, now);
                true
            }
        }
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
