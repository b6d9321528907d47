//! voxgate, the Proxy node: admits sessions against the node cap, picks the least-loaded Backend and
//! carries signalling and media between caller and Backend.
//!
//! This is the only crate that wires I/O to the cores: it owns the sockets, tasks, clocks and signals,
//! and drives the sans-I/O protocol and policy crates (`voxgate-sip`, `voxgate-media`,
//! `voxgate-cluster`) with them. It holds the configuration ([`config`]), the Prometheus metrics
//! ([`metrics`]), the private HTTP listener ([`http`]) and signal handling ([`shutdown`]). SIP parsing,
//! transactions, RTP and Backend selection live in those cores, not here.

pub mod call;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod probe;
pub mod relay;
pub mod shutdown;

use std::sync::Arc;

use anyhow::Context as _;
use voxgate_endpoint::{Endpoint, EndpointOptions};
use voxgate_media::pool::PortPool;

use crate::gateway::{Gateway, SipMetrics};

/// Runs the node until shutdown: metrics, the private HTTP listener, the SIP endpoint with its
/// dispatcher and call tasks, Backend probing, and signal handling. The first SIGTERM/Ctrl-C
/// stops new sessions and lets active ones end (up to the media timeout); a second one exits.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let handle = metrics::install()?;
    tokio::spawn(metrics::upkeep(handle.clone()));
    metrics::sessions(0, config.limits.max_sessions);
    let shutdown = shutdown::Shutdown::listen().context("installing signal handlers")?;

    relay::start_workers(config.media.workers, config.media.worker_nice);
    let ports = PortPool::new(config.media.port_min, config.media.port_max).with_context(|| {
        format!(
            "media.port_min..port_max {}..{}",
            config.media.port_min, config.media.port_max
        )
    })?;
    let options = EndpointOptions {
        tcp: config.sip.listen_tcp,
        observer: Some(Arc::new(SipMetrics)),
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

    if config.backends.is_empty() {
        tracing::warn!("no backends configured: every call will be answered 503");
    }
    tracing::info!(
        node = %config.node.id,
        region = %config.node.region,
        http = %http_addr,
        sip_udp = %sip_addr,
        sip_tcp = ?sip_tcp,
        media_ports = %format!("{}-{}", config.media.port_min, config.media.port_max),
        max_sessions = config.limits.max_sessions,
        backends = config.backends.len(),
        "voxgate listening"
    );
    let gateway = Arc::new(Gateway::new(config, endpoint, ports));
    let router = http::router(gateway.clone(), handle);
    let stop = shutdown.clone();
    let mut server = tokio::spawn(http::serve(
        listener,
        router,
        async move { stop.wait().await },
    ));
    tokio::spawn(dispatch::run(gateway.clone(), incoming));
    tokio::spawn(probe::run(gateway.clone()));

    tokio::select! {
        result = &mut server => return Ok(result.context("http server task")??),
        () = shutdown.wait() => {}
    }
    gateway.stop_accepting();
    tracing::info!(
        active = gateway.slots.active(),
        "shutting down: no new sessions; waiting for active ones"
    );
    let drained = async {
        while gateway.slots.active() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("all sessions ended"),
        () = shutdown.wait_forced() => tracing::warn!(active = gateway.slots.active(), "second signal: exiting now"),
    }
    let _ = server.await;
    Ok(())
}
