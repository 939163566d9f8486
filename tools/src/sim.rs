//! `quorumkv sim`: a deterministic simulation of membership at scale — no
//! sockets, no clock, one seeded random generator — running the library's
//! own layout history, gossip exchange and ring code.
//!
//! For each cluster size it measures what a real join costs:
//! - the layout a node computes for the change (one new ring), and how
//!   many replicas the join moves against the ideal (the newcomer's share);
//! - gossip: every node exchanges with `fanout` random others per round
//!   (summary out, differing shards back, what still differs out: the
//!   messages [`gossip::answer_offer`] and [`History::apply`] handle on a
//!   real node, their bytes counted from their encoding), and moves its own
//!   tracker marks as the gossip worker does (acknowledge a version after
//!   the request grace, sync once every node acknowledged it, read from it
//!   after the grace again), until one version is left on every node.
//!
//! A round is one gossip interval (1 s by default); seconds are rounds
//! times the interval. A real cluster is faster: every peer call carries
//! the layout digest and a node that sees another one exchanges at once.

use std::time::Instant;

use clap::Args;
use quorumkv::config::MemberConfig;
use quorumkv::membership::Layout;
use quorumkv::membership::gossip::{self, LayoutAnswer};
use quorumkv::membership::history::{Desire, History, Tracker};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Cluster sizes to simulate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub members: Vec<usize>,
    /// Ring partitions Q; 0 picks 64 per member, rounded up to a power of two, at most 65536.
    #[arg(long, default_value_t = 0)]
    pub partitions: u32,
    /// Replicas per partition (max_n).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Peers each node exchanges with per round (the gossip worker's fanout).
    #[arg(long, default_value_t = gossip::FANOUT)]
    pub fanout: usize,
    /// Rounds a node waits before acknowledging a version it saw (the
    /// request grace: 2 request deadlines + 3 s = 13 s by default).
    #[arg(long, default_value_t = 13)]
    pub grace_rounds: u64,
    /// Length of a round (the gossip interval), for the seconds columns.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Give up after this many rounds.
    #[arg(long, default_value_t = 500)]
    pub max_rounds: u64,
    /// Seed of the random peer choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("layout: {0}")]
    Layout(String),
    #[error("the gossip did not settle in {0} rounds")]
    Unsettled(u64),
}

/// One cluster size's results.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub members: usize,
    pub partitions: u32,
    /// Computing the layout of the change (the new version's ring) on one node.
    pub layout_ms: f64,
    /// Replicas the join moved, and what the newcomer holds at the end.
    pub moved: usize,
    pub ideal: usize,
    /// Rounds until every node held the new version.
    pub spread_rounds: u64,
    /// Rounds until every node had one version again (the change finished).
    pub settled_rounds: u64,
    pub spread_secs: f64,
    pub settled_secs: f64,
    /// Bytes each node sent per round, mean over the run and the busiest round's mean.
    pub bytes_per_node_round: f64,
    pub peak_bytes_per_node_round: f64,
    /// Bytes of one whole history, and what each node would send per round
    /// if exchanges sent whole histories (its own `fanout` pushes and as
    /// many answers).
    pub history_bytes: usize,
    pub full_state_bytes_per_node_round: f64,
    pub wall_secs: f64,
}

fn member(i: usize) -> MemberConfig {
    let id = format!("quorumkv-{i}");
    let host = format!("{id}.quorumkv-peers.quorumkv.svc.cluster.local");
    MemberConfig {
        client_url: format!("https://{host}:8443"),
        peer_url: format!("https://{host}:9443"),
        id,
        weight: 1,
    }
}

/// Q for `n` members: 64 partitions each, a power of two, at most 65536.
pub fn partitions_for(n: usize) -> u32 {
    (n.saturating_mul(64)).next_power_of_two().clamp(64, 65536) as u32
}

/// Runs every size in `args.members`.
pub fn run(args: &SimArgs) -> Result<Vec<SimResult>, SimError> {
    args.members.iter().map(|&n| simulate(args, n)).collect()
}

/// What one node of the simulation keeps besides its history.
struct Node {
    id: String,
    history: History,
    /// When (round) it first saw its newest and its read version, by digest.
    newest_seen: Option<([u8; 16], u64)>,
    read_seen: Option<([u8; 16], u64)>,
    sent: u64,
}

fn simulate(args: &SimArgs, n: usize) -> Result<SimResult, SimError> {
    let started = Instant::now();
    let q = if args.partitions == 0 { partitions_for(n + 1) } else { args.partitions };
    let members: Vec<MemberConfig> = (0..n).map(member).collect();
    let max_n = u32::try_from(args.replicas).unwrap_or(3);
    let base = History::initial("sim", q, max_n, &members);
    let history_bytes = postcard_len(&base);
    let joiner = member(n);

    // The layout of the change, as a node computes it: the old version's
    // ring is reused, the new one's built.
    let before = Layout::of(base.clone()).map_err(|e| SimError::Layout(e.to_string()))?;
    let mut changed = base.clone();
    changed.request(&members[0].id, &joiner.id, Desire::Member(joiner.clone()));
    let t = Instant::now();
    let after = Layout::after(changed, Some(&before)).map_err(|e| SimError::Layout(e.to_string()))?;
    let layout_ms = t.elapsed().as_secs_f64() * 1e3;
    let (moved, ideal) = movement(&after, &joiner.id, args.replicas);
    drop((before, after));

    // Gossip: node 0 is the seed the joiner asked; the joiner starts from
    // the layout it fetched.
    let mut nodes: Vec<Node> = members
        .iter()
        .chain(std::iter::once(&joiner))
        .map(|m| Node {
            id: m.id.clone(),
            history: base.clone(),
            newest_seen: None,
            read_seen: None,
            sent: 0,
        })
        .collect();
    nodes[0].history.request(&members[0].id, &joiner.id, Desire::Member(joiner.clone()));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let total = nodes.len();
    let (mut spread, mut settled) = (None, None);
    let mut peak = 0.0f64;
    let mut sent_total = 0u64;
    let mut order: Vec<usize> = (0..total).collect();
    for round in 1..=args.max_rounds {
        let sent_before: u64 = nodes.iter().map(|n| n.sent).sum();
        order.shuffle(&mut rng);
        for &i in &order {
            for _ in 0..args.fanout.min(total - 1) {
                let j = loop {
                    let j = rand::Rng::random_range(&mut rng, 0..total);
                    if j != i {
                        break j;
                    }
                };
                exchange(&mut nodes, i, j);
            }
        }
        for node in &mut nodes {
            step(node, round, args.grace_rounds);
        }
        let sent: u64 = nodes.iter().map(|n| n.sent).sum::<u64>() - sent_before;
        sent_total += sent;
        peak = peak.max(sent as f64 / total as f64);
        if spread.is_none() && nodes.iter().all(|n| n.history.current().has(&joiner.id)) {
            spread = Some(round);
        }
        let digest = nodes[0].history.digest();
        if nodes.iter().all(|n| n.history.versions().len() == 1 && n.history.digest() == digest)
            && nodes[0].history.current().has(&joiner.id)
        {
            settled = Some(round);
            break;
        }
    }
    let settled = settled.ok_or(SimError::Unsettled(args.max_rounds))?;
    let spread = spread.unwrap_or(settled);
    let secs = |rounds: u64| rounds as f64 * args.interval_ms as f64 / 1e3;
    Ok(SimResult {
        members: n,
        partitions: q,
        layout_ms,
        moved,
        ideal,
        spread_rounds: spread,
        settled_rounds: settled,
        spread_secs: secs(spread),
        settled_secs: secs(settled),
        bytes_per_node_round: sent_total as f64 / total as f64 / settled as f64,
        peak_bytes_per_node_round: peak,
        history_bytes,
        full_state_bytes_per_node_round: (2 * args.fanout * history_bytes) as f64,
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

fn postcard_len<T: Serialize>(value: &T) -> usize {
    postcard::to_stdvec(value).map_or(0, |b| b.len())
}

/// One push-pull exchange from `i` to `j`, with the real messages.
fn exchange(nodes: &mut [Node], i: usize, j: usize) {
    let offer = nodes[i].history.summary();
    // An enum tag byte before each message.
    nodes[i].sent += 1 + postcard_len(&offer) as u64;
    match gossip::answer_offer(&nodes[j].history, &offer) {
        LayoutAnswer::Differ { summary, delta } => {
            nodes[j].sent += 1 + (postcard_len(&summary) + delta.encoded_len()) as u64;
            // Same cluster and ring by construction: a refusal cannot happen.
            let _ = nodes[i].history.apply(&delta);
            let push = nodes[i].history.delta_for(&summary);
            if !push.is_empty() {
                nodes[i].sent += 1 + push.encoded_len() as u64;
                let _ = nodes[j].history.apply(&push);
                nodes[j].sent += 1;
            }
        }
        _ => nodes[j].sent += 1,
    }
}

/// A node's own moves, as the gossip worker makes them (the transfer of
/// data is taken as instant: this measures the protocol).
fn step(node: &mut Node, round: u64, grace: u64) {
    let h = &mut node.history;
    let me = node.id.as_str();
    let committer = h.current().members().first().is_some_and(|m| m.id == me);
    if committer && h.uncommitted() {
        h.commit();
    }
    let newest = h.current().digest();
    if since(&mut node.newest_seen, newest, round) >= grace {
        gossip::mark_digest(h, Tracker::Ack, me, newest);
    }
    let last = h.versions().len() - 1;
    if h.all_reached(Tracker::Ack, last) {
        gossip::mark_digest(h, Tracker::Sync, me, newest);
    }
    let read = h.versions()[h.read_index_for(me)].digest();
    if since(&mut node.read_seen, read, round) >= grace {
        gossip::mark_digest(h, Tracker::SyncAck, me, read);
    }
}

fn since(slot: &mut Option<([u8; 16], u64)>, digest: [u8; 16], round: u64) -> u64 {
    match slot {
        Some((d, at)) if *d == digest => round - *at,
        _ => {
            *slot = Some((digest, round));
            0
        }
    }
}

/// Replicas the join moves (new homes of a partition that were not homes
/// before), and what the newcomer holds once it is done, from the layout of
/// the change (its old and new replica sets).
fn movement(layout: &Layout, joiner: &str, r: usize) -> (usize, usize) {
    let moved = (0..layout.partitions())
        .map(|p| {
            let sets = layout.write_sets(p, r);
            let (old, new) = (sets[0], sets[sets.len() - 1]);
            new.iter().filter(|id| !old.contains(id)).count()
        })
        .sum();
    (moved, layout.partitions_of(joiner).len())
}

/// The results as a Markdown table.
pub fn table(results: &[SimResult], args: &SimArgs) -> String {
    let mut out = format!(
        "Fanout {}, a round = {} ms, acknowledgement grace {} rounds, N = {}.\n\n",
        args.fanout, args.interval_ms, args.grace_rounds, args.replicas
    );
    out.push_str("| members | Q | layout ms | moved / newcomer holds | spread rounds (s) | settled rounds (s) | B/node/round mean | peak | whole-history exchanges B/node/round | sim s |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} / {} = {:.2} | {} ({:.0}) | {} ({:.0}) | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            r.members,
            r.partitions,
            r.layout_ms,
            r.moved,
            r.ideal,
            r.moved as f64 / r.ideal.max(1) as f64,
            r.spread_rounds,
            r.spread_secs,
            r.settled_rounds,
            r.settled_secs,
            r.bytes_per_node_round,
            r.peak_bytes_per_node_round,
            r.full_state_bytes_per_node_round,
            r.wall_secs,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(members: Vec<usize>) -> SimArgs {
        SimArgs {
            members,
            partitions: 0,
            replicas: 3,
            fanout: 2,
            grace_rounds: 3,
            interval_ms: 1000,
            max_rounds: 300,
            seed: 7,
            json: false,
        }
    }

    #[test]
    fn a_join_spreads_and_settles_in_a_few_rounds_and_moves_about_the_ideal_share() {
        let results = run(&args(vec![50, 200])).unwrap();
        for r in &results {
            println!("{r:?}");
            assert!(r.spread_rounds <= r.settled_rounds);
            assert!(r.spread_rounds <= 15, "{} members: spread in {} rounds", r.members, r.spread_rounds);
            let ratio = r.moved as f64 / r.ideal as f64;
            assert!((1.0..=1.25).contains(&ratio), "moved {} of ideal {}", r.moved, r.ideal);
            assert!(
                r.bytes_per_node_round < r.full_state_bytes_per_node_round / 2.0,
                "gossip by difference sends less than half of what exchanging whole histories would"
            );
        }
    }

    #[test]
    fn the_simulation_is_deterministic() {
        let a = run(&args(vec![30])).unwrap();
        let b = run(&args(vec![30])).unwrap();
        assert_eq!((a[0].spread_rounds, a[0].settled_rounds), (b[0].spread_rounds, b[0].settled_rounds));
        assert_eq!(a[0].bytes_per_node_round, b[0].bytes_per_node_round);
    }
}
