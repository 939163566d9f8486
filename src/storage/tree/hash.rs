//! The hashes of the anti-entropy trees: what a key adds to its leaf, how
//! leaves combine into inner nodes and a root, and where a key's hash is
//! kept. Pure functions, shared by the stored trees ([`super::Trees`]) and
//! by anti-entropy, which compares the same hashes across replicas.

use md5::{Digest, Md5};
use rocksdb::MergeOperands;

use crate::storage::Object;
use crate::storage::record::EVERY_HOME;

pub type Hash = [u8; 16];

/// Leaf buckets per partition.
pub const LEAVES: usize = 256;
/// Leaves per inner node (so `LEAVES / FANOUT` inner nodes under the root).
pub const FANOUT: usize = 16;
pub const INNER: usize = LEAVES / FANOUT;

pub const ZERO: Hash = [0; 16];

/// Which leaf bucket `key` falls in (independent of its partition, which
/// uses the leading bits of the same digest).
pub fn bucket_of(key: &[u8]) -> u8 {
    Md5::digest(key)[15]
}

/// What a leaf accumulates for one key: covers the key, the clock and each
/// sibling's dot, value digest and tombstone flag. Equal causal states give
/// equal hashes on every replica (the clock is a sorted map and siblings
/// are sorted by dot).
pub fn entry_hash(key: &[u8], object: &Object) -> Hash {
    let mut h = Md5::new();
    h.update((key.len() as u32).to_be_bytes());
    h.update(key);
    for (actor, counter) in object.clock().iter() {
        h.update((actor.len() as u32).to_be_bytes());
        h.update(actor.as_bytes());
        h.update(counter.to_be_bytes());
    }
    h.update([0xff]);
    // Left out when unknown, so a format-1 record hashes as it always did
    // (the leaves already stored stay right).
    if object.n() != EVERY_HOME {
        h.update([0xfe, object.n()]);
    }
    for s in object.siblings() {
        h.update((s.dot.actor.len() as u32).to_be_bytes());
        h.update(s.dot.actor.as_bytes());
        h.update(s.dot.counter.to_be_bytes());
        h.update(s.value.digest);
        h.update([u8::from(s.value.deleted)]);
    }
    h.finalize().into()
}

pub fn xor(a: &mut Hash, b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The leaf merge operator: XOR of the stored leaf and every operand.
pub(in crate::storage) fn xor_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut acc = ZERO;
    if let Some(e) = existing {
        xor(&mut acc, e);
    }
    for op in operands {
        xor(&mut acc, op);
    }
    Some(acc.to_vec())
}

/// Where a key with replica count `n` adds its hash in `bucket`.
pub(super) fn leaf_key(partition: u32, bucket: u8, n: u8) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.push(bucket);
    if n != EVERY_HOME && n != 0 {
        k.push(n);
    }
    k
}

/// The replica count a leaf key is kept for ([`EVERY_HOME`] for the
/// five-byte form).
pub(super) fn leaf_n(leaf: &[u8]) -> u8 {
    leaf.get(5).copied().unwrap_or(EVERY_HOME)
}

/// True if a key of replica count `n` is held by both homes of a pair
/// that shares the keys of count `>= from_n`.
pub fn shared(n: u8, from_n: u8) -> bool {
    n == 0 || n >= from_n
}

/// Hashes of groups of hashes: `FANOUT` leaves → an inner node, the inner
/// nodes → the root.
pub fn combine(hashes: &[Hash]) -> Hash {
    let mut h = Md5::new();
    for x in hashes {
        h.update(x);
    }
    h.finalize().into()
}

pub fn inner_of(leaves: &[Hash]) -> Vec<Hash> {
    leaves.chunks(FANOUT).map(combine).collect()
}

/// An object whose every sibling is a delete: candidate for tombstone GC.
/// Returns its newest write time.
pub fn tombstone_time(object: &Object) -> Option<u64> {
    let s = object.siblings();
    if s.is_empty() || !s.iter().all(|s| s.value.deleted) {
        return None;
    }
    s.iter().map(|s| s.value.modified_ms).max()
}
