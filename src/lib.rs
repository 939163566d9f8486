//! quorumkv: a Dynamo-style distributed key-value store.
//!
//! Modules, bottom layer first (the diagram and its check are in
//! `ARCHITECTURE.md`; an import never points up):
//! - [`ring`], [`version`]: MD5 → partition → preference list; dotted
//!   version vector sets and the causal context token. Pure.
//! - [`config`], [`metrics`], [`util`], [`worker`]: the node's settings, the
//!   Prometheus registry, the clock, the background-worker model.
//! - [`storage`]: RocksDB, one type per column family (objects, trees, the
//!   GC queue, hints, meta), the versioned on-disk record, integrity digests.
//! - [`rpc`]: internal HTTPS with mutual TLS between nodes; moves bytes and
//!   dispatches to the endpoints subsystems register. [`tls`]: rustls configs.
//! - [`replica`]: a node's own copy of a key: read, coordinate a write, merge.
//! - [`membership`]: the member list, the ring built from it, reachability.
//! - [`coordinator`]: quorum reads and writes over the key's replicas,
//!   sloppy quorum included.
//! - [`handoff`]: delivers the hints fallbacks hold to their home replicas.
//! - [`anti_entropy`]: Merkle-tree exchanges between replicas; tombstone GC.
//! - [`api`]: the public HTTPS routes and the error → status mapping.
//! - [`node`]: wiring and start/stop order; nothing imports it.
//!
//! This crate is the server. The `quorumkv` binary and its tools (the CLI,
//! `bench`, `dev`, admin commands, certificates) are the `quorumkv-tools`
//! crate in `tools/`, which uses this one through its public API.

pub mod anti_entropy;
pub mod api;
pub mod config;
pub mod coordinator;
pub mod governor;
pub mod handoff;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod storage;
pub mod tls;
pub mod util;
pub mod version;
pub mod worker;
