//! The replica's peer endpoints: batched reads and merges, sent by
//! coordinators, handoff and anti-entropy of other nodes.

use super::{ReadRequest, Replica, ReplicateRequest};
use crate::rpc::client::routes;
use crate::rpc::server::{Endpoints, Refusal};

impl Replica {
    pub fn register_endpoints(&self, endpoints: &mut Endpoints) {
        let replica = self.clone();
        endpoints.add(routes::READ, move |_from, requests: Vec<ReadRequest>| {
            let answers = replica.read_batch(&requests);
            async move { Ok(answers) }
        });
        let replica = self.clone();
        endpoints.add(routes::REPLICATE, move |_from, requests: Vec<ReplicateRequest>| {
            let replica = replica.clone();
            async move { replica.apply_batch(requests).await.map_err(Refusal::unavailable) }
        });
    }
}
