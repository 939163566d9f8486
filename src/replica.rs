//! What a node does with its own copy of a key: read it, coordinate a client
//! write into it, or merge a version another replica sends. The RPC messages
//! for those requests live here, next to the logic that answers them.
//!
//! RocksDB calls block, so each runs on tokio's blocking pool rather than on
//! an async worker thread.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{Object, Storage, StorageError, StoredValue};
use crate::version::VersionVector;

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    pub partition: u32,
    pub key: Bytes,
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
}

#[derive(Debug, Clone)]
pub struct Replica {
    storage: Arc<Storage>,
    /// The actor id this node stamps on the versions it coordinates:
    /// `node_id.epoch`, unique per incarnation of the data directory.
    actor: Arc<str>,
}

impl Replica {
    pub fn new(storage: Arc<Storage>, node_id: &str) -> Replica {
        let actor = format!("{node_id}.{:08x}", storage.epoch());
        Replica { storage, actor: actor.into() }
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&storage))
            .await
            .map_err(|e| ReplicaError::Task(e.to_string()))?
            .map_err(ReplicaError::from)
    }

    pub async fn read(&self, partition: u32, key: Bytes) -> Result<Option<Object>, ReplicaError> {
        self.blocking(move |s| s.get(partition, &key)).await
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
        let actor = self.actor.clone();
        self.blocking(move |s| {
            s.modify(partition, &key, sync, |current| {
                let mut object = current.unwrap_or_default();
                object.update(&context, &actor, value);
                object
            })
        })
        .await
    }

    /// Merges another replica's object into this one's copy.
    pub async fn apply(
        &self,
        partition: u32,
        key: Bytes,
        object: Object,
        sync: bool,
    ) -> Result<Object, ReplicaError> {
        self.blocking(move |s| {
            s.modify(partition, &key, sync, |current| match current {
                Some(mut mine) => {
                    mine.merge(&object);
                    mine
                }
                None => object,
            })
        })
        .await
    }
}
