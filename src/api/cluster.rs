//! Cluster introspection and health: `/cluster`, `/cluster/preference-list`,
//! `/health/live`, `/health/ready`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::keys::key_from_path;

#[derive(Serialize)]
struct MemberView {
    id: String,
    client_url: String,
    peer_url: String,
    weight: u32,
    reachable: bool,
    partitions: usize,
}

/// Members as this node sees them: reachability is this node's own view
/// (real RPC outcomes plus the failure detector's probes).
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let membership = state.coordinator.membership();
    let layout = membership.layout();
    let members: Vec<MemberView> = layout
        .members()
        .iter()
        .map(|m| (m, membership.is_reachable(&m.id)))
        .map(|(m, reachable)| MemberView {
            id: m.id.clone(),
            client_url: m.client_url.clone(),
            peer_url: m.peer_url.clone(),
            weight: m.weight,
            reachable,
            partitions: layout.partitions_of(&m.id).len(),
        })
        .collect();
    let storage = state.coordinator.replica().storage();
    let stats = json!({
        "read_repairs": state.coordinator.read_repairs(),
        "corrupt_reads": storage.corrupt_reads(),
        "hints": {
            "queued": storage.hints().counts(),
            "delivered": state.handoff.delivered.load(Ordering::Relaxed),
            "expired": state.handoff.expired.load(Ordering::Relaxed),
        },
        "anti_entropy": state.anti_entropy.snapshot(),
        // Partitions whose copy here may lack acknowledged writes (this
        // node lost its data and is being refilled): its answers for them
        // do not count toward R/PR.
        "unsynced_partitions": storage.unsynced().all().len(),
        "unsynced_at_start": state.unsynced_at_start.load(Ordering::Relaxed),
    });
    Json(json!({
        "node": membership.self_id(),
        "partitions": layout.partitions(),
        "layout_version": layout.version(),
        "members": members,
        "stats": stats,
        "workers": state.workers.statuses(),
    }))
}

pub async fn preference_list(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_from_path(&uri, "/cluster/preference-list/")?;
    let layout = state.coordinator.membership().layout();
    let partition = layout.partition_of(&key);
    let nodes = layout.homes(partition);
    Ok(Json(json!({
        "key": String::from_utf8_lossy(&key),
        "partition": partition,
        "nodes": nodes,
    }))
    .into_response())
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" }))).into_response()
    } else if state.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "starting" }))).into_response()
    }
}
