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
use crate::membership::history::Desire;

#[derive(Serialize)]
struct MemberView {
    id: String,
    /// `active`, `joining` (not yet in the read version) or `leaving` (out
    /// of the newest version, still handing over).
    state: &'static str,
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
            state: layout.state_of(&m.id),
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
        "speculative_reads": state.coordinator.speculative_reads(),
        "corrupt_reads": storage.corrupt_reads(),
        "hints": {
            "queued": storage.hints().counts(),
            "delivered": state.handoff.delivered.load(Ordering::Relaxed),
            "expired": state.handoff.expired.load(Ordering::Relaxed),
        },
        "anti_entropy": state.anti_entropy.snapshot(),
        "governor": state.governor.view(),
        // Partitions whose copy here may lack acknowledged writes (this
        // node lost its data and is being refilled): its answers for them
        // do not count toward R/PR.
        "unsynced_partitions": storage.unsynced().all().len(),
        "unsynced_at_start": state.unsynced_at_start.load(Ordering::Relaxed),
    });
    // A node out of every version that swept its copies to their homes
    // under the current layout and holds no hint: nothing it holds is
    // needed any more, so it may be stopped and its directory deleted.
    let ae = &state.anti_entropy;
    let drained = !layout.is_member(membership.self_id())
        && ae.strays_swept_version.load(Ordering::Relaxed) >= layout.version()
        && ae.strays_left.load(Ordering::Relaxed) == 0
        && storage.hints().counts().iter().all(|(_, n)| *n == 0);
    Json(json!({
        "node": membership.self_id(),
        "drained": drained,
        "partitions": layout.partitions(),
        "layout_version": layout.version(),
        "layout": layout_view(&layout),
        "members": members,
        "stats": stats,
        "workers": state.workers.statuses(),
    }))
}

/// The history as `/cluster` shows it: versions in force, the read
/// version, each node's tracker marks, and the members that left.
fn layout_view(layout: &crate::membership::Layout) -> serde_json::Value {
    use crate::membership::history::Tracker;
    let history = layout.history();
    let versions: Vec<u64> = history.versions().iter().map(|v| v.number()).collect();
    let newest = versions.len() - 1;
    let progress: serde_json::Map<String, serde_json::Value> = history
        .tracked()
        .into_iter()
        .map(|id| {
            let at = |t| history.reached(t, id, newest);
            let marks = json!({ "ack": at(Tracker::Ack), "sync": at(Tracker::Sync), "sync_ack": at(Tracker::SyncAck) });
            (id.to_string(), marks)
        })
        .collect();
    let mut left: Vec<&str> = history
        .wishes()
        .filter(|(id, w)| !matches!(w.desire, Desire::Member(_)) && !layout.is_member(id))
        .map(|(id, _)| id)
        .collect();
    left.sort();
    json!({
        "cluster": history.cluster(),
        "version": layout.version(),
        "read_version": layout.read_version(),
        "versions": versions,
        "newest_reached": progress,
        "left": left,
    })
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

/// `POST /cluster/members/{id}/leave`: the member hands its partitions to
/// their new owners and then drops out; `GET /cluster` on it shows when it
/// holds nothing the cluster needs (`"left"`).
pub async fn leave(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    change_member(&state, &id, Desire::Leaving).await
}

/// `POST /cluster/members/{id}/remove`: takes a dead member out; its
/// partitions are rebuilt from the surviving copies.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    change_member(&state, &id, Desire::Removed).await
}

async fn change_member(state: &AppState, id: &str, desire: Desire) -> Result<Response, ApiError> {
    let membership = state.coordinator.membership();
    let layout = membership.layout();
    if !layout.is_member(id) {
        return Err(ApiError::NotMember(id.to_string()));
    }
    let leaving = !matches!(desire, Desire::Member(_));
    let others = layout.history().wanted().iter().filter(|m| m.id != id).count();
    if leaving && others == 0 {
        return Err(ApiError::LayoutRefused("the last member cannot leave".into()));
    }
    let me = membership.self_id().to_string();
    membership.update(|h| h.request(&me, id, desire)).map_err(|e| ApiError::LayoutRefused(e.to_string()))?;
    crate::membership::gossip::broadcast(membership, state.coordinator.peers()).await;
    let layout = membership.layout();
    tracing::info!(member = id, version = layout.version(), "membership change committed");
    Ok((StatusCode::ACCEPTED, Json(json!({ "member": id, "layout_version": layout.version() })))
        .into_response())
}

#[derive(serde::Deserialize)]
pub struct WeightBody {
    weight: u32,
}

/// `POST /cluster/members/{id}/weight` with `{"weight": W}`: the member's
/// share of partitions follows (its partitions move as for a join).
pub async fn weight(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let WeightBody { weight } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidBody(format!("expected {{\"weight\": N}}: {e}")))?;
    if weight == 0 {
        return Err(ApiError::InvalidBody(
            "weight must be at least 1 (use leave to take a member out)".into(),
        ));
    }
    let layout = state.coordinator.membership().layout();
    let Some(member) = layout.history().current().members().iter().find(|m| m.id == id) else {
        return Err(ApiError::NotMember(id));
    };
    let member = crate::config::MemberConfig { weight, ..member.clone() };
    change_member(&state, &id, Desire::Member(member)).await
}

/// `POST /cluster/members/{id}/join`, sent to node `id` itself (started
/// with `auto_join = false`): it asks the members to add it.
pub async fn join(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let membership = state.coordinator.membership();
    if id != membership.self_id() {
        return Err(ApiError::LayoutRefused(format!(
            "this is {}: send the join to the joining node itself",
            membership.self_id()
        )));
    }
    let version =
        crate::membership::join::join_now(membership, state.coordinator.peers(), membership.self_member())
            .await
            .map_err(|e| ApiError::LayoutRefused(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "member": id, "layout_version": version }))).into_response())
}
