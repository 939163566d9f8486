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

/// Fallbacks kept per partition beyond its `replicas` homes: the sloppy
/// quorum stands in for an unreachable home with the first reachable one.
/// A cluster of at most `replicas + FALLBACKS` members lists every member
/// in every partition; a larger one lists this many, so a ring costs
/// `Q × (replicas + FALLBACKS)` entries however many members there are.
pub const FALLBACKS: usize = 8;

/// Immutable partition table; rebuild it with [`Ring::new`] on every membership change.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted by id, so input order cannot influence the table.
    members: Vec<Member>,
    partitions: u32,
    replicas: usize,
    /// `32 - log2(Q)`: the partition is the top bits of the digest's first word.
    shift: u32,
    /// Entries per partition: `min(members, replicas + FALLBACKS)`.
    width: usize,
    /// Row `p` (`width` entries, homes first) is partition `p`'s preference list. Stored as owned
    /// ids so lookups can hand out slices without allocating.
    prefs: Vec<NodeId>,
}

impl Ring {
    /// `replicas` = how many replicas each partition gets in the balanced assignment (the
    /// cluster's max N). If there are fewer members than `replicas`, every partition gets all
    /// members.
    ///
    /// Member `i`'s quota is `replicas·Q·wᵢ/Σw` partition replicas (rounded by largest
    /// remainder), and it holds 90–120 % of it, or ±2√quota for a small quota (see `assign` for
    /// why not exactly). A member
    /// never holds two replicas of one partition, so it can hold at most Q: a weight above
    /// `1/replicas` of the total saturates at Q and the excess is spread over the others by
    /// weight. Quotas bound the shares because weighted rendezvous hashing alone under-serves
    /// heavy members (sampling without replacement gives a weight-2 node ≈1.7×).
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
        let (rows, width) = assign(&members, partitions, replicas);
        let prefs = rows.into_iter().map(|i| members[i as usize].id.clone()).collect();
        Ok(Ring { members, partitions, replicas, shift: 32 - partitions.trailing_zeros(), width, prefs })
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

    /// The partition's preference list: distinct members, the first `min(replicas, members)` the
    /// balanced assignment (its homes), then up to [`FALLBACKS`] sloppy-quorum fallbacks (every
    /// other member, in a small cluster). Empty for an out-of-range partition rather than
    /// panicking on a peer-supplied number.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        if partition >= self.partitions {
            return &[];
        }
        let start = partition as usize * self.width;
        &self.prefs[start..start + self.width]
    }

    /// First `n` nodes of the key's preference list (`n` is clamped to the list's length).
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

/// Integer quotas summing to `r·Q`, none above Q (see [`Ring::new`]).
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

/// The weight in the score: `w^1.5 / E`, not `w / E`. A member is one of a partition's r homes,
/// not its only one, and sampling r without replacement under-serves heavy members: a weight-2
/// member got 1.77× a weight-1 member's share with `w`, 1.99–2.14× with `w^1.5` (1.83–1.95× with
/// `w^1.25`), measured by `weighted_member_holds_double`; the floor of [`rebalance`] catches what
/// remains. `w·√w` because `sqrt` is correctly rounded on every platform (IEEE 754), where `powf`
/// may differ by an ulp, and every node must rank pairs bit for bit the same.
fn score_weight(weight: u32) -> f64 {
    let w = f64::from(weight);
    w * w.sqrt()
}

/// One member's partitions in descending order of its rendezvous score `w / E`, where the
/// member's `E` over the Q partitions are i.i.d. Exp(1), generated already sorted: the k-th
/// smallest of Q exponentials is `Σ_{j≤k} Zⱼ / (Q − j + 1)` (Rényi's representation), and a keyed
/// permutation of the partitions says which partition gets the k-th. So the greedy below can walk
/// every member's pairs best-first without scoring all Q × members pairs, and a member's scores
/// depend on its own id and weight only: adding or removing a member changes no other's.
struct Stream {
    member: u32,
    weight: f64,
    seed: u64,
    /// Per-round keys of the partition permutation.
    keys: [u64; 4],
    bits: u32,
    q: u32,
    /// Pairs taken so far, and the running sum `E` of the next.
    taken: u32,
    e: f64,
}

impl Stream {
    fn new(index: usize, member: &Member, q: u32) -> Stream {
        let d = Md5::digest(member.id.as_bytes());
        let word = |i: usize| {
            u64::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3], d[i + 4], d[i + 5], d[i + 6], d[i + 7]])
        };
        let seed = word(0);
        let tail = word(8);
        let keys = [mix(tail), mix(tail ^ 1), mix(tail ^ 2), mix(tail ^ 3)];
        let mut s = Stream {
            member: index as u32,
            weight: score_weight(member.weight),
            seed,
            keys,
            bits: q.trailing_zeros(),
            q,
            taken: 0,
            e: 0.0,
        };
        s.e = s.increment();
        s
    }

    /// `Z / (Q − k)` for the pair about to be taken (k = `taken`).
    fn increment(&self) -> f64 {
        exp_variate(mix(self.seed ^ mix(u64::from(self.taken)))) / f64::from(self.q - self.taken)
    }

    /// The heap key of the next pair: smaller is a higher score `w / E`. Positive f64s order
    /// like their bits.
    fn key(&self) -> u64 {
        (self.e / self.weight).to_bits()
    }

    /// The next partition, best first; `None` once all Q were taken.
    fn next(&mut self) -> Option<u32> {
        if self.taken >= self.q {
            return None;
        }
        let p = self.permute(self.taken);
        self.taken += 1;
        if self.taken < self.q {
            self.e += self.increment();
        }
        Some(p)
    }

    /// A keyed bijection on `bits`-bit numbers (xor a key, multiply by an odd one, xorshift:
    /// each step invertible), so each member visits every partition exactly once.
    fn permute(&self, x: u32) -> u32 {
        if self.bits == 0 {
            return 0;
        }
        let mask = (1u64 << self.bits) - 1;
        let shift = self.bits.div_ceil(2);
        let mut v = u64::from(x);
        for k in self.keys {
            v = ((v ^ k) & mask).wrapping_mul(k | 1) & mask;
            v ^= v >> shift;
        }
        v as u32
    }
}

/// Fills `slots` entries per partition greedily over every member's pairs in descending score
/// (a k-way merge of the members' [`Stream`]s): a pair is taken if its partition has room, its
/// member room under `cap`, and `taken` does not already hold the member in that partition.
/// For given scores this is the unique stable matching, so a membership change mostly moves only
/// the pairs whose acceptance it changes. Returns the number taken per partition.
fn fill(
    members: &[Member],
    q: u32,
    cap: &[u64],
    slots: usize,
    taken: &mut [Vec<u32>],
    scores: &mut [Vec<f64>],
) -> Vec<u64> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut held = vec![0u64; members.len()];
    let mut streams: Vec<Stream> = members.iter().enumerate().map(|(i, m)| Stream::new(i, m, q)).collect();
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> =
        streams.iter().filter(|s| cap[s.member as usize] > 0).map(|s| Reverse((s.key(), s.member))).collect();
    let start: Vec<usize> = taken.iter().map(Vec::len).collect();
    let mut todo: usize = q as usize * slots;
    while todo > 0 {
        let Some(Reverse((_, i))) = heap.pop() else { break };
        let stream = &mut streams[i as usize];
        let score = stream.weight / stream.e;
        let Some(p) = stream.next() else { continue };
        let row = &mut taken[p as usize];
        if row.len() - start[p as usize] < slots && !row.contains(&i) {
            row.push(i);
            scores[p as usize].push(score);
            held[i as usize] += 1;
            todo -= 1;
        }
        if held[i as usize] < cap[i as usize] && stream.taken < q {
            heap.push(Reverse((stream.key(), i)));
        }
    }
    held
}

/// Brings every member up to its `floor` after a [`fill`] under loose caps: members below it
/// walk their streams best-first (one merged order, as in `fill`) and take, in each partition
/// they are not in yet, the slot of the weakest member there that is above its own floor. Only the
/// few below the floor move anything, so a join changes little here too (re-dealing every
/// member to its exact quota moved 1.4–2× the newcomer's share: see [`assign`]).
fn rebalance(
    members: &[Member],
    q: u32,
    floor: &[u64],
    held: &mut [u64],
    rows: &mut [Vec<u32>],
    scores: &mut [Vec<f64>],
) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut streams: Vec<Stream> = members.iter().enumerate().map(|(i, m)| Stream::new(i, m, q)).collect();
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = streams
        .iter()
        .filter(|s| held[s.member as usize] < floor[s.member as usize])
        .map(|s| Reverse((s.key(), s.member)))
        .collect();
    while let Some(Reverse((_, y))) = heap.pop() {
        let stream = &mut streams[y as usize];
        let score = stream.weight / stream.e;
        let Some(p) = stream.next() else { continue };
        let (row, row_scores) = (&mut rows[p as usize], &mut scores[p as usize]);
        if !row.contains(&y) {
            let victim = (0..row.len())
                .filter(|&k| held[row[k] as usize] > floor[row[k] as usize])
                .min_by(|&a, &b| row_scores[a].total_cmp(&row_scores[b]));
            if let Some(k) = victim {
                held[row[k] as usize] -= 1;
                row[k] = y;
                row_scores[k] = score;
                held[y as usize] += 1;
            }
        }
        if held[y as usize] < floor[y as usize] && stream.taken < q {
            heap.push(Reverse((stream.key(), y)));
        }
    }
}

/// How far a member's share may stray from its quota without cost: two standard deviations of
/// the count a random placement gives it (about `√quota`). A member of a small share (a cluster
/// with few partitions per member) cannot be held closer without reshuffling the others on every
/// join: with a 20-replica share, ±10–20 % moved 2.2× the newcomer's share, ±2√20 1.04×.
fn spread(quota: u64) -> u64 {
    // `sqrt` is correctly rounded on every platform, so every node agrees.
    (2.0 * (quota as f64).sqrt()).ceil() as u64
}

/// The most partitions a member of this `quota` holds: 20 % (or [`spread`], if more) above it,
/// at least one more, so the greedy keeps members' best pairs instead of cascading
/// displacements (see [`assign`]).
fn ceiling(quota: u64, q: u32) -> u64 {
    (quota + quota.div_ceil(5).max(spread(quota)).max(1)).min(u64::from(q))
}

/// The fewest partitions a member of this `quota` holds: 10 % (or [`spread`], if more) below it
/// (all Q when the quota is Q), which [`rebalance`] brings the members below it up to.
fn floor_of(quota: u64, q: u32) -> u64 {
    // A member whose weight saturates its quota at Q is in every partition.
    if quota >= u64::from(q) { quota } else { quota.saturating_sub((quota / 10).max(spread(quota))) }
}

/// Up to this many (member, partition) pairs, a stranded partition is repaired with every pair's
/// exact score (a table of them: 32 MiB at most).
const EXACT_REPAIR_PAIRS: usize = 1 << 22;

/// Every pair's score `w / E`, member-major: walks each member's whole [`Stream`].
fn score_table(members: &[Member], q: u32) -> Vec<f64> {
    let qs = q as usize;
    let mut table = vec![0.0; members.len() * qs];
    for (i, member) in members.iter().enumerate() {
        let mut stream = Stream::new(i, member, q);
        loop {
            let score = stream.weight / stream.e;
            let Some(p) = stream.next() else { break };
            table[i * qs + p as usize] = score;
        }
    }
    table
}

/// Returns member indices, `width` per partition (homes first), and `width`.
///
/// Homes: the greedy [`fill`] with each member capped at its [`ceiling`], then [`rebalance`] up
/// to its [`floor_of`], so every member holds 90–120 % of its weighted share (wider for small
/// shares: ±2√share). Why not exact quotas: when a member joins, every other quota shrinks by a
/// fraction, and with caps that tight each pair the newcomer takes displaces a member that then
/// takes a pair from another, in chains; measured, a join moved 1.3× the newcomer's share at 50
/// members, 1.6× at 200 and 2.7× at 1 000. With the loose caps the displaced member mostly just
/// holds one fewer: 1.00–1.04× (1 000 and 10 000 members at Q = 65 536 included). Weight in the score (not just the quota) lets heavy members claim their best
/// partitions early instead of filling leftovers.
///
/// Fallbacks are filled the same way after the homes, each member at most about its weighted
/// share (every member in every list when the cluster is small), so they change little on a
/// membership change too.
fn assign(members: &[Member], q: u32, replicas: usize) -> (Vec<u32>, usize) {
    let (m, qs) = (members.len(), q as usize);
    let r = replicas.min(m);
    let width = m.min(r.saturating_add(FALLBACKS));
    let quota = quotas(members, q, r);
    let mut rows: Vec<Vec<u32>> = vec![Vec::with_capacity(width); qs];
    let mut scores: Vec<Vec<f64>> = vec![Vec::with_capacity(width); qs];
    let cap: Vec<u64> = quota.iter().map(|&x| ceiling(x, q)).collect();
    let mut held = fill(members, q, &cap, r, &mut rows, &mut scores);
    // The greedy can strand a partition: every member with spare quota is then already in it
    // (or the greedy would have placed it there). Fill it by pulling in a member y from a
    // partition p2 lacking spare member x, and giving y's slot in p2 to x. Quotas sum to r·Q and
    // none exceeds Q, so such a swap always exists. Which swap matters for movement (a change
    // of members should not reshuffle the repairs): in a small cluster, where stranding is
    // common, the one that keeps the most score, from every pair's score; in a large one (rare
    // there) the one that evicts the weakest pair the greedy took.
    let table = (m * qs <= EXACT_REPAIR_PAIRS).then(|| score_table(members, q));
    while let Some(p) = (0..qs).find(|&p| rows[p].len() < r) {
        let Some(x) = (0..m).find(|&i| held[i] < cap[i]) else { break };
        let x = x as u32;
        let gain = |p2: usize, k: usize| match &table {
            Some(t) => {
                let y = rows[p2][k] as usize;
                t[y * qs + p] + t[x as usize * qs + p2] - t[y * qs + p2]
            }
            None => -scores[p2][k],
        };
        let mut best: Option<(f64, usize, usize)> = None;
        for p2 in (0..qs).filter(|&p2| p2 != p && !rows[p2].contains(&x)) {
            for k in 0..rows[p2].len() {
                if rows[p].contains(&rows[p2][k]) {
                    continue;
                }
                let g = gain(p2, k);
                if best.is_none_or(|b| g > b.0) {
                    best = Some((g, p2, k));
                }
            }
        }
        let Some((_, p2, k)) = best else { break };
        let y = std::mem::replace(&mut rows[p2][k], x);
        // The scores the pairs have (known exactly with the table; else y keeps its own).
        let (x_there, y_here) = match &table {
            Some(t) => (t[x as usize * qs + p2], t[y as usize * qs + p]),
            None => (scores[p2][k], scores[p2][k]),
        };
        scores[p2][k] = x_there;
        rows[p].push(y);
        scores[p].push(y_here);
        held[x as usize] += 1;
    }
    let floor: Vec<u64> = quota.iter().map(|&x| floor_of(x, q)).collect();
    rebalance(members, q, &floor, &mut held, &mut rows, &mut scores);
    if width > r {
        let spare = width - r;
        let cap: Vec<u64> = if width == m {
            // Every member in every list: each fills every partition it is no home of.
            (0..m).map(|i| q as u64 - held[i]).collect()
        } else {
            // A fair share of the fallback slots with room to spare, so the greedy rarely
            // leaves a list short (a short list only has fewer fallbacks).
            let fair = quotas(members, q, spare);
            (0..m).map(|i| (fair[i] + fair[i] / 4 + 1).min(q as u64 - held[i])).collect()
        };
        fill(members, q, &cap, spare, &mut rows, &mut scores);
    }
    let mut out = Vec::with_capacity(qs * width);
    for row in rows {
        let short = width - row.len();
        out.extend(row);
        // A list left short repeats no member: it is padded with the members it lacks, in id
        // order (never when every member fits, each member's cap then being exactly the
        // partitions it is missing from; rare otherwise).
        if short > 0 {
            let start = out.len() - (width - short);
            let have: Vec<u32> = out[start..].to_vec();
            out.extend((0..m as u32).filter(|i| !have.contains(i)).take(short));
        }
    }
    (out, width)
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
        assert!(c.values().all(|&n| n as u64 >= floor_of(85, 256)), "b, c and d hold their floor");
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
    fn a_join_to_a_larger_cluster_moves_about_the_newcomers_share() {
        // 64 partitions per member, as `quorumkv sim` and the README advise.
        for (n, q) in [(50usize, 4096u32), (200, 16384)] {
            let old = equal(n);
            let mut new = old.clone();
            new.push(mem("newcomer", 1));
            let (a, b) = (ring(old, q, 3), ring(new, q, 3));
            let held = b.partitions_of("newcomer").len();
            let moved = moves(&a, &b);
            let ratio = moved as f64 / held as f64;
            println!("{n}->{}: moved {moved}, newcomer holds {held}: {ratio:.3}", n + 1);
            assert!(ratio <= 1.25, "{n}: {ratio}");
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
    fn a_large_cluster_lists_homes_and_a_few_balanced_fallbacks() {
        let r = ring(equal(200), 4096, 3);
        let width = 3 + FALLBACKS;
        let mut fallback_load: HashMap<&str, usize> = HashMap::new();
        for p in 0..4096 {
            let list = r.preference_list(p);
            assert_eq!(list.len(), width);
            assert_eq!(list.iter().collect::<HashSet<_>>().len(), width, "distinct members");
            for id in &list[3..] {
                *fallback_load.entry(id.as_str()).or_default() += 1;
            }
        }
        let fair = 4096.0 * FALLBACKS as f64 / 200.0;
        let most = fallback_load.values().copied().max().unwrap_or(0) as f64;
        println!("fallback slots: most {most}, fair {fair}, members used {}", fallback_load.len());
        assert!(most <= (fair * 1.25).ceil() + 1.0, "fallback load is capped near the fair share");
        assert_eq!(fallback_load.len(), 200, "every member stands in for some partition");
        let quota = quotas(r.members(), 4096, 3);
        for (m, want) in r.members().iter().zip(quota) {
            let got = r.partitions_of(&m.id).len() as u64;
            assert!(got >= floor_of(want, 4096) && got <= ceiling(want, 4096), "{}: {got} of {want}", m.id);
        }
    }

    #[test]
    fn large_ring_builds() {
        let c = counts(&ring(equal(20), MAX_PARTITIONS, 3));
        assert_eq!(c.values().sum::<usize>(), 65536 * 3);
        let fair = 65536 * 3 / 20;
        assert!(c.values().all(|&n| n * 10 >= fair * 9 && n * 10 <= fair * 12), "{c:?}");
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
            let width = m.min(replicas.min(m) + FALLBACKS);
            for p in 0..64 {
                let list = r.preference_list(p);
                prop_assert_eq!(list.len(), width);
                let distinct = list.iter().map(|s| s.as_str()).collect::<HashSet<_>>();
                prop_assert_eq!(distinct.len(), width);
                prop_assert!(distinct.is_subset(&all));
            }
            // Every slot is filled by a distinct member (above), and each member holds
            // between its floor and its ceiling.
            let quota = quotas(r.members(), 64, replicas.min(m));
            let held: u64 = r.members().iter().map(|mb| r.partitions_of(&mb.id).len() as u64).sum();
            prop_assert_eq!(held, 64 * replicas.min(m) as u64);
            for (mb, &want) in r.members().iter().zip(&quota) {
                let got = r.partitions_of(&mb.id).len() as u64;
                prop_assert!(got >= floor_of(want, 64) && got <= ceiling(want, 64), "{} holds {got} of {want}", mb.id);
            }
            prop_assert_eq!(r.replicas_for(b"key", n).len(), n.min(width));
        }
    }
}
