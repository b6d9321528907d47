//! voxgate, the Proxy node: admits sessions against the node cap, picks the least-loaded Backend and
//! carries signalling and media between caller and Backend.
//!
//! This is the only crate that wires I/O to the cores: it owns the sockets, tasks, clocks and signals,
//! and drives the sans-I/O protocol and policy crates (`voxgate-sip`, `voxgate-media`,
//! `voxgate-cluster`) with them. It holds the configuration ([`config`]), the Prometheus metrics
//! ([`metrics`]), the private HTTP listener ([`http`]) and signal handling ([`shutdown`]). SIP parsing,
//! transactions, RTP and Backend selection live in those cores, not here.

pub mod admin;
pub mod call;
pub mod cluster;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dialer;
pub mod dispatch;
pub mod driver;
pub mod edge;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod probe;
pub mod records;
pub mod registry;
pub mod relay;
pub mod shutdown;
pub mod transfer;
pub mod trust;
pub mod webhook_url;
pub mod webrtc;

use std::sync::Arc;

use anyhow::Context as _;
use voxgate_endpoint::{Endpoint, EndpointOptions};
use voxgate_media::pool::PortPool;

use crate::gateway::{Gateway, SipMetrics};

/// Runs the node until shutdown: metrics, the private HTTP listener, the SIP endpoint with its
/// dispatcher and call tasks, Backend probing, and signal handling. The first SIGTERM/Ctrl-C
/// drains: no new sessions, calls run to their end or `drain.deadline`; a second one ends the
/// remaining calls with BYE. Then it returns.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let handle = metrics::install()?;
    tokio::spawn(metrics::upkeep(handle.clone()));
    metrics::sessions(0, config.limits.max_sessions);
    metrics::drain_remaining(0);
    let shutdown = shutdown::Shutdown::listen().context("installing signal handlers")?;

    relay::start_workers(config.media.workers, config.media.worker_nice);
    let ports = PortPool::new(config.media.port_min, config.media.port_max).with_context(|| {
        format!(
            "media.port_min..port_max {}..{}",
            config.media.port_min, config.media.port_max
        )
    })?;
    let cluster = cluster::ClusterLink::open(&config).await.with_context(|| {
        // The URL may carry a password: name the kind only.
        let kind = if config.cluster.registry == "embedded" {
            "embedded"
        } else {
            "redis"
        };
        format!("opening the cluster registry ({kind})")
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let trust = trust::Trust::new(
        &config,
        &env,
        rand::random(),
        tokio::time::Instant::now().into_std(),
    )?;
    let trunk_credentials = config.trunk_credentials(&env)?;
    let edge = Arc::new(edge::Edge::new(&config));
    let options = EndpointOptions {
        tcp: config.sip.listen_tcp,
        observer: Some(Arc::new(SipMetrics::default())),
        guard: Some(edge.clone()),
        ..EndpointOptions::default()
    };
    let (endpoint, incoming) = Endpoint::bind_with(config.sip.listen_udp, options)
        .await
        .with_context(|| {
            format!(
                "binding sip.listen_udp {} / sip.listen_tcp {:?}",
                config.sip.listen_udp, config.sip.listen_tcp
            )
        })?;
    let sip_addr = endpoint.local_addr();
    let sip_tcp = endpoint.tcp_addr();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let webrtc = match config.webrtc.listen {
        Some(listen) => {
            let whip = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding webrtc.listen {listen}"))?;
            let media = config.webrtc.media_listen;
            let hub = webrtc::PeerHub::bind(media)
                .await
                .with_context(|| format!("binding webrtc.media_listen {media}"))?;
            if config.webrtc.tokens.is_empty() {
                tracing::warn!("webrtc.tokens is empty: any client may open WHIP sessions");
            }
            Some((whip, hub))
        }
        None => None,
    };

    if config.backends.is_empty() {
        tracing::warn!("no backends configured: every call will be answered 503");
    }
    tracing::info!(
        node = %config.node.id,
        region = %config.node.region,
        http = %http_addr,
        sip_udp = %sip_addr,
        sip_tcp = ?sip_tcp,
        whip = ?webrtc.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        webrtc_media = ?webrtc.as_ref().map(|(_, hub)| hub.local_addr()),
        media_ports = %format!("{}-{}", config.media.port_min, config.media.port_max),
        max_sessions = config.limits.max_sessions,
        backends = config.backends.len(),
        "voxgate listening"
    );

    let (records, records_tasks) =
        records::Records::start(config.node.id.as_str(), &config.records)?;
    let mut gateway = Gateway::new(config, endpoint, ports, cluster, records, edge, trust);
    gateway.trunk_credentials = trunk_credentials;
    let gateway = Arc::new(gateway);
    // The registry's view (this node's lifecycle, the Backends) applies before the first call.
    if let Err(err) = fleet::sync(&gateway).await {
        tracing::warn!(%err, "first cluster registry sync failed");
    }
    let router = http::router(gateway.clone(), handle)
        .merge(admin::router(gateway.clone(), shutdown.clone()));
    // The HTTP listener outlives the drain: /readyz must answer false, not refuse connections,
    // and /metrics shows the drain's progress.
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(http::serve(listener, router, async move {
        let _ = http_stopped.await;
    }));
    let (stop_whip, whip_stopped) = tokio::sync::oneshot::channel::<()>();
    let whip_server = webrtc.map(|(listener, hub)| {
        let router = webrtc::Whip::new(gateway.clone(), hub).router();
        tokio::spawn(http::serve(listener, router, async move {
            let _ = whip_stopped.await;
        }))
    });
    tokio::spawn(dispatch::run(gateway.clone(), incoming));
    tokio::spawn(probe::run(gateway.clone()));
    tokio::spawn(fleet::run(gateway.clone()));
    tokio::spawn(dialer::run(gateway.clone()));

    tokio::select! {
        result = &mut server => return Ok(result.context("http server task")??),
        () = shutdown.wait() => {}
    }
    drain(&gateway, &shutdown).await;
    let _ = stop_http.send(());
    let _ = stop_whip.send(());
    let _ = server.await;
    if let Some(whip_server) = whip_server {
        let _ = whip_server.await;
    }
    // Every session has ended and handed in its record: write them all out; what the webhook
    // has not taken stays in its spool for the next start.
    gateway.records.close(records_tasks, RECORDS_GRACE).await;
    Ok(())
}

/// How long the shutdown waits for the records writer and the webhook's POST in flight.
const RECORDS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the drain waits for calls to end after hanging them up.
const HANG_UP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Winds the node down: no new sessions (503, `/readyz` false), answered calls run to their end
/// until `drain.deadline` or a second signal, after which the rest are ended with BYE to both
/// sides. Returns when no session is left.
async fn drain(gateway: &Gateway, shutdown: &shutdown::Shutdown) {
    use std::time::Duration;
    gateway.stop_accepting();
    let deadline = tokio::time::Instant::now() + gateway.config.drain.deadline;
    tracing::info!(
        active = gateway.slots.active(),
        deadline = ?gateway.config.drain.deadline,
        "draining: no new sessions; active ones run to their end"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut hung_up: Option<tokio::time::Instant> = None;
    loop {
        let active = gateway.slots.active();
        metrics::drain_remaining(active);
        if active == 0 {
            break;
        }
        // After the hang-up every call ends within a round trip or two; one whose peer never
        // answers must not keep the process (and an orchestrator's rollout) waiting.
        if hung_up.is_some_and(|at| at.elapsed() >= HANG_UP_GRACE) {
            tracing::warn!(
                active,
                "sessions still up {HANG_UP_GRACE:?} after the hang-up; exiting"
            );
            break;
        }
        tokio::select! {
            _ = tick.tick() => continue,
            () = tokio::time::sleep_until(deadline), if hung_up.is_none() => {
                tracing::warn!(active, "drain deadline reached: ending the remaining calls with BYE");
            }
            () = shutdown.wait_forced(), if hung_up.is_none() => {
                tracing::warn!(active, "second signal: ending the remaining calls with BYE");
            }
        }
        gateway.hang_up_all();
        hung_up = Some(tokio::time::Instant::now());
    }
    metrics::drain_remaining(0);
    if hung_up.is_some() {
        // The BYEs are on their way; give their answers (and retransmissions) a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::info!("all sessions ended");
}
