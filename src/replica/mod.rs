//! What a node does with its own copy of a key: read it, coordinate a client
//! write into it, or merge a version another replica sends. The RPC messages
//! for those requests live here, next to the logic that answers them.
//!
//! RocksDB reads and un-synced writes touch only memory and the OS page
//! cache (a few µs), so they run inline on the async worker: measured here,
//! handing each to tokio's blocking pool cost ~25 % of PUT throughput in
//! thread wake-ups. A synced write (`DW`) waits for the disk and is moved
//! to the blocking pool so it cannot stall other requests.

mod endpoints;
#[cfg(test)]
mod model;
pub mod stamp;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::ObjectLimits;
use crate::rpc::error::{PeerError, RemoteCode};
use crate::storage::{Found, Object, Storage, StorageError, StoredValue};
use crate::util::now_ms;
use crate::version::VersionVector;
use stamp::Stamper;
use tokio_util::task::TaskTracker;

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
    /// False when this replica may lack acknowledged writes of the key (it
    /// lost its data and is not yet repaired, or its record is corrupt):
    /// the object is still merged, but the answer does not count toward
    /// R or PR, so R + W > N keeps its promise after a disk loss.
    pub authoritative: bool,
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

/// A client's write as its coordinating replica applies it.
#[derive(Debug)]
pub struct ClientWrite {
    /// What the client had seen: the new version supersedes it.
    pub context: VersionVector,
    pub value: StoredValue,
    /// The request's `N`: the key's replica count grows to it.
    pub n: usize,
    /// Sync the WAL before answering (`DW`).
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
    Task(#[from] tokio::task::JoinError),
    /// A fallback's conditional hint write stored nothing and named no reason.
    #[error("fallback write stored nothing")]
    NothingStored,
    /// This replica's copy failed its integrity check: it does not know
    /// which siblings the client's context supersedes or keeps, so another
    /// replica coordinates the write.
    #[error("local copy of the key is corrupt")]
    CorruptLocal,
    /// The write would take the object past a configured limit; nothing
    /// was stored.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The client's causal context names a counter of this node that it
    /// never minted (see `stamp::StampError::Unminted`).
    #[error("{0}")]
    ForgedContext(String),
}

impl ReplicaError {
    /// The failure as a peer (or the coordinator, for its own replica) sees it.
    pub fn to_peer(&self) -> PeerError {
        let code = match self {
            ReplicaError::Storage(_) => RemoteCode::Storage,
            ReplicaError::Task(_) | ReplicaError::NothingStored => RemoteCode::Internal,
            ReplicaError::CorruptLocal => RemoteCode::Corrupt,
            ReplicaError::Limit(_) => RemoteCode::Limit,
            ReplicaError::ForgedContext(_) => RemoteCode::Forged,
        };
        PeerError::remote(code, self)
    }
}

/// A client write refused because the object would grow past a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LimitError {
    #[error(
        "the key would have {siblings} siblings (tombstones, which reads do not show, included), more than max_siblings = {limit}; read it and write with its context (a 404 carries one too) to resolve them"
    )]
    Siblings { siblings: usize, limit: usize },
    #[error(
        "the object would be {bytes} bytes with its {siblings} siblings, more than max_object_bytes = {limit}"
    )]
    ObjectBytes { bytes: usize, siblings: usize, limit: usize },
}

/// Bytes of every sibling's value plus a per-sibling allowance for its
/// metadata: what the limits and the byte budgets of repair count.
pub fn object_bytes(object: &Object) -> usize {
    object.siblings().iter().map(|s| s.value.bytes.len() + s.value.content_type.len() + 64).sum()
}

fn check_limits(object: &Object, limits: &ObjectLimits) -> Result<(), LimitError> {
    let siblings = object.siblings().len();
    if siblings > limits.max_siblings {
        return Err(LimitError::Siblings { siblings, limit: limits.max_siblings });
    }
    // Values only, as configured: one value of `max_value_bytes` always fits.
    let bytes: usize = object.siblings().iter().map(|s| s.value.bytes.len()).sum();
    if bytes > limits.max_object_bytes {
        return Err(LimitError::ObjectBytes { bytes, siblings, limit: limits.max_object_bytes });
    }
    Ok(())
}

/// A node's replica: cheap to clone (one reference count), since each
/// client write it coordinates takes a copy into a blocking storage call,
/// and so does each peer batch on its way to `apply_batch`.
#[derive(Debug, Clone)]
pub struct Replica(Arc<Shared>);

/// What every copy of a [`Replica`] shares. Copied field by field, each
/// copy would take five reference counts (the coordinator had the same
/// cost, see `coordinator::Shared`).
#[derive(Debug)]
pub struct Shared {
    storage: Arc<Storage>,
    node_id: Arc<str>,
    stamper: Arc<Stamper>,
    limits: ObjectLimits,
    /// Serialises fallback writes of one key (across all the homes this
    /// node holds hints of it for): see `coordinate_as_fallback`.
    fallback_locks: Arc<[std::sync::Mutex<()>]>,
    /// The node's task tracker: blocking storage calls run on it, so a
    /// shutdown waits for a call whose caller has gone (a cancelled round,
    /// a dropped request) before the database closes.
    tasks: TaskTracker,
}

impl std::ops::Deref for Replica {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Replica {
    pub fn new(
        storage: Arc<Storage>,
        node_id: &str,
        limits: ObjectLimits,
        tasks: TaskTracker,
    ) -> Result<Replica, StorageError> {
        let stamper = Arc::new(Stamper::open(&storage)?);
        let fallback_locks = (0..256).map(|_| std::sync::Mutex::new(())).collect();
        let shared = Shared { storage, node_id: node_id.into(), stamper, limits, fallback_locks, tasks };
        Ok(Replica(Arc::new(shared)))
    }

    /// Runs `f` over the storage on the blocking pool, tracked (see `tasks`).
    pub async fn blocking<T: Send + 'static, E: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<T, E>, tokio::task::JoinError> {
        let storage = self.storage.clone();
        self.tasks.spawn_blocking(move || f(&storage)).await
    }

    /// The actor id this node stamps on the versions it coordinates as a
    /// home: `node_id.epoch`. The epoch is renewed whenever the node may
    /// have forgotten dots it minted (a new or restored directory, an
    /// unclean start, a replaced corrupt record): a version vector entry
    /// claims every dot of its actor up to the counter, so an actor may
    /// only go on minting while its whole history of each key is held
    /// here. Counters come from [`stamp`], so they never repeat either
    /// (which keeps a key whose record GC removed safe).
    pub fn actor(&self) -> String {
        format!("{}.{:08x}", self.node_id, self.storage.meta().epoch())
    }

    /// The actor of this node's fallback writes: `node_id.epoch.f<gen>`,
    /// where the generation changes whenever this node forgets a hint.
    fn fallback_actor(&self) -> String {
        format!("{}.f{:x}", self.actor(), self.storage.hints().fallback_generation())
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The `lease` worker: keeps the dot lease ahead of the clock, once a
    /// second, until cancelled (the fsync happens here, not on the write path).
    pub async fn keep_lease_ahead(self, worker: crate::worker::Worker) {
        loop {
            let stamper = self.stamper.clone();
            let renewed = self.blocking(move |s| stamper.keep_ahead(s)).await;
            if let Ok(Err(error)) = renewed {
                tracing::error!(%error, "cannot renew the dot lease; writes renew it themselves");
                worker.failed(error);
            }
            worker.round_done();
            if !worker.idle(std::time::Duration::from_secs(1)).await {
                return;
            }
        }
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
        self.blocking(f).await?.map_err(ReplicaError::from)
    }

    pub async fn read(&self, partition: u32, key: Bytes) -> Result<Option<Object>, ReplicaError> {
        self.storage_call(false, move |s| s.objects().get(partition, &key)).await
    }

    /// This node's copy, or the hint it holds for `hint`'s home replica.
    /// A corrupt record, or a partition not yet repaired after a data loss,
    /// gives a non-authoritative answer.
    pub fn read_one(&self, r: &ReadRequest) -> Result<ReadResponse, ReplicaError> {
        match r.hint.as_deref() {
            Some(home) if home != &*self.node_id => {
                let object = self.storage.hints().get(home, r.partition, &r.key)?;
                // A hint may be stale too after a lost tail or a restore.
                Ok(ReadResponse { object, authoritative: !self.storage.unsynced().recovering() })
            }
            _ => {
                let unsynced = self.storage.unsynced().contains(r.partition);
                Ok(match self.storage.objects().get_found(r.partition, &r.key)? {
                    Found::Nothing => ReadResponse { object: None, authoritative: !unsynced },
                    Found::Object(o) => ReadResponse { object: Some(o), authoritative: !unsynced },
                    Found::Corrupt => ReadResponse { object: None, authoritative: false },
                })
            }
        }
    }

    /// Answers a batch of reads from peers.
    pub fn read_batch(&self, requests: &[ReadRequest]) -> Vec<Result<ReadResponse, PeerError>> {
        requests.iter().map(|r| self.read_one(r).map_err(|e| e.to_peer())).collect()
    }

    /// Merges a batch of objects from peers: this node's own copies in one
    /// RocksDB write batch, hints for other nodes in another. An object
    /// with a value that does not match its digest is refused (nothing
    /// stored for it), alone: the others of the batch are still written.
    pub async fn apply_batch(
        &self,
        requests: Vec<ReplicateRequest>,
    ) -> Result<Vec<Result<ReplicateResponse, PeerError>>, ReplicaError> {
        let sync = requests.iter().any(|r| r.sync);
        let me = self.node_id.clone();
        let stored = self
            .storage_call(sync, move |s| {
                let is_hint = |r: &ReplicateRequest| r.hint.as_deref().is_some_and(|h| h != &*me);
                let (hinted, own): (Vec<usize>, Vec<usize>) =
                    (0..requests.len()).partition(|&i| is_hint(&requests[i]));
                let mut stored = vec![false; requests.len()];
                if !own.is_empty() {
                    let keys: Vec<(u32, &[u8])> =
                        own.iter().map(|&i| (requests[i].partition, requests[i].key.as_ref())).collect();
                    let written = s.objects().modify_batch(&keys, sync, |j, current| {
                        merge_into(current, &requests[own[j]].object)
                    })?;
                    for (&i, w) in own.iter().zip(&written) {
                        stored[i] = w.is_some();
                    }
                }
                if !hinted.is_empty() {
                    let items: Vec<(&str, u32, &[u8])> = hinted
                        .iter()
                        .map(|&i| {
                            let r = &requests[i];
                            (r.hint.as_deref().unwrap_or_default(), r.partition, r.key.as_ref())
                        })
                        .collect();
                    let written = s.hints().modify_if(&items, sync, now_ms(), |j, current| {
                        Some(merge_into(current, &requests[hinted[j]].object))
                    })?;
                    for (&i, w) in hinted.iter().zip(&written) {
                        stored[i] = w.is_some();
                    }
                }
                Ok(stored)
            })
            .await?;
        let refused = || PeerError::remote(RemoteCode::Corrupt, StorageError::ValueDigest);
        Ok(stored
            .into_iter()
            .map(|ok| if ok { Ok(ReplicateResponse { durable: sync }) } else { Err(refused()) })
            .collect())
    }

    /// Applies a client write with this node as coordinator: the new version
    /// supersedes what `context` covers and gets a fresh dot of this actor;
    /// the key's replica count grows to `n` if the write asked for more.
    /// Refused, with nothing stored, when the object would pass a limit.
    pub async fn coordinate(
        &self,
        partition: u32,
        key: Bytes,
        write: ClientWrite,
    ) -> Result<Object, ReplicaError> {
        let ClientWrite { context, value, n, sync } = write;
        let this = self.clone();
        let mut refused = None;
        let (written, refused) = self
            .storage_call(sync, move |s| {
                // The value was hashed from the request's body on this node.
                let vouched = Some((value.bytes.clone(), value.digest));
                let written = s.objects().modify_vouching(partition, &key, sync, vouched, |found| {
                    let mut object = match found {
                        Found::Nothing => Object::new(),
                        Found::Object(o) => o,
                        Found::Corrupt => return None,
                    };
                    object.widen(n);
                    match this.stamp(&mut object, &context, value) {
                        Ok(()) => Some(object),
                        Err(e) => {
                            refused = Some(e);
                            None
                        }
                    }
                })?;
                Ok((written, refused))
            })
            .await?;
        match (written, refused) {
            (Some(object), _) => Ok(object),
            (None, Some(error)) => Err(error),
            (None, None) => Err(ReplicaError::CorruptLocal),
        }
    }

    /// `object.update` with a counter from this node's [`Stamper`], then the
    /// limits check (on the result, so a write that resolves siblings is
    /// let through even when the key is over its sibling limit; a delete is
    /// never refused).
    fn stamp(
        &self,
        object: &mut Object,
        context: &VersionVector,
        value: StoredValue,
    ) -> Result<(), ReplicaError> {
        self.stamp_as(&self.actor(), object, context, value)
    }

    fn stamp_as(
        &self,
        actor: &str,
        object: &mut Object,
        context: &VersionVector,
        value: StoredValue,
    ) -> Result<(), ReplicaError> {
        // A delete only replaces what it covers: never refused by a limit.
        let deleting = value.deleted;
        // A refused counter leaves `object` changed but unwritten: the
        // caller stores nothing when this returns an error.
        let mut minted = Ok(());
        object.update_with(
            context,
            actor,
            |least| match self.stamper.mint(&self.storage, least) {
                Ok(c) => c,
                Err(e) => {
                    minted = Err(e);
                    least
                }
            },
            value,
        );
        match minted {
            Ok(()) => {}
            Err(stamp::StampError::Storage(e)) => return Err(e.into()),
            Err(e @ stamp::StampError::Unminted { .. }) => {
                return Err(ReplicaError::ForgedContext(e.to_string()));
            }
        }
        if !deleting {
            check_limits(object, &self.limits)?;
        }
        Ok(())
    }

    /// Applies a client write on a node that is none of the key's home
    /// replicas (every one was unreachable): the result is held only as a
    /// hint for `home`.
    ///
    /// The dot's actor is [`Replica::fallback_actor`]: a fallback keeps no
    /// copy once its hints are delivered, so its actor changes whenever it
    /// forgets one, and in between its object merges every hint it holds
    /// for the key (under a per-key lock), so it holds every dot that actor
    /// minted. The key's clock then grows by one entry per forgetting, not
    /// per write: a node cut off from a hot key's homes reuses one actor.
    pub async fn coordinate_as_fallback(
        &self,
        home: String,
        partition: u32,
        key: Bytes,
        write: ClientWrite,
    ) -> Result<Object, ReplicaError> {
        let ClientWrite { context, value, n, sync } = write;
        let this = self.clone();
        let mut refused: Option<ReplicaError> = None;
        let (written, refused) = self
            .storage_call(sync, move |s| {
                let stripe = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (partition, key.as_ref()).hash(&mut h);
                    h.finish() as usize % this.fallback_locks.len()
                };
                let _one = this.fallback_locks[stripe].lock().unwrap_or_else(|p| p.into_inner());
                let held = s.hints().of_key(partition, &key)?;
                let items = [(home.as_str(), partition, key.as_ref())];
                let mut value = Some(value);
                let written = s.hints().modify_if(&items, sync, now_ms(), |_, current| {
                    let mut object = current.unwrap_or_default();
                    for other in &held {
                        object.merge(other);
                    }
                    let v = value.take()?;
                    object.widen(n);
                    match this.stamp_as(&this.fallback_actor(), &mut object, &context, v) {
                        Ok(()) => Some(object),
                        Err(e) => {
                            refused = Some(e);
                            None
                        }
                    }
                })?;
                Ok((written.into_iter().next().flatten(), refused))
            })
            .await?;
        match (written, refused) {
            (Some(object), _) => Ok(object),
            (None, Some(error)) => Err(error),
            (None, None) => Err(ReplicaError::NothingStored),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionVector;

    fn object(text: &'static str) -> Object {
        let mut o = Object::new();
        let value = StoredValue::new(Bytes::from_static(text.as_bytes()), "text/plain".into(), 1, false);
        o.update(&VersionVector::new(), "writer", value);
        o
    }

    fn text(answer: &Result<ReadResponse, PeerError>) -> Option<Bytes> {
        let answer = answer.as_ref().expect("answered");
        answer.object.as_ref().map(|o| o.siblings()[0].value.bytes.clone())
    }

    /// A peer's read batch mixes this node's own copies (read together) with
    /// hints it holds for others: each answer must be its own request's.
    #[test]
    fn a_read_batch_answers_each_request_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path(), 1 << 20).unwrap());
        let replica =
            Replica::new(storage.clone(), "me", ObjectLimits::default(), TaskTracker::new()).unwrap();
        let own: Vec<(u32, &[u8])> = vec![(1, b"a"), (2, b"b")];
        storage.objects().modify_batch(&own, false, |i, _| object(["own a", "own b"][i])).unwrap();
        let hinted: Vec<(&str, u32, &[u8])> = vec![("other", 1, b"a"), ("other", 3, b"h")];
        storage
            .hints()
            .modify_if(&hinted, false, now_ms(), |i, _| Some(object(["hint a", "hint h"][i])))
            .unwrap();
        let read = |partition, key: &'static [u8], hint: Option<&str>| ReadRequest {
            partition,
            key: Bytes::from_static(key),
            hint: hint.map(str::to_string),
        };
        let requests = [
            read(3, b"h", Some("other")),
            read(2, b"b", None),
            read(1, b"a", Some("other")),
            read(9, b"missing", None),
            read(1, b"a", Some("me")),
            read(2, b"b", None),
        ];
        let answers = replica.read_batch(&requests);
        let texts: Vec<Option<Bytes>> = answers.iter().map(text).collect();
        let want = ["hint h", "own b", "hint a", "", "own a", "own b"];
        let want: Vec<Option<Bytes>> =
            want.iter().map(|w| (!w.is_empty()).then(|| Bytes::from_static(w.as_bytes()))).collect();
        assert_eq!(texts, want);
    }

    /// A replicated object whose value was damaged on the way is refused
    /// alone; the batch's other copies (own and hinted) are stored.
    #[tokio::test]
    async fn a_damaged_copy_is_refused_and_the_rest_of_its_batch_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path(), 1 << 20).unwrap());
        let replica =
            Replica::new(storage.clone(), "me", ObjectLimits::default(), TaskTracker::new()).unwrap();
        let mut damaged = object("sent");
        let mut v = damaged.siblings()[0].value.clone();
        v.bytes = Bytes::from_static(b"SENT");
        damaged = Object::new();
        damaged.update(&VersionVector::new(), "writer", v);
        let copy = |partition, key: &'static [u8], object: Object, hint: Option<&str>| ReplicateRequest {
            partition,
            key: Bytes::from_static(key),
            object,
            sync: false,
            hint: hint.map(str::to_string),
        };
        let requests = vec![
            copy(1, b"a", object("a"), None),
            copy(1, b"d", damaged.clone(), None),
            copy(2, b"h", damaged, Some("other")),
            copy(2, b"h2", object("h2"), Some("other")),
        ];
        let answers = replica.apply_batch(requests).await.unwrap();
        let ok: Vec<bool> = answers.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, false, false, true]);
        assert!(storage.objects().get(1, b"a").unwrap().is_some());
        assert!(storage.objects().get(1, b"d").unwrap().is_none());
        assert!(storage.hints().get("other", 2, b"h").unwrap().is_none());
        assert!(storage.hints().get("other", 2, b"h2").unwrap().is_some());
    }
}
