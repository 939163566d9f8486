//! Durable storage of versioned objects in RocksDB. The only module that
//! imports `rocksdb`.
//!
//! One database, one type per column family, all sharing one handle and one
//! lock table ([`db`]):
//!
//! - [`Objects`] (`objects`): each key's versioned object, and every write
//!   to it together with the index changes it implies;
//! - [`Trees`] (`tree`): the anti-entropy hash tree of each partition;
//! - [`GcQueue`] (`gc_queue`): tombstones in the order GC may reap them;
//! - [`Hints`] (`hints`): hinted handoff's queue for unreachable homes;
//! - [`Meta`] and [`Unsynced`] (`meta`): the actor epoch and this node's
//!   history, and the partitions it may have lost writes of.
//!
//! [`Storage`] opens them together and hands each out; it has no data
//! methods of its own.

mod db;
pub mod gc_queue;
pub mod hints;
mod meta;
pub mod metrics;
mod objects;
pub mod record;
pub mod tree;
mod unsynced;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use db::DiskUsage;
pub use gc_queue::GcQueue;
pub use hints::{Hint, Hints};
pub use meta::{Meta, Sighting};
pub use objects::Objects;
pub use record::{Object, StoredValue};
pub use tree::Trees;
pub use unsynced::Unsynced;

/// What a read-modify-write found for its key.
#[derive(Debug)]
pub enum Found {
    Nothing,
    Object(Object),
    /// A record is stored but failed its integrity check.
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt metadata: {0}")]
    CorruptMeta(String),
    /// A value a write brought in did not match its digest: nothing was
    /// stored (see `record::Fresh`).
    #[error("a value does not match its digest; nothing was stored")]
    ValueDigest,
}

pub struct Storage {
    db: Arc<db::Db>,
    objects: Objects,
    trees: Arc<Trees>,
    gc_queue: Arc<GcQueue>,
    hints: Hints,
    meta: Arc<Meta>,
    unsynced: Unsynced,
}

/// The database closes when its last user is gone: after a clean shutdown
/// every write has been made, so the marker says "nothing was lost".
impl Drop for Storage {
    fn drop(&mut self) {
        if let Err(error) = self.meta.mark_clean_shutdown() {
            tracing::warn!(%error, "cannot mark the clean shutdown; the next start renews the actor epoch");
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.db.rocks.path()).finish()
    }
}

impl Storage {
    /// Opens (creating if needed) the database at `path`. Fails if another
    /// process holds it (RocksDB's LOCK file) or it is unreadable.
    pub fn open(path: &Path, block_cache_bytes: usize) -> Result<Storage, StorageError> {
        let mut db = db::Db::open(path, block_cache_bytes)?;
        gc_queue::migrate_v1(&mut db)?;
        let db = Arc::new(db);
        let meta = Arc::new(Meta::open(db.clone())?);
        let trees = Arc::new(Trees::open(db.clone())?);
        let gc_queue = Arc::new(GcQueue::new(db.clone()));
        Ok(Storage {
            objects: Objects::new(db.clone(), trees.clone(), gc_queue.clone(), meta.clone()),
            hints: Hints::open(db.clone())?,
            unsynced: Unsynced::open(db.clone())?,
            trees,
            gc_queue,
            meta,
            db,
        })
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    pub fn gc_queue(&self) -> &GcQueue {
        &self.gc_queue
    }

    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn unsynced(&self) -> &Unsynced {
        &self.unsynced
    }

    /// Size, compaction debt and index memory over every column family,
    /// from RocksDB's own estimates.
    pub fn disk_usage(&self) -> DiskUsage {
        self.db.disk_usage()
    }

    /// How many stored records failed their integrity check since start.
    pub fn corrupt_reads(&self) -> u64 {
        self.db.corrupt_reads()
    }

    /// Asks RocksDB to hold off (or resume) its automatic compactions; see
    /// [`db::Db::defer_compactions`]. Returns whether they are now held off.
    pub fn defer_compactions(&self, defer: bool) -> Result<bool, StorageError> {
        self.db.defer_compactions(defer)
    }
}
