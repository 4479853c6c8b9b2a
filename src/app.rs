//! Assembling a node: settings in, a running HTTP server and actor system out.
//!
//! [`Application::build`] starts the actor system on its own runtime, binds the HTTP
//! listener (port 0 picks a free one, which is how tests start nodes) and returns
//! before serving; [`Application::run_until_stopped`] serves until the process is
//! signalled or the actor system gives up.

use crate::actors::{start_node, NodeContext, NodeHandle};
use crate::behaviour::Behaviours;
use crate::config::Settings;
use crate::transport::{serve, AppState};
use actix_web::dev::Server;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A built node, ready to serve.
pub struct Application {
    addr: SocketAddr,
    server: Server,
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
        let listener = TcpListener::bind(settings.node.http_addr)?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(NodeContext::new(settings, behaviours));
        let node = start_node(ctx.clone())?;
        let state = AppState::new(ctx);
        let server = serve(listener, state.clone())?;
        state.ready.store(true, Ordering::Release);
        tracing::info!(node = %state.ctx.settings.node.name, %addr, "hubbub is listening");
        Ok(Self {
            addr,
            server,
            node,
            state,
        })
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

    /// Serves until SIGINT / SIGTERM (or the server handle is stopped), then stops the
    /// actor system. An actor system that gives up first ends the node with an error.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            mut node,
            state,
            ..
        } = self;
        let handle = server.handle();
        let result = tokio::select! {
            served = server => served,
            _ = node.stopped() => {
                handle.stop(false).await;
                Err(std::io::Error::other("the actor system stopped"))
            }
        };
        state.ready.store(false, Ordering::Release);
        node.stop();
        node.stopped().await;
        result
    }
}
