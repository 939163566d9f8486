//! Read repair: once a GET has been answered, wait for the slower replicas,
//! merge every reply, and send the merged object to each replica whose copy
//! lacks part of it (missing, stale, or unreadable after a failed integrity
//! check). Runs in a spawned task: a repair never fails or slows the read,
//! and a failed repair is logged, not returned.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use super::Coordinator;
use super::quorum::Gathered;
use crate::replica::ReplicateRequest;
use crate::storage::Object;

pub(super) fn spawn(
    coordinator: Coordinator,
    partition: u32,
    key: Bytes,
    gathered: Gathered<Option<Object>>,
    deadline: Instant,
) {
    tokio::spawn(async move {
        let replies = gathered.all_replies(deadline).await;
        let mut merged = Object::new();
        for found in replies.iter().filter_map(|r| r.result.as_ref().ok()).flatten() {
            merged.merge(found);
        }
        if merged.clock().is_empty() {
            return;
        }
        let stale = replies.iter().filter(|r| match &r.result {
            Ok(Some(copy)) => !copy.descends(&merged),
            Ok(None) => true,
            Err(_) => false,
        });
        for reply in stale {
            let req = ReplicateRequest { partition, key: key.clone(), object: merged.clone(), sync: false };
            match coordinator.send_replica(&reply.node, req, deadline).await {
                Ok(()) => {
                    coordinator.read_repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %reply.node, "read repair");
                }
                Err(error) => tracing::warn!(peer = %reply.node, %error, "read repair failed"),
            }
        }
    });
}
