//! Routes and the actix-web server.

use super::gate::Gate;
use super::inbound_budget::InboundBudget;
use super::websocket;
use crate::actors::NodeContext;
use crate::cluster::membership::MembershipMessage;
use crate::telemetry::metrics::{COMMIT, VERSION};
use actix_web::{dev::Server, web, App, HttpResponse, HttpServer};
use serde_json::json;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The chat page, embedded in the binary.
const CHAT_PAGE: &str = include_str!("chat.html");
/// The JavaScript client library (clients/js), served as is at `/hubbub.js`: the chat
/// page imports it, and so may any page (no build step anywhere).
const CLIENT_JS: &str = include_str!("../../clients/js/hubbub.js");

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
    /// The server API (`/api/`), None when `[api] keys` is empty.
    pub api: Option<Arc<crate::api::Api>>,
    /// Bytes of messages still arriving from clients, `limits.node_inbound_bytes`.
    pub inbound: Arc<InboundBudget>,
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
            inbound: InboundBudget::new(
                ctx.settings.limits.node_inbound_bytes,
                Some(ctx.metrics.clone()),
            ),
            api: crate::api::Api::new(ctx.clone()),
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

    /// Why the node takes no new clients now, or None when it is ready: what `/readyz`
    /// answers and what refuses a WebSocket upgrade, so the two never disagree.
    pub fn not_ready(&self) -> Option<NotReady> {
        let actors_up = self.ctx.sessions().is_some() && self.ctx.rooms().is_some();
        if !self.ready.load(Ordering::Acquire) || !actors_up {
            return Some(NotReady::Leaving);
        }
        let unready = match self.ctx.ports() {
            Some(ports) => ports.log.unready(),
            None => Some("this node is starting: the room logs are not started".to_owned()),
        };
        unready.map(NotReady::NoQuorum)
    }
}

/// Why a node is not ready (see [`AppState::not_ready`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Draining for shutdown (or the actor system stopped): clients go elsewhere.
    Leaving,
    /// Some shard of the room logs cannot order messages from here: the node is
    /// starting (the reason begins `this node is starting`) or has no quorum.
    NoQuorum(String),
}

impl NotReady {
    /// What a refused client is told.
    pub fn message(&self) -> String {
        match self {
            Self::Leaving => {
                "the node is leaving (shutting down); connect to another node".to_owned()
            }
            Self::NoQuorum(reason) => reason.clone(),
        }
    }
}

/// Starts serving clients on an already bound listener, over TLS when `tls` is given
/// (`[http.tls]`, built by `transport::tls`); the returned server runs until its
/// handle stops it.
///
/// `/metrics`, `/cluster` and the server API (`/api/`) are served here only while there
/// is no admin listener (`operator_routes`: `[admin] addr` is empty); with one they are
/// [`serve_admin`]'s, and this listener answers 404 for them.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<super::tls::Https>,
    operator_routes: bool,
) -> std::io::Result<Server> {
    let workers = state.ctx.settings.node.thread_count();
    // actix-server counts connections per worker, and accepts for a worker only while
    // it is under its share: `limits.max_http_connections` in all.
    let per_worker = state
        .ctx
        .settings
        .limits
        .max_http_connections
        .div_ceil(workers.max(1));
    let api = state.api.clone().filter(|_| operator_routes);
    let socketio_enabled = state.ctx.settings.socketio.enabled;
    let (tls, relay_tls) = match tls {
        Some(https) => (Some(https.server), https.relay),
        None => (None, None),
    };
    let sio = web::Data::new(super::socketio::SocketIo::new(
        &state.ctx.settings,
        state.ctx.cluster.clone(),
        relay_tls,
    ));
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .app_data(sio.clone())
            .service(get("/", chat_page))
            .service(get("/hubbub.js", client_js))
            .service(get("/ws", websocket::upgrade))
            // Engine.IO answers every method itself (a POST is polling's upload).
            .service(
                web::resource(["/socket.io/", "/socket.io"])
                    .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                    .to(move |req, body, state, sio| {
                        super::socketio::endpoint(req, body, state, sio, socketio_enabled)
                    }),
            )
            .service(get("/healthz", healthz))
            .service(get("/readyz", readyz))
            // Never changed from the port clients use; says where it is.
            .service(web::resource("/cluster/nodes").to(super::cluster_admin::admin_only));
        if operator_routes {
            app.service(get("/cluster", cluster))
                .service(get("/metrics", super::scrape::metrics))
                .configure(|config| crate::api::routes(config, api.clone()))
        } else {
            app
        }
    })
    // Small frames (a reply right after a broadcast) must not wait for the client's
    // delayed ACK: without this, Nagle adds about 40 ms to such pairs. actix-web sets
    // it on every accepted socket, plain or TLS (there once the handshake is done).
    .tcp_nodelay(true)
    // The Application owns shutdown (signals, then a drain of the WebSockets).
    .disable_signals()
    .shutdown_timeout(1)
    .max_connections(per_worker)
    .workers(workers);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Starts the operator's listener (`[admin] addr`): `/metrics`, `/cluster` and the
/// server API (`/api/`), and `/healthz` and `/readyz` as on the public one, plain
/// HTTP. An `App` of its own, so that what is only for operators and the
/// application's backend never reaches the port clients use.
pub fn serve_admin(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let api = state.api.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(get("/healthz", healthz))
            .service(get("/readyz", readyz))
            .service(get("/cluster", cluster))
            .service(get("/metrics", super::scrape::metrics))
            .service(
                web::resource("/cluster/nodes")
                    .app_data(web::PayloadConfig::new(
                        super::cluster_admin::MAX_BODY_BYTES,
                    ))
                    .route(web::get().to(super::cluster_admin::nodes))
                    .route(web::post().to(super::cluster_admin::change)),
            )
            .configure(|config| crate::api::routes(config, api.clone()))
    })
    .disable_signals()
    .shutdown_timeout(1)
    // A scrape now and then, and the API's calls (which wait on actors without
    // holding the worker): one worker is plenty, and keeps threads for clients.
    .workers(1)
    .listen(listener)?;
    Ok(server.run())
}

/// A resource answering GET at `path`. Any other method gets 405 with
/// `Allow: GET` (actix-web's resource default), not the 404 of an unknown path.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(web::get().to(handler))
}

async fn chat_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CHAT_PAGE)
}

async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(CLIENT_JS)
}

/// Alive: the process answers HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: the actor system is up, the node is not draining, and every shard of the
/// room logs has a leader this node knows, so it can order messages in every room.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.not_ready() {
        None => HttpResponse::Ok().json(json!({
            "status": "ready",
            "node": state.ctx.settings.node.name,
            "connections": state.open_connections(),
        })),
        Some(NotReady::Leaving) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not ready", "reason": NotReady::Leaving.message() })),
        Some(NotReady::NoQuorum(reason)) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "no quorum", "reason": reason })),
    }
}

/// The cluster as this node sees it (membership's status, the rooms running here, each
/// shard's voters and leader) and the
/// build it runs (`version`, `commit`); 404 on a node that is not clustered.
async fn cluster(state: web::Data<AppState>) -> HttpResponse {
    let Some(membership) = state.ctx.membership() else {
        return HttpResponse::NotFound().json(json!({
            "error": "not clustered",
            "version": VERSION,
            "commit": COMMIT,
        }));
    };
    match crate::actors::ask(&membership, MembershipMessage::Status).await {
        Ok(status) => {
            let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
            let rooms = match state.ctx.rooms() {
                Some(rooms) => crate::actors::ask(&rooms, |reply| {
                    crate::actors::RoomSupervisorMessage::Names { reply }
                })
                .await
                .unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(host) = state.ctx.cluster.as_ref().and_then(|c| c.shard_host()) {
                body["shards"] = crate::cluster::room_log::shard_status(&host);
                let (nodes, source) = host.node_list();
                body["nodes"] = json!(nodes);
                body["nodes_source"] = json!(source.as_str());
                let placement = host.placement();
                let shard_of: serde_json::Map<String, serde_json::Value> = rooms
                    .iter()
                    .map(|room| (room.clone(), json!(placement.shard_of(room))))
                    .collect();
                body["room_shards"] = json!(shard_of);
            }
            body["rooms"] = json!(rooms);
            body["version"] = json!(VERSION);
            body["commit"] = json!(COMMIT);
            HttpResponse::Ok().json(body)
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": "cluster membership is not answering"})),
    }
}
