//! Prometheus metrics: the process-global recorder, every metric's description, and one-line helpers.
//!
//! Names carry the `voxgate_` prefix and base units; counters end in `_total`; labels stay low
//! cardinality (a fixed set of reasons, causes, methods and directions; Backend ids and regions come
//! from config). Call sites use the helpers below rather than the `metrics` macros so a name or label
//! is spelled in one place.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{
    Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `voxgate_session_setup_seconds`, 1 ms to 10 s.
pub const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `voxgate_outbound_queue_wait_seconds`, 10 ms to 10 min.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How often histogram samples are folded into buckets when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// SIP methods counted under their own name; anything else is `other`.
const KNOWN_METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "REFER",
    "MESSAGE",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
];

/// The `method` label of SIP responses in `voxgate_sip_messages_total`.
pub const RESPONSE: &str = "response";

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The exporter rejected its configuration, or another global recorder is already installed.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// Installs the process-global Prometheus recorder (no HTTP listener of its own: `/metrics` is served
/// by [`crate::http`]), describes every metric and sets `voxgate_build_info`. Idempotent: later calls
/// return the same handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("voxgate_session_setup_seconds".to_owned()),
            SETUP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("voxgate_webrtc_connect_seconds".to_owned()),
            SETUP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("voxgate_outbound_queue_wait_seconds".to_owned()),
            QUEUE_WAIT_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    gauge!("voxgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Folds histogram samples into buckets every [`UPKEEP_INTERVAL`] so memory stays bounded between
/// scrapes; run it as a task for the life of the process.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    describe_gauge!(
        "voxgate_sessions_active",
        Unit::Count,
        "Sessions (SIP calls + WebRTC peers) holding a slot of the node cap."
    );
    describe_gauge!(
        "voxgate_sessions_limit",
        Unit::Count,
        "The node cap, limits.max_sessions."
    );
    describe_gauge!(
        "voxgate_sessions_available",
        Unit::Count,
        "Slots left under the node cap."
    );
    describe_counter!(
        "voxgate_sessions_started_total",
        Unit::Count,
        "Sessions admitted under the node cap."
    );
    describe_counter!(
        "voxgate_sessions_rejected_total",
        Unit::Count,
        "Sessions refused, by reason."
    );
    describe_counter!(
        "voxgate_webrtc_shed_total",
        Unit::Count,
        "WebRTC media commands and peer events dropped because their queue was full."
    );
    describe_counter!(
        "voxgate_sip_refused_total",
        Unit::Count,
        "SIP requests refused at the edge before admission, by reason (unknown_source, bad_credentials, banned, scanner)."
    );
    describe_counter!(
        "voxgate_sip_challenges_total",
        Unit::Count,
        "401 digest challenges sent to callers of trunks with users."
    );
    describe_gauge!(
        "voxgate_sip_banned_sources",
        Unit::Count,
        "Source addresses banned now for going over sip.flood's request rate."
    );
    describe_counter!(
        "voxgate_sip_shed_total",
        Unit::Count,
        "SIP commands and events dropped because their queue was full (load shed)."
    );
    describe_counter!(
        "voxgate_sessions_ended_total",
        Unit::Count,
        "Admitted sessions that ended, by cause."
    );
    describe_histogram!(
        "voxgate_session_setup_seconds",
        Unit::Seconds,
        "From the caller's INVITE to the answer sent back."
    );
    describe_gauge!(
        "voxgate_webrtc_peers",
        Unit::Count,
        "WebRTC peers on the shared media socket (connecting or connected)."
    );
    describe_histogram!(
        "voxgate_webrtc_connect_seconds",
        Unit::Seconds,
        "From a WHIP POST to ICE and DTLS done (SRTP keyed)."
    );
    describe_counter!(
        "voxgate_webrtc_closed_total",
        Unit::Count,
        "WebRTC peers that closed, by reason (dtls_close, consent_expired, setup_timeout, local...)."
    );
    describe_counter!(
        "voxgate_webrtc_unrouted_total",
        Unit::Count,
        "Datagrams on the WebRTC media socket that belong to no peer."
    );
    describe_counter!(
        "voxgate_webrtc_transcoded_frames_total",
        Unit::Count,
        "20 ms frames transcoded between Opus and G.711, by direction."
    );
    describe_gauge!(
        "voxgate_outbound_queue_pending",
        Unit::Count,
        "Originate requests (POST /v1/calls) waiting for a session slot."
    );
    describe_gauge!(
        "voxgate_outbound_calls_processing",
        Unit::Count,
        "Originated calls being dialled, bridged or up."
    );
    describe_histogram!(
        "voxgate_outbound_queue_wait_seconds",
        Unit::Seconds,
        "How long an originate request waited before it was dialled (or gave up)."
    );
    describe_counter!(
        "voxgate_outbound_calls_total",
        Unit::Count,
        "Originate requests that finished, by outcome."
    );
    describe_counter!(
        "voxgate_outbound_refused_total",
        Unit::Count,
        "Originate requests refused at once, by reason (queue_full, not_accepting)."
    );
    describe_gauge!(
        "voxgate_backend_sessions_active",
        Unit::Count,
        "Sessions this proxy has placed on a Backend, in flight and answered."
    );
    describe_gauge!(
        "voxgate_backend_up",
        "1 when the Backend's health probes pass, else 0."
    );
    describe_counter!(
        "voxgate_rtp_packets_total",
        Unit::Count,
        "RTP/RTCP packets relayed, by direction."
    );
    describe_counter!(
        "voxgate_rtp_bytes_total",
        Unit::Bytes,
        "RTP/RTCP payload bytes relayed (UDP payload), by direction."
    );
    describe_counter!(
        "voxgate_rtp_dropped_total",
        Unit::Count,
        "RTP/RTCP packets dropped, by reason."
    );
    describe_counter!(
        "voxgate_sip_messages_total",
        Unit::Count,
        "SIP messages received and sent, by method (\"response\" for responses) and direction."
    );
    describe_gauge!(
        "voxgate_media_ports_in_use",
        Unit::Count,
        "RTP/RTCP port pairs leased to relay legs."
    );
    describe_gauge!(
        "voxgate_media_ports_capacity",
        Unit::Count,
        "RTP/RTCP port pairs in the configured range."
    );
    for (name, help) in [
        (
            "voxgate_region_sessions_active",
            "Sessions on the online nodes of a region, per kind (proxy, backend).",
        ),
        (
            "voxgate_region_sessions_limit",
            "Session caps of the online nodes of a region that take new sessions, per kind.",
        ),
        (
            "voxgate_region_sessions_available",
            "Free session slots in a region, per kind (limit - active, at least 0).",
        ),
        (
            "voxgate_region_nodes_online",
            "Nodes of a region with a fresh heartbeat (or answering probes), per kind.",
        ),
        (
            "voxgate_region_desired_nodes",
            "Nodes the autoscale advisor recommends for a region and kind: ceil(peak x 1.5 / per-node capacity) + 1, up fast, down slowly.",
        ),
    ] {
        describe_gauge!(name, Unit::Count, help);
    }
    describe_gauge!(
        "voxgate_region_capacity_utilization",
        "Active sessions over the limit of a region, per kind (0 when the limit is 0; above 1 while draining nodes hold more than the rest could take)."
    );
    describe_gauge!(
        "voxgate_drain_remaining_sessions",
        Unit::Count,
        "Sessions still up while the node drains (0 when not draining)."
    );
    describe_gauge!(
        "voxgate_build_info",
        "Always 1; the version label names the build."
    );
    describe_counter!(
        "voxgate_records_written_total",
        Unit::Count,
        "Call records written to the records file."
    );
    describe_counter!(
        "voxgate_records_dropped_total",
        Unit::Count,
        "Call records lost to a destination, by reason: queue_full (the writer's queue was full), closed (ended after the shutdown closed the writer), write_failed (not in the file), spool_full and webhook_rejected (in the file, never POSTed)."
    );
    describe_counter!(
        "voxgate_records_webhook_delivered_total",
        Unit::Count,
        "Call records the webhook answered 2xx."
    );
    describe_counter!(
        "voxgate_records_webhook_failures_total",
        Unit::Count,
        "Webhook POSTs that failed (no connection, timeout, 5xx, 408, 429) and will be retried."
    );
    describe_gauge!(
        "voxgate_records_spool_bytes",
        Unit::Bytes,
        "Bytes of call records waiting in the webhook spool."
    );
}

/// Whether a SIP message was received or sent by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the network.
    In,
    /// Sent to the network.
    Out,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// Which way a relayed media packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpDirection {
    /// From the caller's leg to the Backend's.
    CallerToBackend,
    /// From the Backend's leg to the caller's.
    BackendToCaller,
}

impl RtpDirection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerToBackend => "caller_to_backend",
            Self::BackendToCaller => "backend_to_caller",
        }
    }
}

/// A WebRTC media command or peer event shed because its queue was full.
pub fn webrtc_shed() {
    counter!("voxgate_webrtc_shed_total").increment(1);
}

/// SIP-plane commands and events shed because their queue was full (the endpoint's count).
pub fn sip_shed(total: u64) {
    counter!("voxgate_sip_shed_total").absolute(total);
}

/// Sets `voxgate_sessions_active`, `_limit` and `_available`.
pub fn sessions(active: u32, limit: u32) {
    gauge!("voxgate_sessions_active").set(f64::from(active));
    gauge!("voxgate_sessions_limit").set(f64::from(limit));
    gauge!("voxgate_sessions_available").set(f64::from(limit.saturating_sub(active)));
}

/// Sets the `voxgate_region_*` gauges of one region and kind.
pub fn region(
    region: &str,
    kind: &'static str,
    active: u32,
    limit: u32,
    utilization: f64,
    nodes_online: u32,
    desired_nodes: u32,
) {
    let labels = [("region", region.to_owned()), ("kind", kind.to_owned())];
    gauge!("voxgate_region_sessions_active", &labels).set(f64::from(active));
    gauge!("voxgate_region_sessions_limit", &labels).set(f64::from(limit));
    gauge!("voxgate_region_sessions_available", &labels)
        .set(f64::from(limit.saturating_sub(active)));
    gauge!("voxgate_region_capacity_utilization", &labels).set(utilization);
    gauge!("voxgate_region_nodes_online", &labels).set(f64::from(nodes_online));
    gauge!("voxgate_region_desired_nodes", &labels).set(f64::from(desired_nodes));
}

/// Sets `voxgate_drain_remaining_sessions`.
pub fn drain_remaining(sessions: u32) {
    gauge!("voxgate_drain_remaining_sessions").set(f64::from(sessions));
}

/// One SIP request refused at the edge (`unknown_source`, `bad_credentials`, `banned`,
/// `scanner`).
pub fn sip_refused(reason: &'static str) {
    counter!("voxgate_sip_refused_total", "reason" => reason).increment(1);
}

/// One 401 digest challenge sent.
pub fn sip_challenge() {
    counter!("voxgate_sip_challenges_total").increment(1);
}

/// Sources banned now.
pub fn sip_banned_sources(banned: usize) {
    gauge!("voxgate_sip_banned_sources").set(banned as f64);
}

/// A session was admitted.
pub fn session_started() {
    counter!("voxgate_sessions_started_total").increment(1);
}

/// A session was refused; `reason` from a fixed set, e.g. `capacity`, `no_backend`, `draining`,
/// `backend_failed`.
pub fn session_rejected(reason: &'static str) {
    counter!("voxgate_sessions_rejected_total", "reason" => reason).increment(1);
}

/// An admitted session ended; `cause` from a fixed set, e.g. `caller_bye`, `backend_bye`, `cancel`,
/// `media_timeout`, `backend_error`, `admin`.
pub fn session_ended(cause: &'static str) {
    counter!("voxgate_sessions_ended_total", "cause" => cause).increment(1);
}

/// A transfer of a caller ended; `outcome` is `completed` or the target's failure class
/// (`busy`, `no_answer`, `no_route`, `unavailable`, `failed`).
pub fn transfer_ended(outcome: &'static str) {
    counter!("voxgate_transfers_total", "outcome" => outcome).increment(1);
}

/// Time from the caller's INVITE to the answer.
pub fn setup_time(elapsed: Duration) {
    histogram!("voxgate_session_setup_seconds").record(elapsed.as_secs_f64());
}

/// Which way a transcoded frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscodeDirection {
    /// Opus from the client to G.711 for the Backend.
    ToBackend,
    /// G.711 from the Backend to Opus for the client.
    ToClient,
}

/// Sets `voxgate_webrtc_peers`.
pub fn webrtc_peers(peers: usize) {
    gauge!("voxgate_webrtc_peers").set(peers as f64);
}

/// A WebRTC peer connected, `elapsed` after its WHIP POST.
pub fn webrtc_connect_time(elapsed: Duration) {
    histogram!("voxgate_webrtc_connect_seconds").record(elapsed.as_secs_f64());
}

/// A WebRTC peer closed; `reason` from `ClosedReason::as_str`.
pub fn webrtc_closed(reason: &'static str) {
    counter!("voxgate_webrtc_closed_total", "reason" => reason).increment(1);
}

/// A datagram on the WebRTC socket matched no peer.
pub fn webrtc_unrouted() {
    counter!("voxgate_webrtc_unrouted_total").increment(1);
}

/// `frames` frames transcoded in `direction`. Called for every transcoded packet, so the two
/// handles are looked up once (after [`install`], as every session runs) and kept.
pub fn webrtc_transcoded(direction: TranscodeDirection, frames: u64) {
    static HANDLES: [OnceLock<Counter>; 2] = [OnceLock::new(), OnceLock::new()];
    if frames == 0 {
        return;
    }
    let (index, label) = match direction {
        TranscodeDirection::ToBackend => (0, "to_backend"),
        TranscodeDirection::ToClient => (1, "to_client"),
    };
    HANDLES[index]
        .get_or_init(|| counter!("voxgate_webrtc_transcoded_frames_total", "direction" => label))
        .increment(frames);
}

/// Sets `voxgate_outbound_queue_pending` and `voxgate_outbound_calls_processing`.
pub fn outbound_queue(pending: usize, processing: usize) {
    gauge!("voxgate_outbound_queue_pending").set(pending as f64);
    gauge!("voxgate_outbound_calls_processing").set(processing as f64);
}

/// An originate request left the queue after waiting `waited`.
pub fn outbound_wait(waited: Duration) {
    histogram!("voxgate_outbound_queue_wait_seconds").record(waited.as_secs_f64());
}

/// An originate request finished; `outcome` from the fixed set of `outbound::Outcome`.
pub fn outbound_finished(outcome: &'static str) {
    counter!("voxgate_outbound_calls_total", "outcome" => outcome).increment(1);
}

/// An originate request was refused at once (`queue_full`, `not_accepting`).
pub fn outbound_refused(reason: &'static str) {
    counter!("voxgate_outbound_refused_total", "reason" => reason).increment(1);
}

/// Sets one Backend's `voxgate_backend_sessions_active` and `voxgate_backend_up`.
pub fn backend(backend: &str, region: &str, active: u32, up: bool) {
    let labels = [
        ("backend", backend.to_owned()),
        ("region", region.to_owned()),
    ];
    gauge!("voxgate_backend_sessions_active", &labels).set(f64::from(active));
    gauge!("voxgate_backend_up", &labels).set(if up { 1.0 } else { 0.0 });
}

/// `packets` relayed RTP or RTCP packets totalling `bytes` (UDP payload); relays count locally
/// and flush here about once a second, so the per-packet path touches no shared counter.
pub fn rtp_packets(direction: RtpDirection, packets: u64, bytes: u64) {
    counter!("voxgate_rtp_packets_total", "direction" => direction.as_str()).increment(packets);
    counter!("voxgate_rtp_bytes_total", "direction" => direction.as_str()).increment(bytes);
}

/// `count` media packets dropped; `reason` from a fixed set: `strict_source`, `malformed`,
/// `no_destination`, `send_failed`.
pub fn rtp_dropped(reason: &'static str, count: u64) {
    counter!("voxgate_rtp_dropped_total", "reason" => reason).increment(count);
}

/// A call record went into the records file.
pub fn record_written() {
    counter!("voxgate_records_written_total").increment(1);
}

/// A call record missed a destination; `reason`: `queue_full`, `closed`, `write_failed`,
/// `spool_full`, `webhook_rejected`.
pub fn record_dropped(reason: &'static str) {
    counter!("voxgate_records_dropped_total", "reason" => reason).increment(1);
}

/// The webhook took a record.
pub fn record_delivered() {
    counter!("voxgate_records_webhook_delivered_total").increment(1);
}

/// A webhook POST failed and will be retried.
pub fn record_webhook_failed() {
    counter!("voxgate_records_webhook_failures_total").increment(1);
}

/// Sets `voxgate_records_spool_bytes`.
pub fn record_spool(bytes: u64) {
    gauge!("voxgate_records_spool_bytes").set(bytes as f64);
}

/// Sets `voxgate_media_ports_in_use` and `_capacity` (port pairs).
pub fn media_ports(in_use: usize, capacity: usize) {
    gauge!("voxgate_media_ports_in_use").set(in_use as f64);
    gauge!("voxgate_media_ports_capacity").set(capacity as f64);
}

/// Values of the `method` label: the known methods, then [`RESPONSE`], then `other`.
const SIP_LABELS: usize = KNOWN_METHODS.len() + 2;

/// `voxgate_sip_messages_total`, counted per SIP message. Each (method, direction) handle is
/// registered on its first message and kept, so a message costs one atomic add rather than a
/// registry lookup (key hashing and a map probe). Build it after [`install`]: a handle taken
/// before the recorder exists would count nowhere.
#[derive(Default)]
pub struct SipCounters {
    counters: [[OnceLock<Counter>; 2]; SIP_LABELS],
}

impl std::fmt::Debug for SipCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipCounters")
    }
}

impl SipCounters {
    /// One SIP message; `method` is the request method or [`RESPONSE`].
    pub fn record(&self, method: &str, direction: Direction) {
        let (index, label) = method_label(method);
        self.counters[index][direction as usize]
            .get_or_init(|| {
                counter!("voxgate_sip_messages_total", "method" => label, "direction" => direction.as_str())
            })
            .increment(1);
    }
}

/// The `method` label of `method` and its index among [`SIP_LABELS`]: a known SIP method or
/// [`RESPONSE`] as is, anything else `other` (bounds the label's values).
fn method_label(method: &str) -> (usize, &'static str) {
    if method == RESPONSE {
        return (KNOWN_METHODS.len(), RESPONSE);
    }
    KNOWN_METHODS
        .iter()
        .position(|known| *known == method)
        .map_or((KNOWN_METHODS.len() + 1, "other"), |i| {
            (i, KNOWN_METHODS[i])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_label_is_bounded() {
        assert_eq!(method_label("INVITE"), (0, "INVITE"));
        assert_eq!(method_label("response"), (SIP_LABELS - 2, "response"));
        // SIP methods are case-sensitive (RFC 3261 7.1).
        assert_eq!(method_label("invite"), (SIP_LABELS - 1, "other"));
        assert_eq!(method_label("X-EVIL-1234"), (SIP_LABELS - 1, "other"));
    }

    #[test]
    fn install_is_idempotent_and_renders_every_helper() {
        let handle = install().unwrap();
        let again = install().unwrap();
        sessions(3, 10);
        session_started();
        session_rejected("capacity");
        session_ended("caller_bye");
        setup_time(Duration::from_millis(30));
        backend("backend-1", "US-EAST", 2, true);
        rtp_packets(RtpDirection::CallerToBackend, 1, 172);
        rtp_dropped("strict_source", 1);
        outbound_queue(4, 2);
        outbound_wait(Duration::from_secs(2));
        outbound_finished("completed");
        outbound_refused("queue_full");
        let sip = SipCounters::default();
        sip.record("INVITE", Direction::In);
        sip.record("FOO", Direction::Out);
        sip.record("BAR", Direction::Out);
        let text = again.render();
        // Both handles read the one global recorder.
        assert!(handle.render().contains("voxgate_sessions_limit 10"));
        for needle in [
            "voxgate_sessions_active 3",
            "voxgate_sessions_available 7",
            "voxgate_sessions_limit 10",
            "voxgate_sessions_rejected_total{reason=\"capacity\"} 1",
            "voxgate_sessions_ended_total{cause=\"caller_bye\"} 1",
            "voxgate_session_setup_seconds_bucket{le=\"0.05\"} 1",
            "voxgate_outbound_queue_pending 4",
            "voxgate_outbound_calls_processing 2",
            "voxgate_outbound_queue_wait_seconds_bucket{le=\"5\"} 1",
            "voxgate_outbound_calls_total{outcome=\"completed\"} 1",
            "voxgate_outbound_refused_total{reason=\"queue_full\"} 1",
            "voxgate_backend_up{backend=\"backend-1\",region=\"US-EAST\"} 1",
            "voxgate_rtp_bytes_total{direction=\"caller_to_backend\"} 172",
            "voxgate_rtp_dropped_total{reason=\"strict_source\"} 1",
            "voxgate_sip_messages_total{method=\"other\",direction=\"out\"} 2",
            "voxgate_build_info{version=\"",
            "# HELP voxgate_sessions_started_total",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
