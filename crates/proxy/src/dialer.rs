//! Dials pending originate requests (`POST /v1/calls`) as session slots free up: the queue's
//! worker. Each request taken gets a slot and a Backend lease and becomes a session
//! ([`crate::call::originate`]).

use std::sync::Arc;

use tokio::time::Instant;
use voxgate_cluster::BackendLease;

use crate::call;
use crate::gateway::Gateway;
use crate::outbound::{CallRequest, Outcome, POLL, Progress};

/// Dials pending requests as slots free up, until the process ends. Requests are taken oldest
/// first; one whose Backend has no room now is passed over for the next, so a pinned Backend
/// that is full does not hold up the rest. While the node drains, pending requests end with
/// `shutdown`; in maintenance they wait (and may expire).
pub async fn run(gateway: Arc<Gateway>) {
    let queue = &gateway.outbound;
    loop {
        let now = Instant::now();
        queue.expire(now);
        if gateway.draining() {
            queue.abandon_all(Outcome::Shutdown, now);
        }
        if queue.pending() == 0 {
            queue.wake.notified().await;
            continue;
        }
        if gateway.refusal().is_none() {
            dial_next(&gateway);
        }
        tokio::select! {
            () = queue.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Dials as many pending requests as there are free slots and Backends with room.
fn dial_next(gateway: &Arc<Gateway>) {
    for (id, request) in gateway.outbound.waiting() {
        // Looked at before reserving: a reserve that is given back at once would still make a
        // concurrent INVITE see a full node for an instant.
        if gateway.slots.capacity().is_full() {
            return;
        }
        let Some(slot) = gateway.slots.try_reserve() else {
            return;
        };
        let Some(lease) = lease_for(gateway, &request) else {
            continue;
        };
        let Some(hang_up) = gateway.outbound.start(&id, lease.id(), Instant::now()) else {
            continue;
        };
        let pinned = request.backend.is_some();
        let progress = Progress::new(gateway.outbound.clone(), id, hang_up, pinned);
        tokio::spawn(call::originate(
            gateway.clone(),
            slot,
            lease,
            request,
            progress,
        ));
    }
}

fn lease_for(gateway: &Gateway, request: &CallRequest) -> Option<BackendLease> {
    let now = Instant::now().into_std();
    match &request.backend {
        Some(id) => gateway.picker.pick_node(now, id).ok(),
        None => gateway.picker.pick(now, &request.region, &[]).ok(),
    }
}
