//! Internal transport between nodes: HTTPS with mutual TLS on the peer port,
//! a compact versioned binary body. Message types live with the subsystem
//! that owns them (`replica`, `coordinator`); this module only moves bytes.

pub mod batch;
pub mod client;
pub mod codec;
pub mod server;
