//! Routes and the actix-web server.

use super::gate::Gate;
use super::websocket;
use crate::actors::NodeContext;
use crate::cluster::membership::MembershipMessage;
use actix_web::{dev::Server, web, App, HttpResponse, HttpServer};
use serde_json::json;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::ServerConfig;

/// The chat page, embedded in the binary.
const CHAT_PAGE: &str = include_str!("chat.html");

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<NodeContext>,
    /// One permit per open WebSocket, `limits.max_connections` in all.
    pub connections: Arc<Semaphore>,
    /// False until the node can take clients, and again once it starts draining.
    pub ready: Arc<AtomicBool>,
    /// Origin, per-address limits and authentication of every upgrade.
    pub gate: Arc<Gate>,
}

impl AppState {
    /// State for a node whose actor system is running.
    pub fn new(ctx: Arc<NodeContext>, gate: Gate) -> Self {
        // Every reason shows at 0 from the start, so rates work before a failure.
        let reasons: Vec<&'static str> = crate::auth::FailureReason::ALL
            .iter()
            .map(|r| r.as_str())
            .collect();
        ctx.metrics.auth_failure_reasons(&reasons);
        let max = ctx.settings.limits.max_connections;
        Self {
            ctx,
            connections: Arc::new(Semaphore::new(max)),
            ready: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(gate),
        }
    }

    /// WebSocket connections open right now.
    pub fn open_connections(&self) -> usize {
        self.ctx.settings.limits.max_connections - self.connections.available_permits()
    }
}

/// Starts serving on an already bound listener, over TLS when `tls` is given
/// (`[http.tls]`, built by `transport::tls`); the returned server runs until its
/// handle stops it.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<ServerConfig>,
) -> std::io::Result<Server> {
    let workers = state.ctx.settings.node.thread_count();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/", web::get().to(chat_page))
            .route("/ws", web::get().to(websocket::upgrade))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/cluster", web::get().to(cluster))
            .route("/metrics", web::get().to(super::scrape::metrics))
    })
    // Small frames (a reply right after a broadcast) must not wait for the client's
    // delayed ACK: without this, Nagle adds about 40 ms to such pairs. actix-web sets
    // it on every accepted socket, plain or TLS (there once the handshake is done).
    .tcp_nodelay(true)
    // The Application owns shutdown (signals, then a drain of the WebSockets).
    .disable_signals()
    .shutdown_timeout(1)
    .workers(workers);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

async fn chat_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CHAT_PAGE)
}

/// Alive: the process answers HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: the actor system is up, the node is not draining, and (when clustered) its
/// view holds a majority of the cluster, so it can change rooms.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let actors_up = state.ctx.sessions().is_some() && state.ctx.rooms().is_some();
    let quorum = state
        .ctx
        .cluster
        .as_ref()
        .is_none_or(|cluster| cluster.view().has_quorum());
    if state.ready.load(Ordering::Acquire) && actors_up && quorum {
        HttpResponse::Ok().json(json!({
            "status": "ready",
            "node": state.ctx.settings.node.name,
            "connections": state.open_connections(),
        }))
    } else {
        let status = if quorum { "not ready" } else { "no quorum" };
        HttpResponse::ServiceUnavailable().json(json!({ "status": status }))
    }
}

async fn cluster(state: web::Data<AppState>) -> HttpResponse {
    let Some(membership) = state.ctx.membership() else {
        return HttpResponse::NotFound().json(json!({"error": "not clustered"}));
    };
    match crate::actors::ask(&membership, MembershipMessage::Status).await {
        Ok(status) => {
            let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
            let owned = match state.ctx.rooms() {
                Some(rooms) => crate::actors::ask(&rooms, |reply| {
                    crate::actors::RoomSupervisorMessage::Owned { reply }
                })
                .await
                .unwrap_or_default(),
                None => Vec::new(),
            };
            body["rooms_owned"] = json!(owned);
            HttpResponse::Ok().json(body)
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": "cluster membership is not answering"})),
    }
}
