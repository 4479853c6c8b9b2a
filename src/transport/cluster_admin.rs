//! `/cluster/nodes` on the admin listener: the cluster's node list, and changing it
//! (adding, removing or replacing a node) as a Raft membership change of every shard.
//!
//! Served on the admin listener only (`[admin] addr`): a change of who votes must not
//! be reachable from the port clients use. Without an admin listener the public one
//! answers 404 saying so.

use super::http::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;

/// The largest body `POST /cluster/nodes` reads, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /cluster/nodes`: either `nodes` (the whole new list), or `add` and/or
/// `remove` (names to add to or take from the current list).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn error(
    status: actix_web::http::StatusCode,
    code: &str,
    message: impl Into<String>,
) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": code, "message": message.into() }))
}

fn not_clustered() -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_clustered",
        "this node runs alone: it has no cluster node list",
    )
}

/// `GET /cluster/nodes`: the node list in force, where it comes from, and this node's
/// configured one.
pub async fn nodes(state: web::Data<AppState>) -> HttpResponse {
    let Some(host) = state.ctx.cluster.as_ref().and_then(|c| c.shard_host()) else {
        return not_clustered();
    };
    let (nodes, source) = host.node_list();
    HttpResponse::Ok().json(json!({
        "nodes": nodes,
        "source": source.as_str(),
        "configured": host.configured_nodes(),
    }))
}

/// `POST /cluster/nodes`: makes the new list the cluster's (ordered in the room logs,
/// so every node follows it); each shard's leader then moves its voters. Answers once
/// the list is committed, with the list; 400 for a list that cannot be, 503 when the
/// cluster cannot order it now.
pub async fn change(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(host) = state.ctx.cluster.as_ref().and_then(|c| c.shard_host()) else {
        return not_clustered();
    };
    if body.len() > MAX_BODY_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        );
    }
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "expected {{\"add\": [names]}}, {{\"remove\": [names]}} or \
                     {{\"nodes\": [names]}}: {e}"
                ),
            )
        }
    };
    let (current, _) = host.node_list();
    let wanted: BTreeSet<String> = match (
        change.nodes,
        change.add.is_empty() && change.remove.is_empty(),
    ) {
        (Some(_), false) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give either `nodes`, or `add` and `remove`, not both",
            )
        }
        (None, true) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "nothing to change: give `nodes`, `add` or `remove`",
            )
        }
        (Some(nodes), true) => nodes.into_iter().collect(),
        (None, false) => {
            if let Some(unknown) = change.remove.iter().find(|n| !current.contains(n)) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{unknown:?} is not in the node list {current:?}"),
                );
            }
            let mut wanted: BTreeSet<String> = current.iter().cloned().collect();
            wanted.extend(change.add);
            for gone in &change.remove {
                wanted.remove(gone);
            }
            wanted
        }
    };
    let wanted: Vec<String> = wanted.into_iter().collect();
    if wanted == current {
        return HttpResponse::Ok().json(json!({ "nodes": current, "changed": false }));
    }
    match host.set_nodes(wanted).await {
        Ok(nodes) => {
            tracing::info!(nodes = ?nodes, previous = ?current, "the cluster's node list was changed through POST /cluster/nodes");
            HttpResponse::Ok().json(json!({ "nodes": nodes, "changed": true, "previous": current }))
        }
        Err(crate::cluster::raft::host::SetNodesError::Invalid(reason)) => {
            error(StatusCode::BAD_REQUEST, "bad_request", reason)
        }
        Err(crate::cluster::raft::host::SetNodesError::Unavailable(reason)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
        }
    }
}

/// `/cluster/nodes` on the public listener when there is no admin listener.
pub async fn admin_only() -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        "admin_only",
        "the node list is read and changed on the admin listener only: set [admin] addr",
    )
}
