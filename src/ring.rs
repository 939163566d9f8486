//! Consistent hashing after Dynamo's "strategy 3": the key space is cut into Q equal, fixed
//! partitions and whole partitions are assigned to members. Keys never re-hash when membership
//! changes; only partition ownership moves, and the table is a pure function of
//! (members sorted by id, weights, Q, replicas) so every node derives the same one.

use md5::{Digest, Md5};
use thiserror::Error;

pub type NodeId = String;

pub const DEFAULT_PARTITIONS: u32 = 1024;
pub const MAX_PARTITIONS: u32 = 65536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub weight: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring has no members")]
    NoMembers,
    #[error("member {0:?} has weight 0")]
    ZeroWeight(NodeId),
    #[error("member {0:?} is listed more than once")]
    DuplicateMember(NodeId),
    #[error("partition count {0} is not a power of two in 1..=65536")]
    BadPartitions(u32),
    #[error("replica count must be at least 1")]
    ZeroReplicas,
}

/// Immutable partition table; rebuild it with [`Ring::new`] on every membership change.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted by id, so input order cannot influence the table.
    members: Vec<Member>,
    partitions: u32,
    replicas: usize,
    /// `32 - log2(Q)`: the partition is the top bits of the digest's first word.
    shift: u32,
    /// Row `p` (length = member count) is partition `p`'s preference list. Stored as owned ids
    /// so lookups can hand out slices without allocating; costs Q × members ids.
    prefs: Vec<NodeId>,
}

impl Ring {
    /// `replicas` = how many replicas each partition gets in the balanced assignment (the
    /// cluster's max N). If there are fewer members than `replicas`, every partition gets all
    /// members.
    ///
    /// Member `i` holds `replicas·Q·wᵢ/Σw` partition replicas (rounded by largest remainder).
    /// A member never holds two replicas of one partition, so it can hold at most Q: a weight
    /// above `1/replicas` of the total saturates at Q and the excess is spread over the others
    /// by weight. Quotas are enforced exactly because weighted rendezvous hashing alone
    /// under-serves heavy members (sampling without replacement gives a weight-2 node ≈1.7×).
    pub fn new(mut members: Vec<Member>, partitions: u32, replicas: usize) -> Result<Ring, RingError> {
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::BadPartitions(partitions));
        }
        if replicas == 0 {
            return Err(RingError::ZeroReplicas);
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(m) = members.iter().find(|m| m.weight == 0) {
            return Err(RingError::ZeroWeight(m.id.clone()));
        }
        if let Some(w) = members.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(RingError::DuplicateMember(w[0].id.clone()));
        }
        let rows = assign(&members, partitions, replicas);
        let prefs = rows.into_iter().map(|i| members[i as usize].id.clone()).collect();
        Ok(Ring { members, partitions, replicas, shift: 32 - partitions.trailing_zeros(), prefs })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.binary_search_by(|m| m.id.as_str().cmp(id)).ok().map(|i| &self.members[i])
    }

    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let d = Md5::digest(key);
        let top = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        // u64 so that Q = 1 (shift 32) yields 0 instead of overflowing.
        (u64::from(top) >> self.shift) as u32
    }

    /// The partition's full preference list: all members, distinct. The first
    /// `min(replicas, members)` are the balanced assignment; the rest follow in a deterministic
    /// per-partition order and serve as sloppy-quorum fallbacks. Empty for an out-of-range
    /// partition rather than panicking on a peer-supplied number.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        if partition >= self.partitions {
            return &[];
        }
        let m = self.members.len();
        let start = partition as usize * m;
        &self.prefs[start..start + m]
    }

    /// First `n` nodes of the key's preference list (`n` is clamped to the member count).
    pub fn replicas_for(&self, key: &[u8], n: usize) -> &[NodeId] {
        let list = self.preference_list(self.partition_of(key));
        &list[..n.min(list.len())]
    }

    /// Partitions where `node` is among the first `replicas` entries (the data it must hold).
    pub fn partitions_of(&self, node: &str) -> Vec<u32> {
        let r = self.replicas.min(self.members.len());
        (0..self.partitions).filter(|&p| self.preference_list(p)[..r].iter().any(|id| id == node)).collect()
    }
}

/// splitmix64 finalizer: a cheap, well-mixed stand-in for hashing every (partition, member) pair.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `-ln(u)` for `u` uniform in (0, 1) drawn from `h`, i.e. an Exp(1) variate, computed with
/// IEEE basic operations only: libm's `ln` may differ by an ulp between platforms, and every
/// node must rank pairs bit-for-bit identically.
fn exp_variate(h: u64) -> f64 {
    // 52 bits + 0.5 keeps u strictly inside (0, 1), so the result is finite and positive.
    let u = ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln(m) = 2·atanh(s), |s| < 0.172, so 11 odd terms reach f64 precision.
    let s = (m - 1.0) / (m + 1.0);
    let (s2, mut term, mut sum) = (s * s, s, 0.0);
    for k in 0..11 {
        sum += term / f64::from(2 * k + 1);
        term *= s2;
    }
    -(e as f64 * std::f64::consts::LN_2 + 2.0 * sum)
}

/// Exact integer quotas summing to `r·Q`, none above Q (see [`Ring::new`]).
fn quotas(members: &[Member], q: u32, r: usize) -> Vec<u64> {
    let (q, m) = (u128::from(q), members.len());
    let w: Vec<u128> = members.iter().map(|m| u128::from(m.weight)).collect();
    let mut saturated = vec![false; m];
    let (rest, wsum) = loop {
        let sat = saturated.iter().filter(|&&s| s).count() as u128;
        let rest = (r as u128 * q).saturating_sub(sat * q);
        let wsum: u128 = (0..m).filter(|&i| !saturated[i]).map(|i| w[i]).sum();
        let mut changed = false;
        for i in 0..m {
            if !saturated[i] && rest * w[i] > q * wsum {
                saturated[i] = true;
                changed = true;
            }
        }
        if !changed {
            break (rest, wsum.max(1));
        }
    };
    let mut out: Vec<u64> =
        (0..m).map(|i| (if saturated[i] { q } else { rest * w[i] / wsum }) as u64).collect();
    let mut by_rem: Vec<usize> = (0..m).filter(|&i| !saturated[i]).collect();
    let left = rest as u64 - by_rem.iter().map(|&i| out[i]).sum::<u64>();
    // Largest remainder first; ties go to the lower id (members are sorted).
    by_rem.sort_by_key(|&i| std::cmp::Reverse(rest * w[i] % wsum));
    for i in by_rem.into_iter().take(left as usize) {
        out[i] += 1;
    }
    out
}

/// Returns member indices, Q rows of `members.len()`. Scores are weighted rendezvous
/// (`w / Exp(1)`); a greedy walk over all pairs by descending score under the quotas yields the
/// unique stable matching for those scores, so a membership change mostly moves only the pairs
/// whose acceptance it changes. Weight in the score (not just the quota) lets heavy members claim
/// their best partitions early instead of filling leftovers, which shortens displacement chains.
fn assign(members: &[Member], q: u32, replicas: usize) -> Vec<u32> {
    let (m, qs) = (members.len(), q as usize);
    let r = replicas.min(m);
    let quota = quotas(members, q, r);
    let mhash: Vec<u64> = members
        .iter()
        .map(|mb| {
            let d = Md5::digest(mb.id.as_bytes());
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        })
        .collect();
    let score =
        |p: usize, i: usize| f64::from(members[i].weight) / exp_variate(mix(mhash[i] ^ mix(p as u64)));
    // Packed (score bits, partition, member): positive f64s order like their bits, and the
    // unique low half makes the sort total.
    let mut pairs: Vec<u128> = (0..qs)
        .flat_map(|p| (0..m).map(move |i| (p, i)))
        .map(|(p, i)| (u128::from(score(p, i).to_bits()) << 64) | ((p as u128) << 32) | i as u128)
        .collect();
    pairs.sort_unstable_by(|a, b| b.cmp(a));
    let mut chosen = vec![u32::MAX; qs * r];
    let mut fill = vec![0usize; qs];
    let mut held = vec![0u64; m];
    let mut todo = qs * r;
    for key in pairs {
        let (p, i) = ((key >> 32) as u32 as usize, key as u32 as usize);
        if fill[p] < r && held[i] < quota[i] {
            chosen[p * r + fill[p]] = i as u32;
            fill[p] += 1;
            held[i] += 1;
            todo -= 1;
            if todo == 0 {
                break;
            }
        }
    }
    // The greedy can strand a partition: every member with spare quota is then already in it
    // (or the greedy would have placed it there). Fill it by pulling in a member y from a
    // partition p2 lacking spare member x, and giving y's slot in p2 to x; pick the swap that
    // keeps the most score. Quotas sum to r·Q and none exceeds Q, so such a swap always exists.
    while let Some(p) = (0..qs).find(|&p| fill[p] < r) {
        let Some(x) = (0..m).find(|&i| held[i] < quota[i]) else {
            break;
        };
        let has = |c: &[u32], p: usize, i: usize| c[p * r..p * r + fill[p]].contains(&(i as u32));
        let mut best: Option<(f64, usize, usize)> = None;
        for p2 in (0..qs).filter(|&p2| p2 != p && !has(&chosen, p2, x)) {
            for k in 0..fill[p2] {
                let y = chosen[p2 * r + k] as usize;
                if has(&chosen, p, y) {
                    continue;
                }
                let gain = score(p, y) + score(p2, x) - score(p2, y);
                if best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, p2, k));
                }
            }
        }
        let Some((_, p2, k)) = best else { break };
        let y = chosen[p2 * r + k];
        chosen[p2 * r + k] = x as u32;
        chosen[p * r + fill[p]] = y;
        fill[p] += 1;
        held[x] += 1;
    }
    let mut rows = Vec::with_capacity(qs * m);
    let mut row: Vec<(bool, f64, u32)> = Vec::with_capacity(m);
    for p in 0..qs {
        let head = &chosen[p * r..p * r + fill[p]];
        row.clear();
        row.extend((0..m).map(|i| (!head.contains(&(i as u32)), score(p, i), i as u32)));
        // Assigned replicas first, then fallbacks; each group by descending score.
        row.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        rows.extend(row.iter().map(|t| t.2));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn mem(id: &str, weight: u32) -> Member {
        Member { id: id.into(), weight }
    }

    fn ms(spec: &[(&str, u32)]) -> Vec<Member> {
        spec.iter().map(|&(id, w)| mem(id, w)).collect()
    }

    fn equal(n: usize) -> Vec<Member> {
        (0..n).map(|i| mem(&format!("node-{i}"), 1)).collect()
    }

    /// 7 weight-1 nodes plus one weight-2 node.
    fn with_heavy() -> Vec<Member> {
        let mut m = equal(7);
        m.push(mem("heavy", 2));
        m
    }

    fn ring(members: Vec<Member>, q: u32, r: usize) -> Ring {
        Ring::new(members, q, r).expect("valid ring")
    }

    fn counts(ring: &Ring) -> HashMap<String, usize> {
        let ids = ring.members().iter().map(|m| m.id.clone());
        ids.map(|id| (id.clone(), ring.partitions_of(&id).len())).collect()
    }

    /// For each partition, members in the new replica set that were not in the old one.
    fn moves(old: &Ring, new: &Ring) -> usize {
        let ro = old.replicas.min(old.members.len());
        let rn = new.replicas.min(new.members.len());
        let moved = |p| {
            let before = &old.preference_list(p)[..ro];
            let after = &new.preference_list(p)[..rn];
            after.iter().filter(|id| !before.contains(id)).count()
        };
        (0..old.partitions()).map(moved).sum()
    }

    #[test]
    fn deterministic_and_order_independent() {
        let mut a = with_heavy();
        a.push(mem("zeta", 3));
        let mut b = a.clone();
        b.reverse();
        b.swap(1, 4);
        let (ra, rb) = (ring(a, 1024, 3), ring(b, 1024, 3));
        assert_eq!(ra.prefs, rb.prefs);
        assert_eq!(ra.members(), rb.members());
    }

    #[test]
    fn equal_weights_balanced() {
        let fair = 1024.0 * 3.0 / 5.0;
        for (id, c) in counts(&ring(equal(5), 1024, 3)) {
            println!("equal5 {id}: {c} replicas (fair {fair})");
            assert!((c as f64 - fair).abs() <= 0.10 * fair, "{id}: {c}");
        }
    }

    #[test]
    fn weighted_member_holds_double() {
        let c = counts(&ring(with_heavy(), 1024, 3));
        let heavy = c["heavy"] as f64;
        for (id, &n) in c.iter().filter(|(id, _)| *id != "heavy") {
            let ratio = heavy / n as f64;
            println!("weighted: heavy {heavy} / {id} {n} = {ratio:.3}");
            assert!((ratio - 2.0).abs() <= 0.2, "{ratio}");
        }
    }

    #[test]
    fn saturated_weight_caps_at_q() {
        let c = counts(&ring(ms(&[("a", 10), ("b", 1), ("c", 1), ("d", 1)]), 256, 2));
        assert_eq!(c["a"], 256);
        assert_eq!(c["b"] + c["c"] + c["d"], 256);
        assert!(c.values().all(|&n| n >= 85));
    }

    #[test]
    fn moves_are_near_minimal() {
        let mut cases: Vec<(&str, Vec<Member>, Vec<Member>)> = Vec::new();
        for n in [4, 5, 7, 8] {
            cases.push(("add", equal(n), equal(n + 1)));
            cases.push(("remove", equal(n + 1), equal(n)));
        }
        let mut heavy_plus = with_heavy();
        heavy_plus.push(mem("new", 1));
        cases.push(("add-weighted", with_heavy(), heavy_plus.clone()));
        cases.push(("remove-weighted", heavy_plus, with_heavy()));
        cases.push(("remove-heavy", with_heavy(), equal(7)));
        let mixed = ms(&[("a", 1), ("b", 2), ("c", 3), ("d", 1), ("e", 2), ("f", 1)]);
        let mut mixed_plus = mixed.clone();
        mixed_plus.push(mem("g", 1));
        cases.push(("add-mixed", mixed.clone(), mixed_plus.clone()));
        cases.push(("remove-mixed", mixed_plus, mixed));
        for (kind, old, new) in cases {
            let (a, b) = (ring(old, 1024, 3), ring(new, 1024, 3));
            let ids = |r: &Ring| r.members().iter().map(|m| m.id.clone()).collect::<HashSet<_>>();
            let (ia, ib) = (ids(&a), ids(&b));
            let ideal = match (ib.difference(&ia).next(), ia.difference(&ib).next()) {
                (Some(added), _) => b.partitions_of(added).len(),
                (_, Some(gone)) => a.partitions_of(gone).len(),
                _ => unreachable!(),
            };
            let moved = moves(&a, &b);
            let ratio = moved as f64 / ideal as f64;
            let (na, nb) = (ia.len(), ib.len());
            println!("{kind} {na}->{nb}: moved {moved}, ideal {ideal}, ratio {ratio:.3}");
            assert!(ratio <= 1.25, "{kind}: {ratio}");
        }
    }

    #[test]
    fn coordinators_balanced() {
        let r = ring(equal(5), 1024, 3);
        let mut c: HashMap<&str, usize> = HashMap::new();
        for p in 0..1024 {
            *c.entry(r.preference_list(p)[0].as_str()).or_default() += 1;
        }
        let fair = 1024.0 / 5.0;
        for (id, n) in c {
            println!("coordinator {id}: {n} (fair {fair})");
            assert!((n as f64 - fair).abs() <= 0.15 * fair, "{id}: {n}");
        }
        let r = ring(with_heavy(), 1024, 3);
        let heavy = (0..1024).filter(|&p| r.preference_list(p)[0] == "heavy").count();
        println!("coordinator heavy (w=2 of 9): {heavy} (fair {:.0})", 1024.0 * 2.0 / 9.0);
    }

    #[test]
    fn partition_of_md5() {
        let r = ring(equal(3), 1024, 3);
        assert_eq!(r.partition_of(b""), 848);
        assert_eq!(ring(equal(3), 1, 3).partition_of(b"abc"), 0);
        // md5("abc") = 900150983cd24fb0...: top 16 bits 0x9001.
        assert_eq!(ring(equal(3), 65536, 1).partition_of(b"abc"), 0x9001);
        let mut hist = vec![0u32; 1024];
        for i in 0..102_400u32 {
            hist[r.partition_of(format!("key-{i}").as_bytes()) as usize] += 1;
        }
        let (lo, hi) = (hist.iter().min(), hist.iter().max());
        println!("partition_of over 102400 keys: min {lo:?} max {hi:?} (mean 100)");
        assert!(hist.iter().all(|&n| (50..=160).contains(&n)));
    }

    #[test]
    fn exp_variate_matches_libm() {
        for k in 0..10_000u64 {
            let h = mix(k);
            let u = ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
            let (ours, libm) = (exp_variate(h), -u.ln());
            assert!((ours - libm).abs() <= 1e-14 * libm.max(1e-3), "{u}: {ours} vs {libm}");
        }
        assert!(exp_variate(u64::MAX) > 0.0 && exp_variate(0).is_finite());
    }

    #[test]
    fn errors() {
        let err = |m: Vec<Member>, q, r| Ring::new(m, q, r).err();
        assert_eq!(err(vec![], 1024, 3), Some(RingError::NoMembers));
        for q in [0, 1000, 1 << 17] {
            assert_eq!(err(equal(2), q, 3), Some(RingError::BadPartitions(q)));
        }
        assert_eq!(err(equal(2), 1024, 0), Some(RingError::ZeroReplicas));
        let zero = ms(&[("a", 1), ("b", 0)]);
        assert_eq!(err(zero, 8, 1), Some(RingError::ZeroWeight("b".into())));
        let dup = ms(&[("a", 1), ("b", 1), ("a", 2)]);
        assert_eq!(err(dup, 8, 1), Some(RingError::DuplicateMember("a".into())));
    }

    #[test]
    fn lookups() {
        let r = ring(ms(&[("b", 1), ("a", 3)]), 16, 3);
        assert_eq!(r.member("a").map(|m| m.weight), Some(3));
        assert!(r.member("z").is_none());
        assert_eq!(r.replicas_for(b"k", 9).len(), 2);
        assert_eq!(r.partitions_of("a").len(), 16);
        assert!(r.preference_list(16).is_empty());
    }

    #[test]
    fn large_ring_builds() {
        let c = counts(&ring(equal(20), MAX_PARTITIONS, 3));
        assert_eq!(c.values().sum::<usize>(), 65536 * 3);
        assert!(c.values().all(|&n| n.abs_diff(65536 * 3 / 20) <= 1));
    }

    proptest! {
        #[test]
        fn assignment_invariants(
            weights in proptest::collection::vec(1u32..=4, 1..12),
            replicas in 1usize..=5,
            n in 0usize..20,
        ) {
            let members: Vec<Member> =
                weights.iter().enumerate().map(|(i, &w)| mem(&format!("m{i}"), w)).collect();
            let m = members.len();
            let r = ring(members, 64, replicas);
            let all: HashSet<&str> = r.members().iter().map(|m| m.id.as_str()).collect();
            for p in 0..64 {
                let list = r.preference_list(p);
                prop_assert_eq!(list.len(), m);
                prop_assert_eq!(&list.iter().map(|s| s.as_str()).collect::<HashSet<_>>(), &all);
            }
            // Quotas are met exactly, so every slot is filled by a distinct member.
            let quota = quotas(r.members(), 64, replicas.min(m));
            for (mb, &want) in r.members().iter().zip(&quota) {
                prop_assert_eq!(r.partitions_of(&mb.id).len() as u64, want);
            }
            prop_assert_eq!(r.replicas_for(b"key", n).len(), n.min(m));
        }
    }
}
