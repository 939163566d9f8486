//! The integration test binary: real nodes, real TLS, real RocksDB, real
//! sockets on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod admin;
mod bench;
mod clients;
mod cluster;
mod durability;
mod faults;
mod guards;
mod input;
mod kv;
mod membership;
mod netcut;
mod observe;
mod process;
mod repair;
