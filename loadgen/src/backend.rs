//! `voxgate-loadgen backend`: an echo Backend. Answers INVITEs (503 above its cap), echoes every
//! RTP packet to its sender, answers OPTIONS, and ends calls on BYE, CANCEL or media silence.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::echo::{EchoSocket, PeerActivity};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use voxgate_sip::sdp::{AudioSdp, CodecKind};
use voxgate_sip::{Event, TransactionKey};

use voxgate_endpoint::{Endpoint, NewDialogs, Route};
use voxgate_sip::dialog::Dialog;
use voxgate_sip::message::{new_tag, response_for, to_tag};

/// Methods the echo Backend implements, for `Allow`.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";

/// How the echo Backend behaves.
#[derive(Debug, Clone)]
pub struct BackendPlan {
    /// SIP listen address.
    pub listen: SocketAddr,
    /// Address put in SDP and Contact when `listen` is unspecified.
    pub public_ip: Option<IpAddr>,
    /// Most calls at once; INVITEs above get 503.
    pub max_sessions: u64,
    /// Retry-After on 503s.
    pub retry_after: Duration,
    /// Delay between the INVITE and the 200 OK (a 180 Ringing is sent meanwhile).
    pub answer_delay: Duration,
    /// A call with no RTP received for this long is ended with BYE.
    pub media_timeout: Duration,
    /// Codecs accepted, in preference order.
    pub codecs: Vec<CodecKind>,
    /// Status line interval (zero: none).
    pub status_every: Duration,
}

/// Counters of the Backend.
#[derive(Debug, Default)]
struct Counters {
    active: AtomicU64,
    answered: AtomicU64,
    rejected: AtomicU64,
    /// Calls cancelled before the answer (CANCEL during the answer delay).
    cancelled: AtomicU64,
    ended: AtomicU64,
}

struct Shared {
    plan: BackendPlan,
    endpoint: Endpoint,
    media_ip: IpAddr,
    echo: EchoSocket,
    counters: Counters,
    shutdown: watch::Receiver<bool>,
}

/// Runs the Backend until Ctrl-C or SIGTERM; then hangs up every call with BYE and returns.
pub async fn run(plan: BackendPlan) -> anyhow::Result<()> {
    let (endpoint, mut incoming) = Endpoint::bind(plan.listen, Default::default()).await?;
    let media_ip = match (plan.listen.ip(), plan.public_ip) {
        (_, Some(ip)) => ip,
        (ip, None) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        (ip, None) => ip,
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        endpoint,
        media_ip,
        echo: EchoSocket::start(media_ip)?,
        counters: Counters::default(),
        shutdown,
    });
    tracing::info!(
        listen = %shared.endpoint.local_addr(),
        max_sessions = plan.max_sessions,
        "echo backend ready"
    );
    let mut status = tokio::time::interval(if plan.status_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        plan.status_every
    });
    status.reset();
    let mut rng = SmallRng::from_os_rng();
    let terminate = terminate_signal();
    tokio::pin!(terminate);
    // Calls are routed before their task runs, and what is queued behind their INVITE is
    // forwarded to them, as the proxy's dispatcher does.
    let mut claimed = NewDialogs::new();
    loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(event) => {
                    let Some(event) = claimed.forward(&shared.endpoint, event) else {
                        continue;
                    };
                    on_incoming(&shared, &mut rng, &mut claimed, event);
                }
                None => break,
            },
            _ = status.tick(), if !plan.status_every.is_zero() => log_status(&shared),
            () = &mut terminate => break,
        }
    }
    tracing::info!("shutting down: hanging up active calls");
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.counters.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the last BYEs a moment on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    log_status(&shared);
    Ok(())
}

fn log_status(shared: &Shared) {
    let c = &shared.counters;
    tracing::info!(
        active = c.active.load(Ordering::Relaxed),
        answered = c.answered.load(Ordering::Relaxed),
        rejected = c.rejected.load(Ordering::Relaxed),
        cancelled = c.cancelled.load(Ordering::Relaxed),
        ended = c.ended.load(Ordering::Relaxed),
        rtp_echoed = shared.echo.echoed(),
        "backend status"
    );
}

fn on_incoming(shared: &Arc<Shared>, rng: &mut SmallRng, claimed: &mut NewDialogs, event: Event) {
    let Event::Request {
        key,
        request,
        source,
        ..
    } = event
    else {
        // ACKs and responses for calls that are gone: nothing to do.
        return;
    };
    let endpoint = &shared.endpoint;
    let reply = |code: u16, extra: Vec<rsip::Header>| {
        let mut response = response_for(&request, code, None);
        for header in extra {
            response.headers.push(header);
        }
        endpoint.respond(key.clone(), response);
    };
    let allow = || vec![rsip::Header::Allow(ALLOW.into())];
    let in_dialog = to_tag(&request).is_some();
    match request.method {
        rsip::Method::Invite if in_dialog => reply(481, Vec::new()),
        rsip::Method::Invite => {
            let counters = &shared.counters;
            let shutting_down = *shared.shutdown.borrow();
            let admitted = !shutting_down
                && counters
                    .active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                        (active < shared.plan.max_sessions).then_some(active + 1)
                    })
                    .is_ok();
            if !admitted {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                let retry = shared.plan.retry_after.as_secs().max(1).to_string();
                reply(503, vec![rsip::Header::RetryAfter(retry.into())]);
                return;
            }
            let local_tag = new_tag(rng);
            let call_rng = SmallRng::from_rng(rng);
            // Routed before the call's task runs, so that nothing of the call goes astray.
            let call_id = voxgate_sip::message::call_id(&request)
                .unwrap_or_default()
                .to_owned();
            let claim = claimed.claim(endpoint, &call_id);
            let events = CallEvents {
                events: claim.events,
                _route: claim.route,
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                EchoCall::answer(&shared, call_rng, key, request, source, local_tag, events).await;
                shared.counters.active.fetch_sub(1, Ordering::AcqRel);
                shared.counters.ended.fetch_add(1, Ordering::Relaxed);
            });
        }
        rsip::Method::Options => {
            let mut extra = allow();
            extra.push(rsip::Header::Accept("application/sdp".into()));
            reply(200, extra);
        }
        rsip::Method::Ack => {}
        rsip::Method::Bye | rsip::Method::Cancel | rsip::Method::Info | rsip::Method::Update => {
            reply(481, Vec::new());
        }
        _ => reply(405, allow()),
    }
}

/// One answered call: its SIP dialog (media goes through the shared echo socket).
struct EchoCall<'a> {
    shared: &'a Shared,
    rng: SmallRng,
    dialog: Dialog,
    events: CallEvents,
}

/// A call's events, routed to it from its INVITE on; the route goes with it.
struct CallEvents {
    events: mpsc::Receiver<Event>,
    _route: Route,
}

impl CallEvents {
    async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl<'a> EchoCall<'a> {
    async fn answer(
        shared: &'a Shared,
        rng: SmallRng,
        key: TransactionKey,
        invite: rsip::Request,
        source: SocketAddr,
        local_tag: String,
        events: CallEvents,
    ) {
        let endpoint = &shared.endpoint;
        let mut local = Dialog::incoming(
            &invite,
            contact_addr(shared),
            local_tag,
            "echo",
            crate::USER_AGENT,
        );
        if local.next_hop().is_none() {
            local.remote_target = format!("sip:{source}");
        }
        let reply = |code: u16, body: Option<String>| {
            endpoint.respond(key.clone(), local.response(&invite, code, body));
        };
        let offer = std::str::from_utf8(&invite.body)
            .ok()
            .and_then(|text| AudioSdp::parse(text).ok());
        let Some(offer) = offer else {
            reply(488, None);
            return;
        };
        let media_addr = shared.echo.local_addr();
        let answer_sdp = |offer: &AudioSdp, version: u64| {
            AudioSdp::answer(
                offer,
                &shared.plan.codecs,
                media_addr.ip(),
                media_addr.port(),
                version,
            )
        };
        let Ok(answer) = answer_sdp(&offer, 1) else {
            reply(488, None);
            return;
        };
        let mut call = EchoCall {
            shared,
            rng,
            events,
            dialog: local,
        };
        if !shared.plan.answer_delay.is_zero() {
            endpoint.respond(key.clone(), call.dialog.response(&invite, 180, None));
            if call.ring(&key, &invite).await.is_err() {
                return;
            }
        }
        endpoint.respond(
            key,
            call.dialog.response(&invite, 200, Some(answer.to_string())),
        );
        shared.counters.answered.fetch_add(1, Ordering::Relaxed);
        let activity = shared
            .echo
            .watch(SocketAddr::new(offer.connection, offer.port));
        call.echo(activity, answer_sdp).await;
    }

    /// Waits out the answer delay; `Err` when the caller cancelled or hung up.
    async fn ring(
        &mut self,
        invite_key: &TransactionKey,
        invite: &rsip::Request,
    ) -> Result<(), ()> {
        let endpoint = &self.shared.endpoint;
        let answer_at = Instant::now() + self.shared.plan.answer_delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(answer_at) => return Ok(()),
                event = self.events.recv() => match event {
                    Some(Event::Request { key, request, .. }) if request.method == rsip::Method::Cancel => {
                        endpoint.respond(key, response_for(&request, 200, None));
                        let terminated = self.dialog.response(invite, 487, None);
                        endpoint.respond(invite_key.clone(), terminated);
                        self.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                        return Err(());
                    }
                    Some(Event::Request { key, request, .. }) => {
                        endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(_) => {}
                    None => return Err(()),
                },
            }
        }
    }

    /// Echoes RTP until the call ends.
    async fn echo<F, E>(&mut self, mut activity: PeerActivity, answer_sdp: F)
    where
        F: Fn(&AudioSdp, u64) -> Result<AudioSdp, E>,
    {
        let shared = self.shared;
        let endpoint = &shared.endpoint;
        let mut shutdown = shared.shutdown.clone();
        let mut sdp_version = 1;
        let mut media_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Request { key, request, .. }) => match request.method {
                        rsip::Method::Bye => {
                            endpoint.respond(key, response_for(&request, 200, None));
                            return;
                        }
                        rsip::Method::Invite => {
                            // A re-INVITE (hold, resume, codec change): answer on the same port.
                            sdp_version += 1;
                            let offer = std::str::from_utf8(&request.body)
                                .ok()
                                .and_then(|text| AudioSdp::parse(text).ok());
                            if let Some(offer) = &offer {
                                activity = shared.echo.watch(SocketAddr::new(offer.connection, offer.port));
                            }
                            let answer = offer.and_then(|offer| answer_sdp(&offer, sdp_version).ok());
                            let response = match answer {
                                Some(answer) => self.dialog.response(&request, 200, Some(answer.to_string())),
                                None => response_for(&request, 488, None),
                            };
                            endpoint.respond(key, response);
                        }
                        rsip::Method::Cancel => {
                            endpoint.respond(key, response_for(&request, 200, None));
                        }
                        _ => endpoint.respond(key, response_for(&request, 200, None)),
                    },
                    Some(Event::AckTimeout { .. }) => {
                        tracing::debug!(call_id = %self.dialog.call_id, "no ACK for 200 OK: hanging up");
                        self.hang_up();
                        return;
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = media_check.tick() => {
                    if activity.silence() >= shared.plan.media_timeout {
                        tracing::debug!(call_id = %self.dialog.call_id, "media timeout: hanging up");
                        self.hang_up();
                        return;
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.hang_up();
                        return;
                    }
                }
            }
        }
    }

    /// Sends BYE. Its answer is not awaited: the Backend has nothing left to do with the call,
    /// and the transaction layer retransmits it.
    fn hang_up(&mut self) {
        let Some(next_hop) = self.dialog.next_hop() else {
            return;
        };
        let bye = self.dialog.bye(&mut self.rng);
        self.shared.endpoint.request(next_hop, bye);
    }
}

fn contact_addr(shared: &Shared) -> SocketAddr {
    SocketAddr::new(shared.media_ip, shared.endpoint.local_addr().port())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn terminate_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
