//! quorumkv's tools: everything the `quorumkv` binary does besides running
//! a node, kept out of the server library (`quorumkv`) so the server does
//! not build or link what only they need (clap, rcgen, HDR histograms, the
//! benchmark's distributions).
//!
//! - [`cli`]: the command line; `serve`'s flags come from the config's keys.
//! - [`admin`]: `quorumkv cluster status`, `get`, `put`, `delete`, `health`
//!   over the public API.
//! - [`bench`]: `quorumkv bench`, the load generator and its report.
//! - [`dev`]: a local cluster (certificates, configs, `cluster.json`).
//! - [`certs`]: a cluster CA and node certificates.
//! - [`sim`]: `quorumkv sim`, membership at scale, simulated without sockets.

pub mod admin;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod dev;
pub mod sim;
