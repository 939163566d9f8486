//! What a node does with its own copy of a key: read it, coordinate a client
//! write into it, or merge a version another replica sends. The RPC messages
//! for those requests live here, next to the logic that answers them.
//!
//! RocksDB reads and un-synced writes touch only memory and the OS page
//! cache (a few µs), so they run inline on the async worker: measured here,
//! handing each to tokio's blocking pool cost ~25 % of PUT throughput in
//! thread wake-ups. A synced write (`DW`) waits for the disk and is moved
//! to the blocking pool so it cannot stall other requests.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{Found, Object, Storage, StorageError, StoredValue};
use crate::version::VersionVector;

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    pub partition: u32,
    pub key: Bytes,
    /// Read the hint held for this home replica instead of the node's own
    /// copy (a sloppy read from a fallback).
    pub hint: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadResponse {
    pub object: Option<Object>,
}

/// "Merge this object into your copy": the full causal state travels, not a
/// delta, so a replica that missed earlier writes can still tell which of
/// its siblings the new version supersedes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateRequest {
    pub partition: u32,
    pub key: Bytes,
    pub object: Object,
    /// Sync the WAL before answering (the request asked for `DW`).
    pub sync: bool,
    /// Set when the receiver is a fallback: hold the object as a hint for
    /// this home replica, to hand it off once the home is reachable.
    pub hint: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateResponse {
    pub durable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("storage task failed: {0}")]
    Task(String),
    /// This replica's copy failed its integrity check, so it cannot mint
    /// the next dot safely (it might reuse one its peers already hold).
    #[error("local copy of the key is corrupt")]
    CorruptLocal,
}

#[derive(Debug, Clone)]
pub struct Replica {
    storage: Arc<Storage>,
    node_id: Arc<str>,
}

impl Replica {
    pub fn new(storage: Arc<Storage>, node_id: &str) -> Replica {
        Replica { storage, node_id: node_id.into() }
    }

    /// The actor id this node stamps on the versions it coordinates:
    /// `node_id.epoch`, unique per incarnation of the data directory (and
    /// renewed when a corrupt record had to be replaced).
    pub fn actor(&self) -> String {
        format!("{}.{:08x}", self.node_id, self.storage.epoch())
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Runs a storage call inline, or on the blocking pool when it syncs.
    async fn storage_call<T: Send + 'static>(
        &self,
        sync: bool,
        f: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        if !sync {
            return f(&self.storage).map_err(ReplicaError::from);
        }
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&storage))
            .await
            .map_err(|e| ReplicaError::Task(e.to_string()))?
            .map_err(ReplicaError::from)
    }

    pub async fn read(&self, partition: u32, key: Bytes) -> Result<Option<Object>, ReplicaError> {
        self.storage_call(false, move |s| s.get(partition, &key)).await
    }

    /// This node's copy, or the hint it holds for `hint`'s home replica.
    pub fn read_one(&self, r: &ReadRequest) -> Result<Option<Object>, ReplicaError> {
        let found = match r.hint.as_deref() {
            Some(home) if home != &*self.node_id => self.storage.hint_get(home, r.partition, &r.key),
            _ => self.storage.get(r.partition, &r.key),
        };
        found.map_err(ReplicaError::from)
    }

    /// Answers a batch of reads from peers.
    pub fn read_batch(&self, requests: &[ReadRequest]) -> Vec<Result<ReadResponse, String>> {
        requests
            .iter()
            .map(|r| self.read_one(r).map(|object| ReadResponse { object }).map_err(|e| e.to_string()))
            .collect()
    }

    /// Merges a batch of objects from peers: this node's own copies in one
    /// RocksDB write batch, hints for other nodes in another.
    pub async fn apply_batch(
        &self,
        requests: Vec<ReplicateRequest>,
    ) -> Result<Vec<Result<ReplicateResponse, String>>, ReplicaError> {
        let sync = requests.iter().any(|r| r.sync);
        let count = requests.len();
        let me = self.node_id.clone();
        self.storage_call(sync, move |s| {
            let is_hint = |r: &ReplicateRequest| r.hint.as_deref().is_some_and(|h| h != &*me);
            let (hinted, own): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| is_hint(r));
            if !own.is_empty() {
                let keys: Vec<(u32, &[u8])> = own.iter().map(|r| (r.partition, r.key.as_ref())).collect();
                s.modify_batch(&keys, sync, |i, current| merge_into(current, &own[i].object))?;
            }
            if !hinted.is_empty() {
                let items: Vec<(&str, u32, &[u8])> = hinted
                    .iter()
                    .map(|r| (r.hint.as_deref().unwrap_or_default(), r.partition, r.key.as_ref()))
                    .collect();
                s.modify_hints(&items, sync, now_ms(), |i, current| merge_into(current, &hinted[i].object))?;
            }
            Ok(())
        })
        .await?;
        Ok((0..count).map(|_| Ok(ReplicateResponse { durable: sync })).collect())
    }

    /// Applies a client write with this node as coordinator: the new version
    /// supersedes what `context` covers and gets a fresh dot of this actor.
    pub async fn coordinate(
        &self,
        partition: u32,
        key: Bytes,
        context: VersionVector,
        value: StoredValue,
        sync: bool,
    ) -> Result<Object, ReplicaError> {
        let actor = self.actor();
        let written = self
            .storage_call(sync, move |s| {
                s.modify(partition, &key, sync, |found| {
                    let mut object = match found {
                        Found::Nothing => Object::new(),
                        Found::Object(o) => o,
                        Found::Corrupt => return None,
                    };
                    object.update(&context, &actor, value);
                    Some(object)
                })
            })
            .await?;
        written.ok_or(ReplicaError::CorruptLocal)
    }

    /// Applies a client write on a node that is none of the key's home
    /// replicas (every one was unreachable): the result is held only as a
    /// hint for `home`. The dot gets an actor of its own, `node.epoch.rand`:
    /// this node keeps no copy once the hint is delivered, so it could not
    /// tell which counters it already used for the key.
    pub async fn coordinate_as_fallback(
        &self,
        home: String,
        partition: u32,
        key: Bytes,
        context: VersionVector,
        value: StoredValue,
        sync: bool,
    ) -> Result<Object, ReplicaError> {
        let actor = format!("{}.{:08x}", self.actor(), rand::random::<u32>());
        self.storage_call(sync, move |s| {
            let items = [(home.as_str(), partition, key.as_ref())];
            let mut value = Some(value);
            let written = s.modify_hints(&items, sync, now_ms(), |_, current| {
                let mut object = current.unwrap_or_default();
                if let Some(v) = value.take() {
                    object.update(&context, &actor, v);
                }
                object
            })?;
            Ok(written.into_iter().next().unwrap_or_default())
        })
        .await
    }
}

/// Wall-clock milliseconds since the Unix epoch (hint ages, tombstone ages).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn merge_into(current: Option<Object>, incoming: &Object) -> Object {
    match current {
        Some(mut mine) => {
            mine.merge(incoming);
            mine
        }
        None => incoming.clone(),
    }
}
