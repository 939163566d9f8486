//! Joining: a node started with `seeds` and no stored layout fetches the
//! cluster's layout from a seed and, unless told to wait (`auto_join =
//! false`), asks to be in it once its own peer port serves. The seed checks that the caller's certificate
//! (signed by the cluster CA, or the TLS handshake would have failed) names
//! the id it joins as, records the wish and commits the next version; the
//! rest of the cluster learns it by gossip.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Membership;
use super::history::{Desire, History};
use crate::config::MemberConfig;
use crate::rpc::client::{PeerClient, routes};
use crate::rpc::identity::Identity;
use crate::rpc::server::{Endpoints, Refusal};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub cluster: String,
    pub member: MemberConfig,
    /// Ask to be added; `false` only fetches the layout.
    pub join: bool,
}

/// The seed's layout after the join, or why it refused.
pub type JoinReply = Result<History, String>;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no seed answered within {secs} s (last error: {last})")]
    NoSeed { secs: u64, last: String },
    #[error("seed {seed} refused: {why}")]
    Refused { seed: String, why: String },
}

/// Serves `routes::JOIN` on a member; a join is pushed to every member
/// (`peers`) before the answer.
pub fn register_endpoints(membership: &Arc<Membership>, peers: &PeerClient, endpoints: &mut Endpoints) {
    let (membership, peers) = (membership.clone(), peers.clone());
    endpoints.add_open(routes::JOIN, move |identity: Arc<Identity>, req: JoinRequest| {
        let (membership, peers) = (membership.clone(), peers.clone());
        async move {
            let (reply, changed) = answer(&membership, &identity, req)?;
            if changed {
                super::gossip::broadcast(&membership, &peers).await;
            }
            Ok(reply)
        }
    });
}

/// The reply, and whether the layout changed.
fn answer(
    membership: &Membership,
    identity: &Identity,
    req: JoinRequest,
) -> Result<(JoinReply, bool), Refusal> {
    let ours = membership.layout().history().cluster().to_string();
    if req.cluster != ours {
        tracing::warn!(node = %req.member.id, theirs = %req.cluster, %ours, "refusing a node of another cluster");
        return Ok((Err(format!("this node is in cluster {ours:?}, not {:?}", req.cluster)), false));
    }
    if !req.join {
        return Ok((Ok(membership.layout().history().clone()), false));
    }
    if let Err(why) = req.member.check() {
        return Ok((Err(why), false));
    }
    if !identity.names(&req.member.id) {
        return Err(Refusal::forbidden("the client certificate does not name the joining node's id"));
    }
    let me = membership.self_id().to_string();
    let member = req.member;
    let result = membership.update(|h| h.request(&me, &member.id, Desire::Member(member.clone())));
    match result {
        Ok(changed) => {
            if changed {
                tracing::info!(node = %member.id, "member joined");
            }
            Ok((Ok(membership.layout().history().clone()), changed))
        }
        Err(error) => Err(Refusal::unavailable(error)),
    }
}

/// Asks the seeds in turn, for up to `patience`, for the layout (the node
/// asks to join later, once it serves: [`join_now`]). A refusal (another
/// cluster) is final; an unreachable seed is retried.
pub async fn fetch(
    client: &PeerClient,
    seeds: &[String],
    request: &JoinRequest,
    patience: Duration,
) -> Result<History, JoinError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = String::from("no seeds");
    loop {
        for seed in seeds {
            match client.call_seed::<_, JoinReply>(seed, routes::JOIN, request, Duration::from_secs(5)).await
            {
                Ok(Ok(history)) if history.cluster() == request.cluster && history.validate().is_ok() => {
                    return Ok(history);
                }
                Ok(Ok(_)) => last = format!("{seed} sent a malformed layout"),
                Ok(Err(why)) => return Err(JoinError::Refused { seed: seed.clone(), why }),
                Err(error) => last = error.to_string(),
            }
            tracing::warn!(%seed, error = %last, "seed did not answer; trying the next");
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::NoSeed { secs: patience.as_secs(), last });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Asks the members of this node's layout, in turn, to add `me` (at start
/// once the peer port serves, or on `cluster join` with `auto_join =
/// false`); adopts the answer, returns the layout version that holds it.
pub async fn join_now(
    membership: &Membership,
    peers: &PeerClient,
    me: &MemberConfig,
) -> Result<u64, JoinError> {
    let layout = membership.layout();
    let request =
        JoinRequest { cluster: layout.history().cluster().to_string(), member: me.clone(), join: true };
    let mut last = String::from("no member to ask");
    for member in layout.members().iter().filter(|m| m.id != me.id) {
        match peers
            .call_url::<_, JoinReply>(&member.peer_url, routes::JOIN, &request, Duration::from_secs(5))
            .await
        {
            Ok(Ok(history)) => match membership.merge(&history) {
                Ok(_) => return Ok(membership.layout().version()),
                Err(error) => last = error.to_string(),
            },
            Ok(Err(why)) => return Err(JoinError::Refused { seed: member.id.clone(), why }),
            Err(error) => last = error.to_string(),
        }
    }
    Err(JoinError::NoSeed { secs: 0, last })
}
