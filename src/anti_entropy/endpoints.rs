//! Anti-entropy's peer endpoints: a peer's tree exchange, and the hello of
//! a node that is starting ([`super::recovery`]). Both read RocksDB in bulk,
//! so they run on the blocking pool, tracked by the replica's task tracker.
//!
//! A peer paces the exchanges it asks for by its own governor, but the
//! answers cost this node too (reads of trees, keys and objects), while it
//! may be the one whose clients are slow: with the governor on, answers
//! are paced by this node's share as well. Each request books an estimate
//! of its answer's bytes and waits until everything booked before is paid
//! (so concurrent askers are spread out, not woken together), at no less
//! than a quarter of the rate (a refill or transfer an asker owes must end
//! in bounded time), and never longer than [`MAX_ANSWER_WAIT`] (the asker
//! waits with a deadline, a draining node with its drain); the estimate is
//! corrected to the answer's encoded size once it is made. One pacer
//! serves every asker: a node answers all its peers together at its pace.

use std::sync::Arc;
use std::time::Duration;

use super::recovery::{self, Hello};
use super::{AeRequest, AeResponse};
use crate::governor::Pacer;
use crate::replica::Replica;
use crate::rpc::client::routes;
use crate::rpc::error::{PeerError, RemoteCode};
use crate::rpc::faults::Faults;
use crate::rpc::server::{Endpoints, Refusal};
use crate::storage::{Object, StorageError};

/// Longest an answer waits for its pacer: well inside the asker's call
/// deadline (30 s) and a stopping node's drain (8 s), even after one huge
/// object (the debt left paces the answers after it).
const MAX_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// What an answer is booked at before it is made (corrected once it is
/// made): a fetch at 1 KiB per key asked, within its budget; anything else
/// a few KiB. Not the budget itself: most fetches of a transfer or refill
/// are far smaller than it, and booking each at 1 MiB made a join under
/// load take 142 s instead of 41 s (benches/resize.sh).
fn estimate(request: &AeRequest) -> i64 {
    const SMALL: i64 = 4 << 10;
    match request {
        AeRequest::Fetch { keys, budget, .. } => {
            let per_key = i64::try_from(keys.len()).unwrap_or(i64::MAX).saturating_mul(1 << 10);
            per_key.min(i64::try_from(*budget).unwrap_or(i64::MAX)).max(SMALL)
        }
        _ => SMALL,
    }
}

/// A storage failure is an answer (the peer logs and retries), not a refusal.
fn failure_as_answer<T>(
    answer: Result<Result<T, StorageError>, tokio::task::JoinError>,
) -> Result<T, PeerError> {
    match answer {
        Ok(result) => result.map_err(|e| PeerError::remote(RemoteCode::Storage, e)),
        Err(e) => Err(PeerError::remote(RemoteCode::Internal, e)),
    }
}

/// The fault [`Faults::damage_fetch_answers`]: the first non-empty value of
/// `object` with one byte flipped, under its old digest. Done on the
/// encoded object (postcard writes a value's bytes as they are), so no
/// type needs a way to change a stored value in place. Unless the result
/// is that (the bytes matched elsewhere first, say in an actor id, which a
/// short value can), the object goes out intact: a test then sees no
/// refusal and fails, rather than passing on another change.
fn damaged(object: Object) -> Object {
    let Some(value) = object.siblings().iter().map(|s| s.value.bytes.clone()).find(|b| !b.is_empty()) else {
        return object;
    };
    let mut encoded = crate::rpc::codec::encode(&object);
    let Some(at) = encoded.windows(value.len()).position(|w| w == value.as_ref()) else { return object };
    encoded[at] ^= 0xff;
    match crate::rpc::codec::decode::<Object>(&encoded) {
        Ok(bad) if bad.clock() == object.clock() && bad.siblings().iter().any(|s| !s.value.digest_ok()) => {
            bad
        }
        _ => object,
    }
}

/// `answers`: the pacer of this node's answers (`None`: the governor is
/// off, answers are not paced). `faults`: this node's fault switches (see
/// [`Faults::damage_fetch_answers`]).
pub fn register(replica: &Replica, answers: Option<Arc<Pacer>>, faults: Faults, endpoints: &mut Endpoints) {
    let store = replica.clone();
    endpoints.add(routes::ANTI_ENTROPY, move |_from, request: AeRequest| {
        let replica = store.clone();
        let answers = answers.clone();
        let damage = faults.damages_fetch_answers();
        async move {
            let booked = estimate(&request);
            if let Some(pacer) = &answers {
                pacer.charge(booked);
                pacer.settle(Some(MAX_ANSWER_WAIT)).await;
            }
            let measure = answers.is_some();
            let answer = replica
                .blocking(move |s| {
                    // Sized here, on the blocking pool: a fetch may be MiBs.
                    super::answer(s, request).map(|a| {
                        let size = if measure { crate::rpc::codec::encode(&a).len() } else { 0 };
                        (a, size)
                    })
                })
                .await;
            let answer = failure_as_answer(answer);
            if let (Some(pacer), Ok((_, size))) = (&answers, &answer) {
                pacer.charge(i64::try_from(*size).unwrap_or(i64::MAX) - booked);
            }
            Ok(answer.map(|(a, _)| match a {
                AeResponse::Objects(mut fetched) if damage => {
                    for f in &mut fetched {
                        f.object = f.object.take().map(damaged);
                    }
                    AeResponse::Objects(fetched)
                }
                a => a,
            }))
        }
    });
    let store = replica.clone();
    endpoints.add(routes::HELLO, move |from, hello: Hello| {
        let replica = store.clone();
        async move {
            // A node speaks for itself only: its certificate must name `from`.
            if from != hello.from {
                return Err(Refusal::forbidden("a hello must come from the node it names"));
            }
            let answer = replica.blocking(move |s| recovery::answer_hello(s, &hello)).await;
            Ok(failure_as_answer(answer))
        }
    });
}
