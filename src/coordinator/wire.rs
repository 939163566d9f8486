//! What the coordinator answers, and the forwarded write: the types that
//! travel between nodes (in `/rpc/put`) and up to the API.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Consistency;
use crate::replica::LimitError;
use crate::storage::Object;
use crate::storage::StoredValue;
use crate::version::VersionVector;

/// Which quorum a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumKind {
    R,
    Pr,
    W,
    Pw,
    Dw,
}

impl QuorumKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumKind::R => "r",
            QuorumKind::Pr => "pr",
            QuorumKind::W => "w",
            QuorumKind::Pw => "pw",
            QuorumKind::Dw => "dw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CoordinatorError {
    #[error("{} quorum not met: {answered} of the required {required} replicas answered (n={n})", kind.as_str())]
    QuorumNotMet { kind: QuorumKind, required: usize, answered: usize, n: usize },
    #[error("the value's digest does not match its bytes")]
    DigestMismatch,
    #[error("this replica's copy of the key is corrupt")]
    CorruptLocal,
    /// The write would take the object past a configured limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The causal context names a counter the coordinator never minted.
    #[error("{0}")]
    ForgedContext(String),
}

/// What an answer rests on, sent to clients as `Quorum-Report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumReport {
    Read {
        n: usize,
        r: usize,
        answered: usize,
    },
    /// `fallback`: how many of the acks came from fallback nodes.
    Write {
        n: usize,
        w: usize,
        acked: usize,
        fallback: usize,
    },
}

impl std::fmt::Display for QuorumReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuorumReport::Read { n, r, answered } => write!(f, "n={n}; r={r}; answered={answered}"),
            QuorumReport::Write { n, w, acked, fallback } => {
                write!(f, "n={n}; w={w}; acked={acked}; fallback={fallback}")
            }
        }
    }
}

/// The result of a quorum operation: the merged (read) or written object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub object: Object,
    pub report: QuorumReport,
}

/// A client write handed to the replica that will coordinate it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardPut {
    pub key: Bytes,
    pub context: VersionVector,
    pub value: StoredValue,
    pub consistency: Consistency,
}

pub type ForwardPutResponse = Result<Outcome, CoordinatorError>;
