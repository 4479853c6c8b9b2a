//! `GET /metrics`: the node's Prometheus scrape.
//!
//! Sets the gauges that mirror state kept elsewhere (open connections from the
//! connection semaphore, running rooms from the room directory, outbound bytes from the
//! node's outbound budget), then encodes the node's registry (`telemetry::metrics`).
//! Open to anyone who can reach the HTTP port, as `/healthz` is: it holds counts only,
//! never a user, room or secret.

use super::http::AppState;
use crate::telemetry::metrics::CONTENT_TYPE;
use actix_web::{web, HttpResponse};

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.ctx.metrics;
    metrics.set_connections(state.open_connections());
    metrics.set_rooms(state.ctx.room_directory().len());
    metrics.set_outbound_bytes(state.ctx.outbound.total());
    metrics.set_inbound_bytes(state.inbound.total());
    match metrics.encode() {
        Ok(text) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}
