//! A quorum read: ask the key's replicas (fallbacks for those out of
//! reach), answer with the merge of the first R replies that count, repair
//! the replicas that answered with less. With the quorum fan-out (the
//! default) only R replicas are asked at first, this node's own copy
//! first; see [`crate::config::ReadFanout`].

use bytes::Bytes;
use futures::FutureExt;
use tokio::time::Instant;

use rand::seq::SliceRandom;

use super::quorum::{Call, Reply, gather, gather_hedged};
use super::{Consistency, Coordinator, CoordinatorError, Outcome, QuorumKind, QuorumReport, read_repair};
use crate::config::ReadFanout;
use crate::replica::{ReadRequest, ReadResponse};
use crate::rpc::error::{PeerError, RemoteCode};
use crate::storage::Object;

impl Coordinator {
    fn read_call(
        &self,
        node: &str,
        hint: Option<String>,
        partition: u32,
        key: &Bytes,
        deadline: Instant,
    ) -> Call<ReadResponse> {
        let node = node.to_string();
        let key = key.clone();
        let this = self.clone();
        async move {
            let primary = hint.is_none();
            let request = ReadRequest { partition, key, hint };
            let result = if node == this.membership.self_id() {
                this.replica.read_one(&request).map_err(|e| e.to_peer())
            } else {
                match this.peer_slot(&node, deadline).await {
                    Ok((q, _permit)) => {
                        let bytes = request.key.len() + 16;
                        let sent = Instant::now();
                        let result = q.read.call(request, bytes).await;
                        if result.is_ok() {
                            this.hedge.record(sent.elapsed());
                        }
                        result
                    }
                    Err(e) => Err(e),
                }
            };
            // A fallback that holds no hint for the key knows nothing of it:
            // its "nothing" must not count toward R as a not-found.
            let result = match result {
                Ok(ReadResponse { object: None, .. }) if !primary => {
                    Err(PeerError::remote(RemoteCode::NotHeld, "the fallback holds no hint for this key"))
                }
                other => other,
            };
            Reply { stands_for: node.clone(), node, primary, result }
        }
        .boxed()
    }

    /// Asks the key's replicas, answers with the merge of the first R replies.
    pub async fn get(&self, key: Bytes, c: Consistency) -> Result<Outcome, CoordinatorError> {
        let layout = self.membership.layout();
        let partition = layout.partition_of(&key);
        let deadline = Instant::now() + self.timeout;
        let self_id = self.membership.self_id();
        let mut targets = self.plan(&layout, partition, c.n, false).targets;
        // Reachable homes first, in random order so no home takes every
        // coordinator's reads; stand-ins for unreachable homes after them,
        // and last the unreachable homes no stand-in was left for.
        targets.shuffle(&mut rand::rng());
        targets.sort_by_key(|t| (!self.membership.is_reachable(&t.node), !t.is_home()));
        let mut calls: Vec<_> = targets
            .into_iter()
            .map(|t| self.read_call(&t.node, t.hint_for, partition, &key, deadline))
            .collect();
        if layout.replicas_of(partition, c.n).iter().any(|h| h == self_id) {
            // This node's own copy first: it costs no round trip.
            calls.insert(0, self.read_call(self_id, None, partition, &key, deadline));
        }
        // Only authoritative answers count: a replica that lost its data
        // (or holds a corrupt record) may lack an acknowledged write, and
        // counting its "nothing" would break R + W > N.
        let counts = |r: &Reply<ReadResponse>| r.result.as_ref().is_ok_and(|a| a.authoritative);
        let enough = |ok: &[Reply<ReadResponse>]| {
            ok.iter().filter(|r| counts(r)).count() >= c.r
                && ok.iter().filter(|r| r.primary && counts(r)).count() >= c.pr
        };
        let gathered = match self.read_fanout {
            ReadFanout::All => gather(calls, deadline, enough).await,
            ReadFanout::Quorum => {
                let spares = calls.split_off(c.r.max(c.pr).min(calls.len()));
                let (gathered, speculative) =
                    gather_hedged(calls, spares, self.hedge.delay(), deadline, counts, enough).await;
                self.speculative_reads.fetch_add(speculative as u64, std::sync::atomic::Ordering::Relaxed);
                gathered
            }
        };
        let answered = gathered.ok.iter().filter(|r| counts(r)).count();
        if answered < c.r {
            gathered.finish_in_background(&self.tasks);
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::R,
                required: c.r,
                answered,
                n: c.n,
            });
        }
        let primaries = gathered.ok.iter().filter(|r| r.primary && counts(r)).count();
        if primaries < c.pr {
            gathered.finish_in_background(&self.tasks);
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::Pr,
                required: c.pr,
                answered: primaries,
                n: c.n,
            });
        }
        let mut object = Object::new();
        for found in gathered.values().filter_map(|a| a.object.as_ref()) {
            object.merge(found);
        }
        match &self.read_repair {
            Some(cancel) => {
                read_repair::spawn(self.clone(), cancel.clone(), partition, key, gathered, deadline)
            }
            None => gathered.finish_in_background(&self.tasks),
        }
        Ok(Outcome { object, report: QuorumReport::Read { n: c.n, r: c.r, answered } })
    }
}
