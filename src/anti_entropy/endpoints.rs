//! Anti-entropy's peer endpoints: a peer's tree exchange, and the hello of
//! a node that is starting ([`super::recovery`]). Both read RocksDB in bulk,
//! so they run on the blocking pool, tracked by the replica's task tracker.

use super::AeRequest;
use super::recovery::{self, Hello};
use crate::replica::Replica;
use crate::rpc::client::routes;
use crate::rpc::error::{PeerError, RemoteCode};
use crate::rpc::server::{Endpoints, Refusal};
use crate::storage::StorageError;

/// A storage failure is an answer (the peer logs and retries), not a refusal.
fn failure_as_answer<T>(
    answer: Result<Result<T, StorageError>, tokio::task::JoinError>,
) -> Result<T, PeerError> {
    match answer {
        Ok(result) => result.map_err(|e| PeerError::remote(RemoteCode::Storage, e)),
        Err(e) => Err(PeerError::remote(RemoteCode::Internal, e)),
    }
}

pub fn register(replica: &Replica, endpoints: &mut Endpoints) {
    let store = replica.clone();
    endpoints.add(routes::ANTI_ENTROPY, move |_from, request: AeRequest| {
        let replica = store.clone();
        async move {
            let answer = replica.blocking(move |s| super::answer(s, request)).await;
            Ok(failure_as_answer(answer))
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
