//! The compact binary body of every internal RPC:
//! `[format version: u8][postcard(message)]`.
//!
//! postcard has no field tags, so any change to a message's shape bumps the
//! version: a node of another version then refuses the body (415) instead
//! of reading its fields out of step. Format 2: objects carry their `N`,
//! anti-entropy tree requests their `from_n`. Format 3: failures travel as
//! `rpc::error::PeerError`, not strings.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub const CONTENT_TYPE: &str = "application/x-quorumkv-rpc";
const FORMAT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty rpc body")]
    Empty,
    #[error("unknown rpc format {0}")]
    UnknownFormat(u8),
    #[error("rpc body does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = postcard::to_allocvec(&(FORMAT, message)).unwrap_or_default();
    if out.is_empty() {
        out.push(FORMAT);
    }
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT {
        return Err(CodecError::UnknownFormat(format));
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let bytes = encode(&("k".to_string(), 7u32));
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode::<(String, u32)>(&bytes).unwrap(), ("k".to_string(), 7));
        assert!(decode::<(String, u32)>(&[]).is_err());
        assert!(decode::<(String, u32)>(&[9, 1, 2]).is_err());
        assert!(decode::<(String, u32)>(&bytes[..2]).is_err());
    }
}
