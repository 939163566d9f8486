//! Anti-entropy's peer endpoints: a peer's tree exchange, and the hello of
//! a node that is starting ([`super::recovery`]). Both read RocksDB in bulk,
//! so they run on the blocking pool.

use std::sync::Arc;

use super::recovery::{self, Hello, HelloAnswer};
use super::{AeRequest, AeResponse};
use crate::rpc::client::routes;
use crate::rpc::server::{Endpoints, Refusal};
use crate::storage::Storage;

pub fn register(storage: &Arc<Storage>, endpoints: &mut Endpoints) {
    let store = storage.clone();
    endpoints.add(routes::ANTI_ENTROPY, move |_from, request: AeRequest| {
        let storage = store.clone();
        async move {
            let answer = tokio::task::spawn_blocking(move || super::answer(&storage, request)).await;
            let answer: Result<AeResponse, String> = match answer {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            Ok(answer)
        }
    });
    let store = storage.clone();
    endpoints.add(routes::HELLO, move |from, hello: Hello| {
        let storage = store.clone();
        async move {
            // A node speaks for itself only: its certificate must name `from`.
            if from != hello.from {
                return Err(Refusal::forbidden("a hello must come from the node it names"));
            }
            let answer = tokio::task::spawn_blocking(move || recovery::answer_hello(&storage, &hello)).await;
            let answer: Result<HelloAnswer, String> = match answer {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            Ok(answer)
        }
    });
}
