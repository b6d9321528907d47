//! OPTIONS probing of the Backends: one OPTIONS each per interval; any response means alive, no
//! response within the interval counts as a failure. `HealthTracker` turns the results into
//! up/down with thresholds, and the picker stops or resumes routing to the Backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use voxgate_cluster::HealthTracker;
use voxgate_cluster::backend::BackendSpec;
use voxgate_core::NodeId;
use voxgate_sip::Event;
use voxgate_sip::dialog::Dialog;

use crate::gateway::Gateway;

/// Probes every Backend the picker knows (the configured ones and those the cluster registry
/// adds) once per interval until the process ends, except Backends that heartbeat through the
/// admin API: their heartbeat decides.
pub async fn run(gateway: Arc<Gateway>) {
    let config = gateway.config.health();
    let wait = config.interval.min(Duration::from_secs(4));
    let mut trackers: HashMap<NodeId, HealthTracker> = HashMap::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let specs: Vec<BackendSpec> = gateway
            .picker
            .backends()
            .into_iter()
            .filter(|spec| !gateway.cluster.heartbeats(&spec.id))
            .collect();
        trackers.retain(|id, _| specs.iter().any(|spec| &spec.id == id));
        let mut probes = tokio::task::JoinSet::new();
        for spec in specs {
            let gateway = gateway.clone();
            probes.spawn(async move {
                let alive = probe(&gateway, &spec, wait).await;
                (spec, alive)
            });
        }
        while let Some(Ok((spec, alive))) = probes.join_next().await {
            // It may have started heartbeating while the probe was out: the heartbeat decides.
            if gateway.cluster.heartbeats(&spec.id) {
                continue;
            }
            let tracker = trackers
                .entry(spec.id.clone())
                .or_insert_with(|| HealthTracker::new(config));
            if let Some(up) = tracker.record(alive) {
                tracing::warn!(backend = %spec.id, address = %spec.address, up, "backend health changed");
                gateway.picker.set_up(&spec.id, up);
            }
        }
    }
}

/// Sends one OPTIONS to `spec` and waits up to `wait` for any final response.
async fn probe(gateway: &Gateway, spec: &BackendSpec, wait: Duration) -> bool {
    let mut rng = gateway.call_rng();
    let mut dialog = Dialog::outgoing(
        &mut rng,
        gateway.sip_addr,
        format!("sip:probe@{}", gateway.sip_addr),
        format!("sip:{}", spec.address),
        gateway.user_agent,
    );
    let request = dialog.request(&mut rng, rsip::Method::Options, None);
    let mut events = gateway.endpoint.register(&dialog.call_id);
    gateway.endpoint.request(spec.address, request);
    let deadline = Instant::now() + wait;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep_until(deadline) => return false,
        };
        match event {
            Some(Event::Response { response, .. }) if response.status_code.code() >= 200 => {
                return true;
            }
            Some(Event::Timeout { .. }) | None => return false,
            Some(_) => {}
        }
    }
}
