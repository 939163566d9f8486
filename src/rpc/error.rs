//! The error that crosses the peer boundary. A call to a peer, or one item
//! of a batched call, fails in one of a few ways a caller must tell apart:
//! whether the peer can have applied the request decides whether it may be
//! sent elsewhere (a forwarded write), counted as lost, or retried. The
//! answering side serialises its failures as [`PeerError::Remote`] with a
//! code, so the caller gets the same type back after batching instead of
//! a string (after Garage's `util/error.rs` and `rpc_helper.rs`).

use serde::{Deserialize, Serialize};

use super::client::RpcError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PeerError {
    /// Certainly not received: no connection, an unknown peer, or refused
    /// before any work (425). Safe to send elsewhere.
    #[error("not delivered to {peer}: {reason}")]
    NotDelivered { peer: String, reason: String },
    /// Not sent: too many calls to the peer are pending here.
    #[error("too many calls pending to peer {peer}")]
    QueueFull { peer: String },
    /// No answer within the deadline; the peer may have applied it.
    #[error("peer {peer} did not answer within {ms} ms")]
    TimedOut { peer: String, ms: u64 },
    /// The connection broke after sending; the peer may have applied it.
    #[error("lost on the way to or from {peer}: {reason}")]
    Lost { peer: String, reason: String },
    /// The peer (or this node's own replica) ran the request and failed.
    #[error("{code:?}: {message}")]
    Remote { code: RemoteCode, message: String },
}

/// How a request that was run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteCode {
    /// Its storage failed (a disk error).
    Storage,
    /// Its copy of the key failed the integrity check, or a value sent to
    /// it did not match its digest (nothing was stored).
    Corrupt,
    /// The write would pass a configured limit.
    Limit,
    /// The causal context names a counter the replica never minted.
    Forged,
    /// A fallback asked for a key it holds no hint of: its "nothing" is no
    /// answer.
    NotHeld,
    /// The peer answered with this HTTP status (refused the call).
    Status(u16),
    /// The peer's answer did not decode, or had the wrong number of items.
    BadAnswer,
    /// Anything else (a task that panicked).
    Internal,
}

impl PeerError {
    pub fn remote(code: RemoteCode, message: impl std::fmt::Display) -> PeerError {
        PeerError::Remote { code, message: message.to_string() }
    }

    /// True when the peer cannot have received the request, so sending it
    /// elsewhere cannot apply it twice.
    pub fn not_delivered(&self) -> bool {
        matches!(self, PeerError::NotDelivered { .. } | PeerError::QueueFull { .. })
    }
}

impl From<RpcError> for PeerError {
    fn from(error: RpcError) -> PeerError {
        let not_delivered = error.not_delivered();
        let reason = error.to_string();
        match error {
            _ if not_delivered => {
                let peer = match error {
                    RpcError::UnknownPeer(peer)
                    | RpcError::Connect { peer, .. }
                    | RpcError::Status { peer, .. } => peer,
                    _ => String::new(),
                };
                PeerError::NotDelivered { peer, reason }
            }
            RpcError::Timeout { peer, ms } => PeerError::TimedOut { peer, ms: ms as u64 },
            RpcError::Transport { peer, .. } => PeerError::Lost { peer, reason },
            RpcError::Status { status, .. } => PeerError::remote(RemoteCode::Status(status), reason),
            _ => PeerError::remote(RemoteCode::BadAnswer, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_known_after_conversion_and_survives_the_wire() {
        let refused = PeerError::from(RpcError::Status { peer: "b".into(), status: 425 });
        assert!(refused.not_delivered(), "425 is refused before any work: {refused}");
        let other_version = PeerError::from(RpcError::Status { peer: "b".into(), status: 415 });
        assert!(other_version.not_delivered(), "a body in another wire format is not looked at");
        let cut = PeerError::from(RpcError::Connect { peer: "b".into(), reason: "refused".into() });
        assert!(cut.not_delivered());
        let slow = PeerError::from(RpcError::Timeout { peer: "b".into(), ms: 700 });
        assert_eq!(slow, PeerError::TimedOut { peer: "b".into(), ms: 700 });
        assert!(!slow.not_delivered(), "a timed-out call may have been applied");
        let failed = PeerError::from(RpcError::Status { peer: "b".into(), status: 503 });
        assert!(matches!(failed, PeerError::Remote { code: RemoteCode::Status(503), .. }));
        // Items of a batch answer travel encoded; the kind comes back whole.
        let items: Vec<Result<u8, PeerError>> =
            vec![Ok(1), Err(PeerError::remote(RemoteCode::Corrupt, "bad digest")), Err(slow.clone())];
        let back: Vec<Result<u8, PeerError>> =
            super::super::codec::decode(&super::super::codec::encode(&items)).unwrap();
        assert_eq!(back, items);
    }
}
