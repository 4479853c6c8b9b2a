//! Assembling a node: settings in, a running HTTP server and actor system out.
//!
//! [`Application::build`] starts the actor system on its own runtime, binds the HTTP
//! listener (port 0 picks a free one, which is how tests start nodes), and the admin
//! listener when `[admin] addr` is set, and returns before serving; [`Application::run`] serves until the shutdown future the caller
//! hands in resolves (`run_until_stopped` uses SIGINT / SIGTERM), then drains.

use crate::actors::port::{PortFuture, Ports, PresencePort, SoloPresence};
use crate::actors::{start_node, NodeContext, NodeHandle, SessionSupervisorMessage};
use crate::behaviour::Behaviours;
use crate::cluster::member_log::{MemberLog, WithMemberLists};
use crate::cluster::membership::tls::PeerTls;
use crate::cluster::membership::MembershipMessage;
use crate::cluster::presence_sync::TrackerPort;
use crate::cluster::{room_log, Cluster};
use crate::config::Settings;
use crate::telemetry::Metrics;
use crate::transport::{self, serve, serve_admin, AppState, Gate};
use actix_web::dev::Server;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a draining node waits for its webhook endpoints to take what they hold.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(3);

/// A built node, ready to serve.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    /// The operator's listener (`[admin] addr`), when there is one.
    admin: Option<(SocketAddr, Server)>,
    node: NodeHandle,
    state: AppState,
}

impl Application {
    /// Builds a node whose rooms all run plain chat. Must be called inside a tokio
    /// (actix) runtime.
    pub fn build(settings: Settings) -> std::io::Result<Self> {
        Self::build_with(settings, Behaviours::new())
    }

    /// Builds a node with room behaviours chosen by room-name pattern.
    pub fn build_with(settings: Settings, behaviours: Behaviours) -> std::io::Result<Self> {
        check_cluster_tls(&settings)?;
        // Reads the certificate and key of `[http.tls]`: bad ones stop start-up here,
        // naming the setting.
        let tls = match &settings.http.tls {
            Some(tls) => Some(transport::tls::https(tls).map_err(std::io::Error::other)?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Reads the auth key: a bad one stops start-up here, naming the key.
        let gate = Gate::new(&settings).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(settings.node.http_addr)?;
        let addr = listener.local_addr()?;
        let admin_listener = bind_admin(&settings)?;
        let metrics = Arc::new(Metrics::new());
        let cluster = settings.cluster.enabled.then(|| {
            Arc::new(Cluster::new(
                &settings.node.name,
                Duration::from_millis(settings.cluster.heartbeat_ms),
                Duration::from_millis(settings.cluster.failure_timeout_ms),
                cluster_size(&settings),
                metrics.clone(),
            ))
        });
        let ctx = Arc::new(NodeContext::new(settings, behaviours, cluster, metrics));
        let node = start_node(ctx.clone(), Box::new(boot_ports))?;
        if ctx.cluster.is_none() {
            await_room_logs_alone(&ctx);
        }
        let state = AppState::new(ctx, gate);
        let server = serve(listener, state.clone(), tls, admin_listener.is_none())?;
        let admin = match admin_listener {
            Some(listener) => {
                let admin_addr = listener.local_addr()?;
                let admin = serve_admin(listener, state.clone())?;
                tracing::info!(%admin_addr, "admin listener (/metrics, /cluster) is listening");
                Some((admin_addr, admin))
            }
            None => None,
        };
        state.ready.store(true, Ordering::Release);
        tracing::info!(node = %state.ctx.settings.node.name, %addr, scheme, "hubbub is listening");
        Ok(Self {
            addr,
            server,
            admin,
            node,
            state,
        })
    }

    /// The address the admin listener (`[admin] addr`) is bound to, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(addr, _)| *addr)
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The shared state of the node's actors.
    pub fn context(&self) -> &Arc<NodeContext> {
        self.node.context()
    }

    /// Serves until SIGINT or SIGTERM, then drains (see [`Application::run`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503 and new
    /// upgrades are refused, a clustered node leaves the cluster (its rooms move with
    /// their history), every client gets `goodbye` and a close with 1012 in batches,
    /// and once they are gone (or `shutdown.timeout_secs` nearly has passed) the HTTP
    /// server and the actor system stop. An actor system that gives up first ends the node with an
    /// error.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self {
            server,
            admin,
            mut node,
            state,
            ..
        } = self;
        // The admin listener runs beside the public one and stops after it, so the
        // drain can be watched in /metrics to the end.
        let admin = admin.map(|(_, admin)| (admin.handle(), tokio::spawn(admin)));
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            served = &mut server => {
                state.ready.store(false, Ordering::Release);
                served
            }
            _ = node.stopped() => {
                state.ready.store(false, Ordering::Release);
                // The stop command is carried out by the server future: keep polling it.
                let (_, _) = tokio::join!(handle.stop(false), &mut server);
                Err(std::io::Error::other("the actor system stopped"))
            }
            _ = shutdown => {
                drain(&state).await;
                // The drained connections' `disconnect` events, and whatever else the
                // webhooks still hold, get a short while to go out.
                state.ctx.hooks.events.flush(WEBHOOK_FLUSH).await;
                let (_, served) = tokio::join!(handle.stop(true), &mut server);
                served
            }
        };
        if let Some((handle, served)) = admin {
            handle.stop(true).await;
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener failed"),
                Err(e) => tracing::warn!(error = %e, "the admin listener did not stop cleanly"),
            }
        }
        node.stop();
        node.stopped().await;
        tracing::info!("hubbub stopped");
        result
    }
}

/// Fails start-up, with a message naming the key, when `[cluster.tls]` cannot be
/// used (a file unreadable, a key that is not the certificate's): before anything
/// starts, rather than from deep inside the actor tree. Membership reads the files
/// again when it starts.
fn check_cluster_tls(settings: &Settings) -> std::io::Result<()> {
    match &settings.cluster.tls {
        Some(tls) if settings.cluster.enabled => {
            PeerTls::load(tls, &settings.cluster.advertise_addr())
                .map(|_| ())
                .map_err(std::io::Error::other)
        }
        _ => Ok(()),
    }
}

/// Binds the admin listener when `[admin] addr` is set. An address that does not
/// parse (settings built in code, not validated) stops start-up naming the key.
fn bind_admin(settings: &Settings) -> std::io::Result<Option<TcpListener>> {
    let addr = settings.admin.addr.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let Some(admin) = settings.admin.listen_addr() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin.addr: {addr:?} is not an \"IP:port\" address"),
        ));
    };
    TcpListener::bind(admin)
        .map(Some)
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin.addr {admin}: {e}")))
}

/// How many nodes the cluster has, as far as configuration tells: the distinct
/// addresses among the seeds and this node's own. Quorum is a majority of it (or of
/// the nodes seen, when more have been seen).
/// The node's [`crate::actors::PortBoot`]: the room logs on the Raft shard host, and
/// presence across nodes (alone: nobody else to tell).
fn boot_ports(ctx: Arc<NodeContext>) -> PortFuture<Result<Ports, String>> {
    Box::pin(async move {
        // The webhooks' delivery tasks run on the actor runtime, beside what feeds them.
        ctx.hooks.events.start();
        let host = room_log::start_host(
            &ctx.settings,
            ctx.cluster.clone(),
            ctx.room_directory(),
            ctx.metrics.clone(),
            ctx.hooks.events.clone(),
        )
        .await?;
        let presence: Arc<dyn PresencePort> = match &ctx.cluster {
            Some(cluster) => {
                let port = Arc::new(TrackerPort::new(cluster.clone(), ctx.room_directory()));
                cluster.set_presence_port(port.clone());
                port
            }
            None => Arc::new(SoloPresence),
        };
        // The membership webhook events come from the rooms' member lists in the room
        // logs, which this node keeps its part of only when some endpoint wants them.
        let presence: Arc<dyn PresencePort> = if ctx.hooks.events.wants_membership() {
            let members = MemberLog::start(&host, &ctx.settings.node.name, ctx.cluster.clone());
            Arc::new(WithMemberLists { presence, members })
        } else {
            presence
        };
        Ok(Ports {
            log: Arc::new(room_log::RaftRoomLog::new(host)),
            presence,
        })
    })
}

fn cluster_size(settings: &Settings) -> usize {
    let own = settings.cluster.advertise_addr();
    let mut addrs: std::collections::BTreeSet<&str> =
        settings.cluster.seeds.iter().map(String::as_str).collect();
    addrs.insert(own.as_str());
    addrs.len()
}

/// How long a node alone waits at start for its one-voter room logs to elect
/// themselves (about 100 ms) before it serves anyway.
const ALONE_READY_WAIT: Duration = Duration::from_secs(5);

/// Blocks until a node alone can order messages, so that it is ready (and upgrades
/// are taken, see `AppState::not_ready`) from the moment it says it is listening. A
/// clustered node cannot wait here: its quorum needs the other nodes.
fn await_room_logs_alone(ctx: &NodeContext) {
    let started = std::time::Instant::now();
    while started.elapsed() < ALONE_READY_WAIT {
        if ctx
            .ports()
            .is_some_and(|ports| ports.log.unready().is_none())
        {
            return;
        }
        // The actor system runs on its own thread (start_node): this thread only waits.
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!("the room logs are not ready yet; serving anyway");
}

/// What is kept back from `shutdown.timeout_secs` for stopping the HTTP server and the
/// actor system after the clients are gone.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// The drain: stop accepting, leave the cluster (rooms move with their history), say
/// goodbye to every client in batches, and wait for them to go, all within
/// `shutdown.timeout_secs` (less [`STOP_MARGIN`]).
async fn drain(state: &AppState) {
    let settings = &state.ctx.settings.shutdown;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(settings.timeout_secs).saturating_sub(STOP_MARGIN);
    state.ready.store(false, Ordering::Release);
    tracing::info!(connections = state.open_connections(), "draining");
    if state.ctx.cluster.is_some() {
        // Peers drop this node's presence at once instead of after the failure
        // timeout. Its room-log shards elect new leaders when it stops.
        if let Some(membership) = state.ctx.membership() {
            let _ = crate::actors::ask(&membership, MembershipMessage::Leave).await;
        }
    }
    if let Some(sessions) = state.ctx.sessions() {
        let _ = sessions.cast(SessionSupervisorMessage::Drain {
            reason: "shutdown".to_owned(),
            spread_ms: settings.reconnect_spread_ms,
            batch: settings.batch_size,
            interval: Duration::from_millis(settings.batch_interval_ms),
        });
    }
    while state.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.open_connections();
    if left > 0 {
        tracing::warn!(connections = left, "drain timed out; closing the rest");
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
