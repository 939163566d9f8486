//! Causal versioning with dotted version vector sets (Preguiça, Baquero, Almeida et al.) in the
//! "dotted causal container" shape Riak uses: one causal context (a version vector) for the whole
//! object plus the concurrent siblings, each tagged with the dot (actor, counter) that wrote it.
//!
//! Why dots rather than a vector per sibling: a sibling is identified by the single event that
//! created it, so a client's context says exactly which siblings it has seen (and may overwrite),
//! and the number of siblings stays bounded by real concurrency instead of exploding.
//!
//! Invariants every operation keeps, which make `==` canonical: siblings sorted by dot with unique
//! dots, every sibling's dot covered by the clock, no zero entries in a vector.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Token format version; a layout change bumps it so old tokens fail loudly instead of misparsing.
const TOKEN_VERSION: u8 = 1;
/// Token limits (text bytes, actors, actor name bytes): they bound decoding work and allocation
/// for hostile input, far above anything a real cluster of replicas produces.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
pub const MAX_TOKEN_ACTORS: usize = 1024;
pub const MAX_ACTOR_LEN: usize = 255;
/// Largest counter a token may carry. Leaves 2^63 writes of headroom, so a forged context can
/// never push `update` into counter saturation, which would mint a dot twice.
pub const MAX_TOKEN_COUNTER: u64 = i64::MAX as u64;

/// The event that created a sibling: the `counter`-th write coordinated by `actor`. Unique
/// cluster-wide because only `actor` mints its own counters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: String,
    pub counter: u64,
}

impl Dot {
    pub fn new(actor: impl Into<String>, counter: u64) -> Self {
        let actor = actor.into();
        Dot { actor, counter }
    }
}

/// Actor → highest counter seen. Stands for the downward-closed set of dots it covers, so merging
/// contexts is a pointwise max. A `BTreeMap` without zero entries keeps equality canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector {
    entries: BTreeMap<String, u64>,
}

/// Why a client-supplied causal context token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("causal context is empty")]
    Empty,
    #[error("causal context too large: {0}")]
    TooLarge(&'static str),
    #[error("causal context is not valid base64")]
    Base64,
    #[error("unsupported causal context version {0}")]
    Version(u8),
    #[error("causal context checksum mismatch")]
    Checksum,
    #[error("causal context is truncated")]
    Truncated,
    #[error("malformed causal context: {0}")]
    Malformed(&'static str),
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// 0 if absent: an actor never seen has made no writes we know of.
    pub fn get(&self, actor: &str) -> u64 {
        self.entries.get(actor).copied().unwrap_or(0)
    }

    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.actor)
    }

    /// `self >= other` pointwise: everything `other` has seen, `self` has seen.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.iter().all(|(a, c)| self.get(a) >= c)
    }

    /// Pointwise max, i.e. union of the covered dot sets.
    pub fn merge(&mut self, other: &VersionVector) {
        other.iter().for_each(|(a, c)| self.raise(a, c));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(a, c)| (a.as_str(), *c))
    }

    /// Raise `actor` to at least `counter`; never stores a zero, keeping `==` canonical.
    fn raise(&mut self, actor: &str, counter: u64) {
        if counter > self.get(actor) {
            self.entries.insert(actor.to_owned(), counter);
        }
    }

    /// The opaque "Causal-Context" token: URL-safe unpadded base64 of
    /// `[version 1][postcard Vec<(actor, counter)>][CRC32 LE of all before]`. The CRC catches
    /// corruption and casual tampering; it is not a MAC, so a client can still claim any context,
    /// as with Riak's vclocks. Vectors past the `MAX_*` limits encode but will not decode.
    pub fn to_token(&self) -> String {
        let entries: Vec<(&str, u64)> = self.iter().collect();
        let mut buf =
            postcard::to_stdvec(&(TOKEN_VERSION, entries)).expect("encoding into a Vec cannot fail");
        buf.extend_from_slice(&crc32fast::hash(&buf).to_le_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Inverse of [`to_token`](Self::to_token). Input is hostile: its size is capped before
    /// decoding and actors are borrowed from it, so work and allocation stay bounded. Actors must be
    /// strictly ascending with counters in `1..=MAX_TOKEN_COUNTER`, and nothing may trail them.
    pub fn from_token(token: &str) -> Result<VersionVector, ContextError> {
        use ContextError::*;
        if token.is_empty() {
            return Err(Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TooLarge("token length"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| Base64)?;
        let (body, crc) = bytes.split_last_chunk::<4>().ok_or(Truncated)?;
        match body.first() {
            None => return Err(Truncated),
            Some(&v) if v != TOKEN_VERSION => return Err(Version(v)),
            Some(_) if crc32fast::hash(body) != u32::from_le_bytes(*crc) => return Err(Checksum),
            Some(_) => {}
        }
        let (n, mut rest) = take::<usize>(&body[1..])?;
        if n > MAX_TOKEN_ACTORS {
            return Err(TooLarge("actor count"));
        }
        let mut entries = BTreeMap::new();
        let mut prev: Option<&str> = None;
        for _ in 0..n {
            let ((actor, counter), tail) = take::<(&str, u64)>(rest)?;
            rest = tail;
            if actor.len() > MAX_ACTOR_LEN {
                return Err(TooLarge("actor name"));
            }
            if prev.is_some_and(|p| p >= actor) {
                return Err(Malformed("actors not strictly ascending"));
            }
            if counter == 0 || counter > MAX_TOKEN_COUNTER {
                return Err(Malformed("counter out of range"));
            }
            entries.insert(actor.to_owned(), counter);
            prev = Some(actor);
        }
        if !rest.is_empty() {
            return Err(Malformed("trailing bytes"));
        }
        Ok(VersionVector { entries })
    }
}

fn take<'a, V: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(V, &'a [u8]), ContextError> {
    postcard::take_from_bytes(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => ContextError::Truncated,
        _ => ContextError::Malformed("bad encoding"),
    })
}

/// Builds a vector from raw entries: duplicates keep the max, zero counters are dropped.
impl FromIterator<(String, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        iter.into_iter().for_each(|(a, c)| vv.raise(&a, c));
        vv
    }
}

/// One concurrent value of an object and the dot of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling<T> {
    pub dot: Dot,
    pub value: T,
}

/// An object's causal state: the clock covers every write this replica knows of (including
/// overwritten ones); `siblings` are the writes not yet superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DvvSetRepr<T>")]
pub struct DvvSet<T> {
    clock: VersionVector,
    siblings: Vec<Sibling<T>>,
}

#[derive(Deserialize)]
struct DvvSetRepr<T> {
    clock: VersionVector,
    siblings: Vec<Sibling<T>>,
}

/// Stored state is re-normalised on load, not trusted: a corrupt record must not break the
/// sorted/unique/covered invariants that `merge` and `==` rely on.
impl<T> From<DvvSetRepr<T>> for DvvSet<T> {
    fn from(raw: DvvSetRepr<T>) -> Self {
        let (mut clock, mut siblings) = (raw.clock, raw.siblings);
        clock.entries.retain(|_, c| *c > 0);
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        siblings.dedup_by(|a, b| a.dot == b.dot);
        for s in &siblings {
            clock.raise(&s.dot.actor, s.dot.counter);
        }
        DvvSet { clock, siblings }
    }
}

impl<T> Default for DvvSet<T> {
    fn default() -> Self {
        let (clock, siblings) = (VersionVector::new(), Vec::new());
        DvvSet { clock, siblings }
    }
}

impl<T> DvvSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The causal context covering every sibling: what a read hands the client as its token.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    pub fn siblings(&self) -> &[Sibling<T>] {
        &self.siblings
    }

    pub fn into_siblings(self) -> Vec<Sibling<T>> {
        self.siblings
    }

    /// No siblings; the clock may still be non-empty (everything was overwritten or GC'd).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    fn holds(&self, dot: &Dot) -> bool {
        self.siblings.binary_search_by(|s| s.dot.cmp(dot)).is_ok()
    }

    /// `dot` was seen here and superseded: a merge must not bring it back.
    fn discarded(&self, dot: &Dot) -> bool {
        self.clock.covers(dot) && !self.holds(dot)
    }

    /// A client write coordinated by `actor`: drop every sibling whose dot `context` covers (the
    /// client saw it, so the new value supersedes it), then add `value` with dot
    /// (actor, max(clock[actor], context[actor]) + 1); the clock absorbs `context` and the new dot.
    /// Siblings the context does not cover were written concurrently and survive.
    /// `actor` must be this replica's own id, or dots stop being unique; for the same reason a
    /// replica that lost its data must come back under a new id.
    pub fn update(&mut self, context: &VersionVector, actor: &str, value: T) -> Dot {
        self.update_with(context, actor, |least| least, value)
    }

    /// [`update`](Self::update) with the counter chosen by `mint`, which is
    /// given the least counter this object allows (one past everything the
    /// clock and the context know of `actor`) and must return at least that.
    ///
    /// Why: "clock + 1" alone is only unique while the replica never forgets
    /// a dot it minted. A node that comes back older (a lost WAL tail, a
    /// restored snapshot) or a key whose record GC removed would mint the
    /// same dot again, and replicas holding the first one drop the second
    /// as already seen. `replica::stamp` passes a counter from a per-node
    /// clock that never repeats, so uniqueness no longer rests on the
    /// object's own memory.
    pub fn update_with(
        &mut self,
        context: &VersionVector,
        actor: &str,
        mint: impl FnOnce(u64) -> u64,
        value: T,
    ) -> Dot {
        self.siblings.retain(|s| !context.covers(&s.dot));
        let least = self.clock.get(actor).max(context.get(actor)).saturating_add(1);
        let dot = Dot::new(actor, mint(least).max(least));
        self.clock.merge(context);
        self.clock.raise(actor, dot.counter);
        let at = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(at, Sibling { dot, value });
        self.siblings[at].dot.clone()
    }

    /// True if `self` already includes all of `other` (`self.merged(other) == self`). Read repair:
    /// a replica whose state does not descend the merged read result must be sent that result.
    pub fn descends(&self, other: &DvvSet<T>) -> bool {
        let mut mine = self.siblings.iter();
        self.clock.descends(&other.clock) && !mine.any(|s| other.discarded(&s.dot))
    }

    /// Drops siblings without touching the clock: the clock still covers them, so a merge with a
    /// stale replica that still holds them will not resurrect them.
    pub fn retain(&mut self, f: impl FnMut(&Sibling<T>) -> bool) {
        self.siblings.retain(f);
    }
}

impl<T: Clone> DvvSet<T> {
    /// Sync with another replica's state. A sibling of either side survives unless the other side's
    /// clock covers its dot while the other side no longer holds it (it was seen and superseded
    /// there). Clocks merge pointwise.
    ///
    /// Laws, for states reachable by `update`/`merge` (dots unique, siblings covered by the clock):
    /// commutative, associative, idempotent (a join-semilattice, so replicas converge whatever the
    /// order or repetition of syncs); the result descends both inputs.
    pub fn merge(&mut self, other: &DvvSet<T>) {
        // Not covered by our clock implies not held by us, so nothing is added twice.
        let ours = &self.clock;
        let theirs = other.siblings.iter().filter(|s| !ours.covers(&s.dot));
        self.siblings.retain(|s| !other.discarded(&s.dot));
        self.siblings.extend(theirs.cloned());
        // Stable sort of two sorted runs is a linear merge.
        self.siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        self.clock.merge(&other.clock);
    }

    pub fn merged(mut self, other: &DvvSet<T>) -> Self {
        self.merge(other);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContextError::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn values<T: Clone>(s: &DvvSet<T>) -> Vec<T> {
        s.siblings().iter().map(|s| s.value.clone()).collect()
    }

    fn assert_invariants<T>(s: &DvvSet<T>) {
        assert!(s.siblings.windows(2).all(|w| w[0].dot < w[1].dot));
        assert!(s.siblings.iter().all(|x| s.clock.covers(&x.dot)));
        assert!(s.clock.iter().all(|(_, c)| c > 0));
    }

    fn dec(token: &str) -> Result<VersionVector, ContextError> {
        VersionVector::from_token(token)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Client write at a replica; context = merged clocks of some earlier states (a read).
        Update(usize, Vec<Index>),
        Sync(usize, usize),
    }

    /// Every state a cluster of 1–4 replicas passes through under the protocol: a replica only
    /// updates its own state under its own actor id, so dots stay unique.
    fn history() -> impl Strategy<Value = Vec<DvvSet<u32>>> {
        let op = prop_oneof![
            (0..4usize, vec(any::<Index>(), 0..3)).prop_map(|(r, read)| Op::Update(r, read)),
            (0..4usize, 0..4usize).prop_map(|(from, to)| Op::Sync(from, to)),
        ];
        (1..=4usize, vec(op, 0..32)).prop_map(|(n, ops)| {
            let mut replicas = vec![DvvSet::new(); n];
            let mut seen = replicas.clone();
            for (value, op) in ops.into_iter().enumerate() {
                let r = match op {
                    Op::Update(r, read) => {
                        let mut ctx = VersionVector::new();
                        read.iter().for_each(|i| ctx.merge(i.get(&seen).clock()));
                        replicas[r % n].update(&ctx, ["a", "b", "c", "d"][r % n], value as u32);
                        r % n
                    }
                    Op::Sync(from, to) => {
                        let src = replicas[from % n].clone();
                        replicas[to % n].merge(&src);
                        to % n
                    }
                };
                seen.push(replicas[r].clone());
            }
            seen
        })
    }

    proptest! {
        #[test]
        fn merge_laws(h in history(), i: Index, j: Index, k: Index) {
            let (a, b, c) = (i.get(&h), j.get(&h), k.get(&h));
            let ab = a.clone().merged(b);
            assert_invariants(&ab);
            prop_assert_eq!(&ab, &b.clone().merged(a));
            prop_assert_eq!(ab.clone().merged(c), a.clone().merged(&b.clone().merged(c)));
            prop_assert_eq!(&a.clone().merged(a), a);
            prop_assert!(ab.descends(a) && ab.descends(b));
            prop_assert_eq!(a.descends(b), &ab == a);
            let bytes = postcard::to_stdvec(&ab).expect("encode");
            prop_assert_eq!(postcard::from_bytes::<DvvSet<u32>>(&bytes).expect("decode"), ab);
        }

        #[test]
        fn token_round_trip(m in btree_map(".{0,24}", 1..=MAX_TOKEN_COUNTER, 0..40)) {
            let vv: VersionVector = m.into_iter().collect();
            prop_assert_eq!(dec(&vv.to_token()), Ok(vv));
        }

        #[test]
        fn token_corruption(m in btree_map("[a-z]{1,8}", 1..u64::MAX, 0..8), mask in 1..=255u8) {
            let token = m.into_iter().collect::<VersionVector>().to_token();
            let bytes = URL_SAFE_NO_PAD.decode(&token).expect("own token");
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= mask; // CRC32 detects every error burst up to 32 bits
                prop_assert!(dec(&URL_SAFE_NO_PAD.encode(&b)).is_err());
                let _ = dec(&URL_SAFE_NO_PAD.encode(&bytes[..i]));
            }
            (0..token.len()).for_each(|i| drop(dec(&token[..i])));
        }

        #[test]
        fn garbage_never_panics(s: String, b64 in "[A-Za-z0-9_-]{0,300}", body: Vec<u8>) {
            let _ = (dec(&s), dec(&b64));
            // Valid version and CRC around random bytes, so the structural parser is exercised.
            let mut raw = vec![TOKEN_VERSION];
            raw.extend_from_slice(&body);
            raw.extend_from_slice(&crc32fast::hash(&raw).to_le_bytes());
            let _ = dec(&URL_SAFE_NO_PAD.encode(raw));
        }
    }

    #[test]
    fn descendants_win_blind_writes_survive_gc_sticks() {
        let mut r = DvvSet::new();
        r.update(&VersionVector::new(), "a", 1);
        r.update(&VersionVector::new(), "a", 2);
        assert_eq!(values(&r), [1, 2]);
        let old = r.clone();
        assert_eq!(r.update(old.clock(), "a", 3), Dot::new("a", 3));
        assert_eq!(values(&r), [3]);
        r.merge(&old);
        assert_eq!(values(&r), [3]);
        assert!(r.descends(&old) && !old.descends(&r));
        assert_eq!(old.clone().merged(&r), r);
        r.retain(|_| false); // GC keeps the clock, so the stale state cannot resurrect siblings
        assert!(r.is_empty() && !r.clock().is_empty() && r.merged(&old).is_empty());
    }

    #[test]
    fn a_coordinator_without_state_mints_past_the_context() {
        // E.g. after losing the key: a reused dot would be dropped elsewhere as already seen.
        let mut old = DvvSet::new();
        for v in 1..=5 {
            old.update(&VersionVector::new(), "a", v);
        }
        let mut fresh = DvvSet::new();
        assert_eq!(fresh.update(old.clock(), "a", 9), Dot::new("a", 6));
        assert_eq!(values(&fresh.merged(&old)), [9]);
    }

    #[test]
    fn blind_writes_survive_and_a_read_context_resolves_only_what_was_read() {
        let (mut a, mut b) = (DvvSet::new(), DvvSet::new());
        a.update(&VersionVector::new(), "a", "x");
        b.update(&VersionVector::new(), "b", "y");
        a.merge(&b);
        b.merge(&a);
        assert_eq!((values(&a), &a), (vec!["x", "y"], &b));
        let read = a.clock().clone(); // the client saw x and y
        b.update(&VersionVector::new(), "b", "z"); // concurrent, after the read
        a.update(&read, "a", "w");
        assert_eq!(values(&a.clone().merged(&b)), ["w", "z"]);
        assert_eq!(values(&b.merged(&a)), ["w", "z"]);
    }

    #[test]
    fn deserialize_normalises() {
        let mut raw = DvvSet::new();
        raw.update(&VersionVector::new(), "a", 1u64);
        raw.update(&VersionVector::new(), "b", 2);
        raw.siblings.reverse();
        raw.siblings.push(raw.siblings[0].clone());
        raw.clock = VersionVector::new();
        let bytes = postcard::to_stdvec(&raw).expect("encode");
        let got: DvvSet<u64> = postcard::from_bytes(&bytes).expect("decode");
        assert_invariants(&got);
        assert_eq!(values(&got), [1, 2]);
    }

    #[test]
    fn token_errors() {
        let vv = |a: String, c| VersionVector::from_iter([(a, c)]);
        let ok = vv("a".into(), 3).to_token();
        assert_eq!(dec(&ok).map(|v| v.get("a")), Ok(3));
        assert_eq!(dec(""), Err(Empty));
        assert_eq!(dec("!!"), Err(Base64));
        let huge = "A".repeat(MAX_TOKEN_LEN + 4);
        assert_eq!(dec(&huge), Err(TooLarge("token length")));
        let mut b = URL_SAFE_NO_PAD.decode(&ok).expect("own token");
        b[0] = 2;
        assert_eq!(dec(&URL_SAFE_NO_PAD.encode(&b)), Err(Version(2)));
        let hex = |i: usize| (format!("{i:x}"), 1);
        let many: VersionVector = (0..=MAX_TOKEN_ACTORS).map(hex).collect();
        assert_eq!(dec(&many.to_token()), Err(TooLarge("actor count")));
        let long = vv("x".repeat(MAX_ACTOR_LEN + 1), 1);
        assert_eq!(dec(&long.to_token()), Err(TooLarge("actor name")));
        let big = vv("a".into(), u64::MAX).to_token();
        assert_eq!(dec(&big), Err(Malformed("counter out of range")));
        let empty = VersionVector::new().to_token();
        assert_eq!((empty.len(), dec(&empty)), (8, Ok(VersionVector::new()))); // version, n, crc
    }
}
