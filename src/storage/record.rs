//! On-disk (and on-wire) encoding of one key's versioned object.
//!
//! Layout: `[format version: u8][postcard(Object)][crc32 of all preceding bytes: u32 LE]`.
//! The CRC catches corruption of the causal metadata; each sibling also keeps
//! the MD5 of the value bytes as received from the client, so a value damaged
//! anywhere between the socket and the disk is never served.

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::version::DvvSet;

const FORMAT_V1: u8 = 1;

/// One version of a value, as a sibling of a [`DvvSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    pub value: Bytes,
    pub content_type: String,
    /// Wall-clock write time at the coordinator, milliseconds since the epoch.
    pub modified_ms: u64,
    /// A tombstone: the version records a delete, `value` is empty.
    pub deleted: bool,
    /// MD5 of `value` computed when the bytes were received.
    pub digest: [u8; 16],
}

impl StoredValue {
    pub fn new(value: Bytes, content_type: String, modified_ms: u64, deleted: bool) -> Self {
        let digest = md5_of(&value);
        StoredValue { value, content_type, modified_ms, deleted, digest }
    }

    pub fn digest_ok(&self) -> bool {
        md5_of(&self.value) == self.digest
    }

    /// The quoted hex digest used as HTTP `ETag`.
    pub fn etag(&self) -> String {
        let mut s = String::with_capacity(34);
        s.push('"');
        for b in self.digest {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('"');
        s
    }
}

pub fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

/// A key's full causal state: every live sibling plus the clock covering them.
pub type Object = DvvSet<StoredValue>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is empty or truncated")]
    Truncated,
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record does not decode: {0}")]
    Decode(String),
    #[error("value digest mismatch")]
    Digest,
}

pub fn encode(object: &Object) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + object.siblings().iter().map(|s| s.value.value.len()).sum::<usize>());
    out.push(FORMAT_V1);
    // Serializing plain structs into a Vec cannot fail.
    out = postcard::to_extend(object, out).unwrap_or_else(|_| vec![FORMAT_V1]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and verifies a record: format byte, CRC, and every value digest.
pub fn decode(bytes: &[u8]) -> Result<Object, RecordError> {
    let (&format, _) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if format != FORMAT_V1 {
        return Err(RecordError::UnknownFormat(format));
    }
    if bytes.len() < 5 {
        return Err(RecordError::Truncated);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err(RecordError::Checksum);
    }
    let object: Object = postcard::from_bytes(&body[1..]).map_err(|e| RecordError::Decode(e.to_string()))?;
    if object.siblings().iter().any(|s| !s.value.digest_ok()) {
        return Err(RecordError::Digest);
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionVector;

    fn sample() -> Object {
        let mut o = Object::new();
        o.update(
            &VersionVector::new(),
            "a",
            StoredValue::new(Bytes::from_static(b"hello"), "text/plain".into(), 1, false),
        );
        o.update(
            &VersionVector::new(),
            "b",
            StoredValue::new(Bytes::new(), "application/octet-stream".into(), 2, true),
        );
        o
    }

    #[test]
    fn round_trip() {
        let o = sample();
        assert_eq!(decode(&encode(&o)).unwrap(), o);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncation to {len} went unnoticed");
        }
    }

    #[test]
    fn value_digest_is_checked_even_with_valid_crc() {
        let mut o = Object::new();
        let mut v = StoredValue::new(Bytes::from_static(b"abc"), "x/y".into(), 1, false);
        v.value = Bytes::from_static(b"abd");
        o.update(&VersionVector::new(), "a", v);
        assert_eq!(decode(&encode(&o)), Err(RecordError::Digest));
    }

    #[test]
    fn etag_is_quoted_hex_md5() {
        let v = StoredValue::new(Bytes::new(), String::new(), 0, false);
        assert_eq!(v.etag(), "\"d41d8cd98f00b204e9800998ecf8427e\"");
    }
}
