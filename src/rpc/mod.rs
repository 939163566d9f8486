//! Internal transport between nodes: HTTPS with mutual TLS on the peer port,
//! a compact versioned binary body. Message types live with the subsystem
//! that owns them (`replica`, `coordinator`); this module only moves bytes.

pub mod batch;
pub mod client;
pub mod codec;
pub mod error;
pub mod faults;
pub mod identity;
pub mod metrics;
pub mod server;

/// HTTP/2 flow-control windows of peer connections, both directions.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
pub const H2_CONNECTION_WINDOW: u32 = 32 << 20;
