//! The coordinator's peer endpoint: a client write forwarded by the node
//! that received it, to be coordinated here as a home replica.

use super::{Coordinator, CoordinatorError, ForwardPut, ForwardPutResponse};
use crate::rpc::client::routes;
use crate::rpc::server::{Endpoints, Refusal};

impl Coordinator {
    pub fn register_endpoints(&self, endpoints: &mut Endpoints) {
        let coordinator = self.clone();
        endpoints.add(routes::PUT, move |_from, req: ForwardPut| {
            let coordinator = coordinator.clone();
            async move {
                // Not before this start's hello round: the node may learn its
                // data is an older copy and renew its actor epoch. Refused
                // untouched (425), so the forwarding node tries another home.
                if coordinator.replica().storage().unsynced().history_pending() {
                    return Err(Refusal::too_early("node is still greeting its peers"));
                }
                // The value crossed the network: it must still match the
                // digest its receiving node computed from the client's body.
                // Checked here, it is not hashed again by this coordinator
                // (`Objects::modify_vouching`), as a value that came in
                // through this node's own API is hashed once there; the
                // other replicas check the copies they are sent.
                if !req.value.digest_ok() {
                    return Ok(Err(CoordinatorError::DigestMismatch));
                }
                // One snapshot for the whole forwarded write, taken here.
                let layout = coordinator.membership().layout();
                let answer: ForwardPutResponse = coordinator
                    .coordinate_put(&layout, req.key, req.context, req.value, req.consistency)
                    .await;
                Ok(answer)
            }
        });
    }
}
