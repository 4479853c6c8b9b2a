//! Raft RPCs between nodes: openraft's `RaftNetwork` over hubbub's own cluster link.
//!
//! There is no second port: a call is a [`RaftCall`] envelope body sent through the
//! node's one Endpoint (ractor_cluster), answered by a [`RaftAnswer`] carrying the same
//! correlation number. Both are defined in `cluster/wire.rs`; the openraft request and
//! response inside them are postcard bytes (compact, and openraft's types are plain
//! serde structs).
//!
//! - **Sending** ([`Transport`]): each call registers a one-shot slot under a fresh
//!   correlation number and waits for its answer, at most the RPC's hard TTL. openraft
//!   drops a call's future at that TTL itself; the slot is a drop guard, so a dropped or
//!   timed-out call leaves nothing behind (no unbounded map of dead calls). A peer with
//!   no session is `Unreachable`, which makes openraft back off instead of hot-looping.
//! - **Serving** ([`ShardServer`]): a call names its shard and target node. It is served
//!   only when the target is this node and the shard's Raft runs here; anything else is
//!   refused (openraft panics if replication meant for another node reaches a leader:
//!   its FAQ, issue #994). Each call is served in a task of its own, so a slow snapshot
//!   install never holds up the Endpoint.
//!
//! [`RaftLink`] is the port to the network: the cluster implements it over the
//! Endpoint; the in-process test tier implements it by handing calls to another
//! node's [`ShardServer`] directly.

use super::super::shards::{NodeId, ShardId};
use super::super::wire::{Bytes, RaftAnswer, RaftCall, RpcKind};
use super::types::ShardTc;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How Raft calls and answers leave this node.
pub trait RaftLink: Send + Sync + 'static {
    /// Sends a call to node `to`; false when no connection to it is up now.
    fn send_call(&self, to: NodeId, call: RaftCall) -> bool;
    /// Sends an answer back to node `to`; false when it cannot be reached now.
    fn send_answer(&self, to: NodeId, answer: RaftAnswer) -> bool;
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not connected")]
    Unreachable(NodeId),
    #[error("no answer from node {0} within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("node {0} refused the call: {1}")]
    Refused(NodeId, String),
    #[error("bad bytes in a raft call: {0}")]
    Codec(String),
}

/// Encodes an openraft request or answer.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CallError> {
    postcard::to_stdvec(value).map_err(|e| CallError::Codec(e.to_string()))
}

/// Decodes an openraft request or answer; never panics on bad bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    postcard::from_bytes(bytes).map_err(|e| CallError::Codec(e.to_string()))
}

type Slot = oneshot::Sender<Result<Bytes, String>>;

/// The calls this node has in flight, shared by every shard's connections.
pub struct Transport {
    me: NodeId,
    link: Arc<dyn RaftLink>,
    pending: Mutex<HashMap<u64, Slot>>,
    next: AtomicU64,
}

/// Removes a call's slot however the call ends (answered, timed out, or dropped).
struct PendingGuard<'a> {
    transport: &'a Transport,
    corr: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.transport.slots().remove(&self.corr);
    }
}

impl Transport {
    /// The transport of node `me`, sending through `link`.
    pub fn new(me: NodeId, link: Arc<dyn RaftLink>) -> Self {
        Self {
            me,
            link,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many calls wait for an answer (for metrics and tests).
    pub fn in_flight(&self) -> usize {
        self.slots().len()
    }

    /// Sends one call and waits for its answer's bytes, at most `ttl`.
    pub async fn call(
        &self,
        target: NodeId,
        shard: ShardId,
        kind: RpcKind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let corr = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.slots().insert(corr, tx);
        let _guard = PendingGuard {
            transport: self,
            corr,
        };
        let call = RaftCall {
            shard,
            from: self.me,
            target,
            corr,
            kind,
            payload: Bytes(payload),
        };
        if !self.link.send_call(target, call) {
            return Err(CallError::Unreachable(target));
        }
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes.0),
            Ok(Ok(Err(reason))) => Err(CallError::Refused(target, reason)),
            // The slot was dropped without an answer: only when the transport goes.
            Ok(Err(_)) => Err(CallError::Unreachable(target)),
            Err(_) => Err(CallError::Timeout(target, ttl)),
        }
    }

    /// An answer arrived: wake its call (an answer nobody waits for is dropped).
    pub fn complete(&self, answer: RaftAnswer) {
        if let Some(slot) = self.slots().remove(&answer.corr) {
            let _ = slot.send(answer.result);
        }
    }

    /// Answers a call through the link (used by the serving side).
    pub fn answer(&self, to: NodeId, answer: RaftAnswer) -> bool {
        self.link.send_answer(to, answer)
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }
}

/// The most bytes of encoded request one Raft call carries: in the envelope it grows
/// by a third (base64) and stays well under the cluster frame limit
/// (`wire::MAX_ENVELOPE_BYTES`, 16 MiB).
pub const MAX_RPC_PAYLOAD: usize = 8 * 1024 * 1024;
// In an envelope (base64 and a margin) the largest payload stays under the frame
// limit, and the largest entry fits in one call.
const _: () =
    assert!(MAX_RPC_PAYLOAD * 4 / 3 + 64 * 1024 < crate::cluster::wire::MAX_ENVELOPE_BYTES);
const _: () = assert!(super::host::MAX_BATCH_BYTES * 4 / 3 < MAX_RPC_PAYLOAD);

/// For an AppendEntries of `entries` entries encoded in `payload` bytes: None when it
/// may go, else how many entries to send instead (openraft's `PayloadTooLarge` hint).
/// A single entry always goes (the proposer bounds an entry's bytes).
pub fn fewer_entries(payload: usize, entries: usize) -> Option<u64> {
    (payload > MAX_RPC_PAYLOAD && entries > 1).then(|| (entries / 2).max(1) as u64)
}

/// openraft's network factory for one shard.
pub struct ShardNetwork {
    pub shard: ShardId,
    pub transport: Arc<Transport>,
}

/// One shard's connection to one target node (openraft makes these freely: they
/// connect nothing, the cluster link is already there).
pub struct ShardConnection {
    shard: ShardId,
    target: NodeId,
    transport: Arc<Transport>,
}

impl<C> RaftNetworkFactory<C> for ShardNetwork
where
    C: RaftTypeConfig<NodeId = NodeId>,
    AppendEntriesRequest<C>: Serialize,
    InstallSnapshotRequest<C>: Serialize,
{
    type Network = ShardConnection;

    async fn new_client(&mut self, target: NodeId, _node: &C::Node) -> ShardConnection {
        ShardConnection {
            shard: self.shard,
            target,
            transport: self.transport.clone(),
        }
    }
}

impl ShardConnection {
    async fn rpc<C, Req, Resp, E>(
        &self,
        kind: RpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, C::Node, RaftError<NodeId, E>>>
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send::<C, Resp, E>(kind, payload, option).await
    }

    /// Sends an encoded request and decodes the answer.
    async fn send<C, Resp, E>(
        &self,
        kind: RpcKind,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, C::Node, RaftError<NodeId, E>>>
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = self
            .transport
            .call(self.target, self.shard, kind, payload, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer: Result<Resp, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C> RaftNetwork<C> for ShardConnection
where
    C: RaftTypeConfig<NodeId = NodeId>,
    AppendEntriesRequest<C>: Serialize,
    InstallSnapshotRequest<C>: Serialize,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        let kind = if rpc.entries.is_empty() {
            RpcKind::Heartbeat
        } else {
            RpcKind::AppendEntries
        };
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = fewer_entries(payload.len(), rpc.entries.len()) {
            // openraft sends fewer entries next time: no frame near the limit.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send::<C, _, _>(kind, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, C::Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc::<C, _, _, _>(RpcKind::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        self.rpc::<C, _, _, _>(RpcKind::Vote, &rpc, &option).await
    }
}

/// The serving side: every shard's Raft on this node, by shard.
pub struct ShardServer {
    me: NodeId,
    rafts: RwLock<HashMap<ShardId, Raft<C>>>,
}

/// The type configuration the serving side runs.
type C = ShardTc;

impl ShardServer {
    /// No shards yet.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            rafts: RwLock::new(HashMap::new()),
        }
    }

    /// Serves `shard` with `raft` from now on.
    pub fn insert(&self, shard: ShardId, raft: Raft<C>) {
        if let Ok(mut rafts) = self.rafts.write() {
            rafts.insert(shard, raft);
        }
    }

    /// Stops serving `shard` (before its Raft shuts down: openraft logs errors for
    /// calls that reach a stopped Raft, issue #1357); returns it.
    pub fn remove(&self, shard: ShardId) -> Option<Raft<C>> {
        self.rafts.write().ok().and_then(|mut r| r.remove(&shard))
    }

    /// The Raft of `shard` here, if it runs.
    pub fn get(&self, shard: ShardId) -> Option<Raft<C>> {
        self.rafts.read().ok().and_then(|r| r.get(&shard).cloned())
    }

    /// Every shard served here.
    pub fn shards(&self) -> Vec<ShardId> {
        let mut shards: Vec<ShardId> = self
            .rafts
            .read()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards
    }

    /// Serves one call and returns its answer (to send back to `call.from`).
    pub async fn serve(&self, call: RaftCall) -> RaftAnswer {
        let corr = call.corr;
        let result = self.serve_inner(call).await.map(Bytes);
        RaftAnswer { corr, result }
    }

    async fn serve_inner(&self, call: RaftCall) -> Result<Vec<u8>, String> {
        if call.target != self.me {
            return Err(format!(
                "call for node {} reached node {}",
                call.target, self.me
            ));
        }
        let raft = self
            .get(call.shard)
            .ok_or_else(|| format!("shard {} does not run here", call.shard))?;
        let bytes = &call.payload.0;
        let encoded = match call.kind {
            RpcKind::AppendEntries | RpcKind::Heartbeat => {
                let rpc: AppendEntriesRequest<C> = decode(bytes).map_err(|e| e.to_string())?;
                encode(&raft.append_entries(rpc).await)
            }
            RpcKind::Vote => {
                let rpc: VoteRequest<NodeId> = decode(bytes).map_err(|e| e.to_string())?;
                encode(&raft.vote(rpc).await)
            }
            RpcKind::InstallSnapshot => {
                let rpc: InstallSnapshotRequest<C> = decode(bytes).map_err(|e| e.to_string())?;
                encode(&raft.install_snapshot(rpc).await)
            }
            RpcKind::ClientWrite => {
                let data: <C as RaftTypeConfig>::D = decode(bytes).map_err(|e| e.to_string())?;
                encode(&raft.client_write(data).await)
            }
        };
        encoded.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link that records calls and lets the test answer them.
    #[derive(Default)]
    struct Recorder {
        up: bool,
        calls: Mutex<Vec<(NodeId, RaftCall)>>,
    }

    impl RaftLink for Recorder {
        fn send_call(&self, to: NodeId, call: RaftCall) -> bool {
            if self.up {
                self.calls.lock().unwrap().push((to, call));
            }
            self.up
        }
        fn send_answer(&self, _to: NodeId, _answer: RaftAnswer) -> bool {
            self.up
        }
    }

    #[tokio::test]
    async fn an_answer_wakes_its_call_and_nothing_stays_pending() {
        let link = Arc::new(Recorder {
            up: true,
            ..Default::default()
        });
        let transport = Arc::new(Transport::new(1, link.clone()));
        let caller = transport.clone();
        let call = tokio::spawn(async move {
            caller
                .call(2, 5, RpcKind::Vote, vec![1, 2, 3], Duration::from_secs(5))
                .await
        });
        let corr = loop {
            if let Some((to, c)) = link.calls.lock().unwrap().first() {
                assert_eq!((*to, c.shard, c.target, c.from), (2, 5, 2, 1));
                break c.corr;
            }
            tokio::task::yield_now().await;
        };
        // An answer for another call is ignored.
        transport.complete(RaftAnswer {
            corr: corr + 100,
            result: Ok(Bytes(vec![9])),
        });
        transport.complete(RaftAnswer {
            corr,
            result: Ok(Bytes(vec![4, 5])),
        });
        assert_eq!(call.await.unwrap(), Ok(vec![4, 5]));
        assert_eq!(transport.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_peer_fails_at_once() {
        let transport = Transport::new(1, Arc::new(Recorder::default()));
        let result = transport
            .call(2, 0, RpcKind::Vote, vec![], Duration::from_secs(5))
            .await;
        assert_eq!(result, Err(CallError::Unreachable(2)));
        assert_eq!(transport.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_call_times_out_and_a_dropped_call_leaves_no_slot() {
        let link = Arc::new(Recorder {
            up: true,
            ..Default::default()
        });
        let transport = Arc::new(Transport::new(1, link));
        let result = transport
            .call(2, 0, RpcKind::Vote, vec![], Duration::from_millis(20))
            .await;
        assert!(matches!(result, Err(CallError::Timeout(2, _))));
        assert_eq!(transport.in_flight(), 0);

        let caller = transport.clone();
        let call = tokio::spawn(async move {
            caller
                .call(2, 0, RpcKind::Vote, vec![], Duration::from_secs(60))
                .await
        });
        while transport.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        call.abort();
        let _ = call.await;
        assert_eq!(transport.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_refusal_is_reported_with_its_reason() {
        let link = Arc::new(Recorder {
            up: true,
            ..Default::default()
        });
        let transport = Arc::new(Transport::new(1, link.clone()));
        let caller = transport.clone();
        let call = tokio::spawn(async move {
            caller
                .call(3, 0, RpcKind::AppendEntries, vec![], Duration::from_secs(5))
                .await
        });
        let corr = loop {
            if let Some((_, c)) = link.calls.lock().unwrap().first() {
                break c.corr;
            }
            tokio::task::yield_now().await;
        };
        transport.complete(RaftAnswer {
            corr,
            result: Err("shard 0 does not run here".into()),
        });
        assert_eq!(
            call.await.unwrap(),
            Err(CallError::Refused(3, "shard 0 does not run here".into()))
        );
    }

    #[test]
    fn bad_bytes_decode_to_an_error() {
        let result: Result<VoteRequest<NodeId>, _> = decode(&[0xff, 0xff, 0xff]);
        assert!(matches!(result, Err(CallError::Codec(_))));
        let vote = VoteRequest::<NodeId>::new(
            openraft::Vote::new(3, 7),
            Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 7),
                10,
            )),
        );
        let back: VoteRequest<NodeId> = decode(&encode(&vote).unwrap()).unwrap();
        assert_eq!(back, vote);
    }

    #[test]
    fn an_append_entries_near_the_frame_limit_asks_for_fewer_entries() {
        assert_eq!(fewer_entries(MAX_RPC_PAYLOAD, 64), None);
        assert_eq!(fewer_entries(MAX_RPC_PAYLOAD + 1, 64), Some(32));
        assert_eq!(fewer_entries(MAX_RPC_PAYLOAD + 1, 3), Some(1));
        // One entry always goes: the proposer bounds an entry's bytes.
        assert_eq!(fewer_entries(MAX_RPC_PAYLOAD * 2, 1), None);
    }
}
