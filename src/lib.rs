//! quorumkv: a Dynamo-style distributed key-value store.
//!
//! Components, in dependency order (see `ARCHITECTURE.md`):
//! - [`ring`]: MD5 → partition → preference list, weighted; pure.
//! - [`version`]: dotted version vector sets and the causal context token; pure.
//! - [`storage`]: RocksDB, the versioned on-disk record, integrity digests.
//! - [`replica`]: a node's own copy of a key: read, coordinate a write, merge.
//! - [`rpc`]: internal HTTPS with mutual TLS between nodes; moves bytes only.
//! - [`membership`]: the member list, the ring built from it, reachability.
//! - [`coordinator`]: quorum reads and writes over the key's replicas,
//!   sloppy quorum included.
//! - [`handoff`]: delivers the hints fallbacks hold to their home replicas.
//! - [`anti_entropy`]: Merkle-tree exchanges between replicas; tombstone GC.
//! - [`api`]: the public HTTPS routes and the error → status mapping.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`config`], [`cli`], [`tls`], [`certs`]: configuration and TLS material.
//! - [`node`]: wiring and start/stop order; [`dev`]: a local cluster.
//! - [`bench`]: the load generator behind `quorumkv bench`.
//! - [`admin`]: `quorumkv cluster status` and `quorumkv get|put|delete`.

pub mod admin;
pub mod anti_entropy;
pub mod api;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod dev;
pub mod handoff;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod storage;
pub mod tls;
pub mod version;
