//! On-disk (and on-wire) encoding of one key's versioned object.
//!
//! Layout: `[format version: u8][postcard(Object)][crc32 of all preceding bytes: u32 LE]`.
//! Each sibling keeps the MD5 of the value bytes as received from the
//! client. A value is checked against it when it is written ([`Fresh`]: the
//! values a write brings in, not the ones it carries over from the record
//! it read), and from then on the CRC covers the whole record, values
//! included. So a value damaged anywhere between the socket and the disk
//! is refused before it is stored, damage at rest is caught by the CRC, and
//! a read or a read-before-write hashes no value at all (it was ~7 % of a
//! blind PUT's CPU, all of it re-checking values already checked).
//!
//! Format 3 marks a record written under that rule. Formats 1 and 2
//! (written by older versions, which checked values on every read instead)
//! still have every value checked when read: such a record may hold a value
//! damaged before it was written. The next write of its key rewrites it as
//! format 3.
//!
//! Format 2 keeps the key's replica count `n` next to its versions; a
//! format-1 record (written before `n` was kept) decodes with
//! [`EVERY_HOME`], which is what every node assumed of it then. Format 3
//! has format 2's layout.

use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::version::DvvSet;

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;

/// One version of a value, as a sibling of a [`DvvSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// The value's bytes as the client sent them (empty for a tombstone).
    pub bytes: Bytes,
    pub content_type: String,
    /// Wall-clock write time at the coordinator, milliseconds since the epoch.
    pub modified_ms: u64,
    /// A tombstone: the version records a delete, `bytes` is empty.
    pub deleted: bool,
    /// MD5 of `bytes` computed when they were received.
    pub digest: [u8; 16],
}

impl StoredValue {
    pub fn new(bytes: Bytes, content_type: String, modified_ms: u64, deleted: bool) -> Self {
        let digest = md5_of(&bytes);
        StoredValue { bytes, content_type, modified_ms, deleted, digest }
    }

    pub fn digest_ok(&self) -> bool {
        md5_of(&self.bytes) == self.digest
    }

    /// The quoted hex digest used as HTTP `ETag`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", to_hex(&self.digest))
    }
}

/// The values a write may take without hashing them again: those of the
/// record it read (their buffers, which the record's CRC covered when it
/// was decoded), and one the caller vouches for (hashed a moment ago from
/// the request's body). A value is taken as held only with the held
/// buffer's address, length and digest; holding the buffers keeps their
/// addresses from being reused by another value while the write is built.
pub struct Fresh {
    held: Vec<(Bytes, [u8; 16])>,
}

impl Fresh {
    /// The values of `current`, the object a write read (if any).
    pub fn of(current: Option<&Object>) -> Fresh {
        let held = current.map_or_else(Vec::new, |o| {
            o.siblings().iter().map(|s| (s.value.bytes.clone(), s.value.digest)).collect()
        });
        Fresh { held }
    }

    /// Also takes a value with these bytes and this digest as it is: the
    /// digest was computed from these very bytes on this node.
    pub fn vouch(mut self, bytes: Bytes, digest: [u8; 16]) -> Fresh {
        self.held.push((bytes, digest));
        self
    }

    /// Whether every value of `next` either is a held one or matches its
    /// digest: a write whose new values do not is refused.
    pub fn intact(&self, next: &Object) -> bool {
        next.siblings().iter().all(|s| {
            let v = &s.value;
            let held = |(b, digest): &(Bytes, [u8; 16])| {
                b.as_ptr() == v.bytes.as_ptr() && b.len() == v.bytes.len() && *digest == v.digest
            };
            self.held.iter().any(held) || v.digest_ok()
        })
    }
}

/// Lowercase hex of a digest, as ETags show it.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

/// `n` of a key whose replica count is not known (a format-1 record): it
/// lives on every home of its partition, as every node assumed before.
pub const EVERY_HOME: u8 = u8::MAX;

/// How many homes hold a key of stored count `n` (0: not yet known, every
/// home), with `max` homes in the ring's preference lists.
pub fn replicas_of(n: u8, max: usize) -> usize {
    if n == 0 { max } else { (n as usize).min(max) }
}

/// A key's full causal state (every live sibling plus the clock covering
/// them) and the largest replica count `N` any of its writes asked for.
///
/// `n` only grows (a merge takes the larger): a key once written to three
/// homes keeps three homes for anti-entropy, tombstone GC and hint expiry,
/// so a copy on the third home is never forgotten by them and can never
/// come back from there after the others reaped its tombstone. The
/// versions are reached through `Deref`; the methods that combine two
/// objects are this type's own, so `n` is never dropped by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    versions: DvvSet<StoredValue>,
    n: u8,
}

impl Default for Object {
    fn default() -> Self {
        Object::new()
    }
}

impl Object {
    /// No versions yet; `n` 0 until a write widens it.
    pub fn new() -> Object {
        Object { versions: DvvSet::new(), n: 0 }
    }

    /// The replica count as stored ([`EVERY_HOME`] when unknown).
    pub fn n(&self) -> u8 {
        self.n
    }

    /// How many homes of its partition hold this key, with `max` homes in
    /// the ring's preference lists.
    pub fn replicas(&self, max: usize) -> usize {
        replicas_of(self.n, max)
    }

    /// Records that a write asked for `n` replicas.
    pub fn widen(&mut self, n: usize) {
        self.n = self.n.max(u8::try_from(n).unwrap_or(EVERY_HOME));
    }

    pub fn merge(&mut self, other: &Object) {
        self.versions.merge(&other.versions);
        self.n = self.n.max(other.n);
    }

    pub fn merged(mut self, other: &Object) -> Object {
        self.merge(other);
        self
    }

    /// True if merging `other` would change nothing: its versions are
    /// covered and its replica count is no larger.
    pub fn descends(&self, other: &Object) -> bool {
        self.versions.descends(&other.versions) && self.n >= other.n
    }
}

impl Deref for Object {
    type Target = DvvSet<StoredValue>;
    fn deref(&self) -> &DvvSet<StoredValue> {
        &self.versions
    }
}

impl DerefMut for Object {
    fn deref_mut(&mut self) -> &mut DvvSet<StoredValue> {
        &mut self.versions
    }
}

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
    #[error("value digest mismatch (a record written before format 3)")]
    Digest,
}

pub fn encode(object: &Object) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + object.siblings().iter().map(|s| s.value.bytes.len()).sum::<usize>());
    out.push(FORMAT_V3);
    // Serializing plain structs into a Vec cannot fail.
    out = postcard::to_extend(object, out).unwrap_or_else(|_| vec![FORMAT_V3]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and verifies a record: format byte and CRC, and for a record of
/// format 1 or 2 every value's digest (a format-3 record's values matched
/// their digests when it was written: see [`Fresh`]).
pub fn decode(bytes: &[u8]) -> Result<Object, RecordError> {
    let (&format, _) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if !matches!(format, FORMAT_V1 | FORMAT_V2 | FORMAT_V3) {
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
    let decode_err = |e: postcard::Error| RecordError::Decode(e.to_string());
    let object: Object = if format == FORMAT_V1 {
        Object { versions: postcard::from_bytes(&body[1..]).map_err(decode_err)?, n: EVERY_HOME }
    } else {
        postcard::from_bytes(&body[1..]).map_err(decode_err)?
    };
    if format != FORMAT_V3 && object.siblings().iter().any(|s| !s.value.digest_ok()) {
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
    fn a_format_1_record_decodes_as_held_by_every_home() {
        let o = sample();
        let mut v1 = vec![FORMAT_V1];
        v1 = postcard::to_extend(&o.versions, v1).unwrap();
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let old = decode(&v1).unwrap();
        assert_eq!(*old, *o, "same versions");
        assert_eq!(old.n(), EVERY_HOME);
        assert_eq!(old.replicas(3), 3);
    }

    #[test]
    fn n_round_trips_and_only_grows() {
        let mut o = sample();
        o.widen(2);
        assert_eq!(decode(&encode(&o)).unwrap().n(), 2);
        let mut wider = o.clone();
        wider.widen(3);
        assert!(!o.descends(&wider), "a copy with a smaller N misses something");
        o.merge(&wider);
        assert_eq!(o.n(), 3);
        o.widen(1);
        assert_eq!(o.replicas(5), 3, "a narrower write does not shrink N");
        assert!(o.descends(&wider));
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
    fn a_new_value_must_match_its_digest_and_a_held_one_is_not_hashed_again() {
        let damaged = |o: &mut Object| {
            let mut v = StoredValue::new(Bytes::from_static(b"abc"), "x/y".into(), 1, false);
            v.bytes = Bytes::from_static(b"abd");
            o.update(&VersionVector::new(), "damaged", v);
        };
        let mut incoming = Object::new();
        damaged(&mut incoming);
        assert!(!Fresh::of(None).intact(&incoming), "a damaged value from outside is refused");
        let stored = decode(&encode(&sample())).unwrap();
        let fresh = Fresh::of(Some(&stored));
        let mut next = stored.clone();
        assert!(fresh.intact(&next), "values carried over from the record read");
        next.merge(&sample());
        assert!(fresh.intact(&next), "an intact incoming value");
        damaged(&mut next);
        assert!(!fresh.intact(&next), "a damaged incoming value beside held ones");
        // The same bytes in another buffer are hashed: only the buffers the
        // record's CRC covered are taken as they are.
        let mut v = stored.siblings()[0].value.clone();
        v.bytes = Bytes::copy_from_slice(&v.bytes);
        let mut copy = Object::new();
        copy.update(&VersionVector::new(), "copy", v.clone());
        assert!(fresh.intact(&copy), "same bytes, own buffer, digest matches");
        v.digest[0] ^= 1;
        let mut copy = Object::new();
        copy.update(&VersionVector::new(), "copy", v.clone());
        assert!(!fresh.intact(&copy), "same bytes, own buffer, digest does not match");
        // Every empty value shares one static buffer: a held tombstone
        // vouches for no other empty value's digest.
        let mut empty = StoredValue::new(Bytes::new(), "x/y".into(), 3, false);
        empty.digest[0] ^= 1;
        let mut next = stored.clone();
        next.update(&VersionVector::new(), "empty", empty);
        assert!(!fresh.intact(&next), "the sample holds a tombstone (empty bytes)");
        // A value the caller hashed itself is taken as it is.
        assert!(Fresh::of(None).vouch(v.bytes.clone(), v.digest).intact(&copy));
    }

    /// A record written before format 3 may hold a value damaged before it
    /// was written: its values are still checked when read.
    #[test]
    fn an_older_record_still_has_its_values_checked_on_reading() {
        let mut o = Object::new();
        let mut v = StoredValue::new(Bytes::from_static(b"abc"), "x/y".into(), 1, false);
        v.bytes = Bytes::from_static(b"abd");
        o.update(&VersionVector::new(), "a", v);
        let older = |format: u8, object: &Object| {
            let mut bytes = postcard::to_extend(object, vec![format]).unwrap();
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes
        };
        assert_eq!(decode(&older(FORMAT_V2, &o)), Err(RecordError::Digest));
        assert_eq!(decode(&older(FORMAT_V2, &sample())).unwrap(), sample());
        assert_eq!(encode(&sample())[0], FORMAT_V3, "written as format 3");
    }

    #[test]
    fn etag_is_quoted_hex_md5() {
        let v = StoredValue::new(Bytes::new(), String::new(), 0, false);
        assert_eq!(v.etag(), "\"d41d8cd98f00b204e9800998ecf8427e\"");
    }
}
