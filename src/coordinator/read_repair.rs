//! Read repair: once a GET has been answered, wait briefly for the slower
//! replicas, merge every reply, and send the merged object to each replica
//! whose copy lacks part of it (missing, stale, or unreadable after a failed
//! integrity check). It sees the replicas the read asked: all N with
//! `read_fanout = "all"`, the first R and any spares with the quorum
//! fan-out, where anti-entropy mends the replicas no read asked. Runs in a
//! spawned task: a repair never fails or slows the read, and a failed
//! repair is logged, not returned. Repairs in flight are bounded (one is
//! skipped when the bound is reached) and cancelled at shutdown, so they
//! never keep the database open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use super::quorum::Gathered;
use crate::metrics::{Registry, counter};
use crate::replica::{ReadResponse, ReplicateRequest};
use crate::storage::Object;

/// The read counters (repairs, speculative reads), read at scrape time.
#[derive(Debug)]
struct ReadCollector {
    repairs: Arc<AtomicU64>,
    speculative: Arc<AtomicU64>,
}

pub(super) fn register(repairs: &Arc<AtomicU64>, speculative: &Arc<AtomicU64>, registry: &mut Registry) {
    let c = ReadCollector { repairs: repairs.clone(), speculative: speculative.clone() };
    registry.register_collector(Box::new(c));
}

impl Collector for ReadCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let repairs = self.repairs.load(Ordering::Relaxed);
        counter(&mut e, "read_repairs", "Replicas brought up to date by read repair", repairs)?;
        let speculative = self.speculative.load(Ordering::Relaxed);
        let help = "Spare replicas a read asked because its first replicas were slow";
        counter(&mut e, "speculative_reads", help, speculative)
    }
}

/// How long after the answer late replies are still awaited.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    coordinator: Coordinator,
    cancel: CancellationToken,
    partition: u32,
    key: Bytes,
    gathered: Gathered<ReadResponse>,
    deadline: Instant,
) {
    let Ok(slot) = coordinator.repair_slots.clone().try_acquire_owned() else {
        gathered.finish_in_background(&coordinator.tasks);
        return;
    };
    let tasks = coordinator.tasks.clone();
    tasks.spawn(async move {
        let _slot = slot;
        tokio::select! {
            () = cancel.cancelled() => {}
            () = repair(&coordinator, partition, key, gathered, deadline) => {}
        }
    });
}

async fn repair(
    coordinator: &Coordinator,
    partition: u32,
    key: Bytes,
    gathered: Gathered<ReadResponse>,
    deadline: Instant,
) {
    let replies = gathered.all_replies(deadline.min(Instant::now() + LATE_REPLY_WAIT)).await;
    let mut merged = Object::new();
    for found in replies.iter().filter_map(|r| r.result.as_ref().ok()).filter_map(|a| a.object.as_ref()) {
        merged.merge(found);
    }
    if merged.clock().is_empty() {
        return;
    }
    // The key's own homes only: a read asking for a larger N than the key
    // was written with does not place it on more homes (anti-entropy and
    // GC would not know of that copy).
    let layout = coordinator.membership.layout();
    let homes = layout.replicas_of(partition, merged.replicas(layout.default_replicas()));
    let send_deadline = Instant::now() + coordinator.timeout;
    let sends = replies
        .iter()
        // Only home replicas: a fallback's answer came from a hint, which
        // handoff delivers; repairing it would leave a stray copy there.
        .filter(|r| r.primary && homes.contains(&r.node))
        .filter(|r| match &r.result {
            Ok(ReadResponse { object: Some(copy), .. }) => !copy.descends(&merged),
            Ok(ReadResponse { object: None, .. }) => true,
            Err(_) => false,
        })
        .map(|reply| async {
            let req = ReplicateRequest {
                partition,
                key: key.clone(),
                object: merged.clone(),
                sync: false,
                hint: None,
            };
            match coordinator.send_replica(&reply.node, req, send_deadline).await {
                Ok(()) => {
                    coordinator.read_repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %reply.node, "read repair");
                }
                Err(error) => tracing::warn!(peer = %reply.node, %error, "read repair failed"),
            }
        });
    futures::future::join_all(sends).await;
}
