//! The server HTTP API: how the application's backend talks to hubbub (docs/api.md;
//! the OpenAPI document is docs/api.yaml, served at `/api/openapi.yaml`).
//!
//! Owns: the `/api/` routes and their JSON, the API keys (`[api] keys`, compared in
//! constant time, never logged) and each key's rate limit ([`keys`]), the bound on
//! request bodies, and the mapping of coded errors (the protocol's family,
//! `protocol::codes`) to HTTP statuses ([`error`]). Served on the admin listener when
//! `[admin] addr` is set, else on the public one (`transport::http`); with no key
//! configured it is not mounted at all, and every `/api/` path is 404.
//!
//! Must not know: how rooms order messages or how nodes talk. The calls
//! ([`calls`]) ask the actors what a client's requests ask them (the RoomSupervisor
//! and Room for rooms, Presence for users), so a server publish takes a client
//! publish's path and every call works from any node of a cluster.

mod calls;
pub mod error;
pub mod keys;

pub use calls::{MAX_BROADCAST_ROOMS, SYSTEM_USER};
pub use error::ApiError;

use crate::actors::NodeContext;
use actix_web::dev::Service;
use actix_web::web;
use std::sync::Arc;

/// The OpenAPI 3 document of the whole API, served as it is.
pub const OPENAPI: &str = include_str!("../../docs/api.yaml");

/// Declares the calls once: [`CALLS`] lists exactly what [`routes`] mounts.
macro_rules! calls {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every call, as (method, path): what the routes serve, and what
        /// docs/api.yaml must describe (tests/api/openapi.rs holds the two equal).
        pub const CALLS: &[(&str, &str)] = &[$((stringify!($method), concat!("/api", $path))),*];

        fn mount(scope: actix_web::Scope) -> actix_web::Scope {
            scope$(.service(web::resource($path).route(web::$method().to($handler))))*
        }
    };
}

calls! {
    post "/publish" => calls::publish,
    post "/broadcast" => calls::broadcast,
    post "/direct" => calls::direct,
    post "/disconnect" => calls::disconnect,
    post "/subscribe" => calls::subscribe,
    post "/unsubscribe" => calls::unsubscribe,
    post "/presence" => calls::presence,
    post "/presence_count" => calls::presence_count,
    post "/history" => calls::history,
    post "/rooms" => calls::rooms,
    post "/user" => calls::user,
    get "/openapi.yaml" => calls::openapi,
}

/// What the API's routes share: the node and the keys with their buckets.
pub struct Api {
    pub ctx: Arc<NodeContext>,
    pub keys: keys::Keys,
}

impl Api {
    /// The API of a node, or None when `[api] keys` is empty (the API is off).
    pub fn new(ctx: Arc<NodeContext>) -> Option<Arc<Self>> {
        let keys = keys::Keys::new(&ctx.settings.api);
        keys.any().then(|| Arc::new(Self { ctx, keys }))
    }
}

/// Mounts the API under `/api/` on an actix-web app (nothing when it is off).
pub fn routes(config: &mut web::ServiceConfig, api: Option<Arc<Api>>) {
    let Some(api) = api else {
        return;
    };
    let metrics = api.ctx.metrics.clone();
    let scope = web::scope("/api").app_data(web::Data::from(api));
    let scope = mount(scope)
        .default_service(web::to(calls::unknown))
        // Every answer counted by call and status (`hubbub_api_calls`).
        .wrap_fn(move |req, service| {
            let call = CALLS
                .iter()
                .find(|(_, path)| *path == req.path())
                .map_or("unknown", |(_, path)| &path["/api/".len()..]);
            let metrics = metrics.clone();
            let answer = service.call(req);
            async move {
                let answer = answer.await?;
                metrics.api_call(call, answer.status().as_u16());
                Ok(answer)
            }
        });
    config.service(scope);
}
