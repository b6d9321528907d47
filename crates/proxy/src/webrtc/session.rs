//! One WebRTC session: a WHIP client's peer bridged to a Backend as an ordinary SIP call.
//!
//! The Backend is called only once the client has connected (ICE and DTLS done), so a client
//! that never gets that far costs a slot for `webrtc.setup_timeout` but no Backend call. It is
//! offered Opus and G.711 (and telephone-event when the client offered it); its answer decides
//! the [`MediaBridge`]: Opus passes through, G.711 is transcoded.
//!
//! The session holds its node slot and Backend lease for its whole life and ends on the first of:
//! WHIP DELETE, the peer closing (DTLS close, consent expired, setup timeout), a BYE from the
//! Backend, no RTP from the Backend for `media.timeout`, or the node hanging up every call.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use rand::rngs::SmallRng;
use rsip::Header;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_cluster::{BackendLease, SessionSlot};
use voxgate_core::{NodeId, RegionId, SessionId};
use voxgate_endpoint::DialogEvents;
use voxgate_sip::Event;
use voxgate_sip::dialog::{self, Dialog};
use voxgate_sip::message::response_for;
use voxgate_sip::sdp::{AudioSdp, Codec};
use voxgate_webrtc::PeerEvent;

use super::bridge::MediaBridge;
use super::hub::PeerHub;
use crate::call::{
    Attempt, AttemptResult, answer_other, attempt_result, give_up_silent, in_dialog, parse_sdp,
    wind_down,
};
use crate::gateway::{Gateway, SessionInfo, USER_AGENT};
use crate::metrics;

/// Payload types this node offers the Backend.
const OPUS_PT: u8 = 111;
const EVENT_48K_PT: u8 = 110;
const EVENT_8K_PT: u8 = 101;

/// Largest RTP packet read from the Backend.
const MAX_RTP: usize = 1500;

/// What the WHIP handler hands a new session.
#[derive(Debug)]
pub struct Setup {
    /// The session (also the peer's key in the hub).
    pub id: SessionId,
    /// The WHIP resource id, for logs.
    pub resource: String,
    /// Where the session is routed.
    pub region: RegionId,
    /// The Request-URI user the Backend sees.
    pub to_user: String,
    /// The client's Opus payload type.
    pub opus_pt: u8,
    /// The client's telephone-event/48000 payload type, if offered.
    pub event_pt: Option<u8>,
    /// The first Backend to call.
    pub lease: BackendLease,
    /// This session's share of the node cap.
    pub slot: SessionSlot,
    /// The peer's events, from the hub.
    pub events: mpsc::UnboundedReceiver<PeerEvent>,
    /// Fires on WHIP DELETE.
    pub delete: oneshot::Receiver<()>,
    /// When the POST arrived.
    pub started: Instant,
}

/// Why a WebRTC session ended: the `cause` label of `voxgate_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndCause {
    Deleted,
    PeerClosed,
    BackendBye,
    MediaTimeout,
    NoBackend,
    Rejected,
    Shutdown,
}

impl EndCause {
    fn as_str(self) -> &'static str {
        match self {
            EndCause::Deleted => "whip_delete",
            EndCause::PeerClosed => "webrtc_closed",
            EndCause::BackendBye => "backend_bye",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::NoBackend => "no_backend",
            EndCause::Rejected => "rejected",
            EndCause::Shutdown => "shutdown",
        }
    }
}

/// The Backend's side once it answered.
struct BackendLeg {
    dialog: Dialog,
    events: DialogEvents,
    address: SocketAddr,
    ack: rsip::Request,
    /// Where its RTP goes (latched to the source of what it sends).
    media: SocketAddr,
    _lease: Option<BackendLease>,
}

struct Session {
    gateway: Arc<Gateway>,
    hub: PeerHub,
    id: SessionId,
    key: u64,
    rng: SmallRng,
    opus_pt: u8,
    event_pt: Option<u8>,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    port: u16,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    delete: oneshot::Receiver<()>,
    connected: bool,
    started: Instant,
    sdp_version: u64,
}

/// Runs one WebRTC session until it ends; the peer is already in the hub under `setup.id`.
pub async fn run(gateway: Arc<Gateway>, hub: PeerHub, setup: Setup) {
    let Setup {
        id,
        resource,
        region,
        to_user,
        opus_pt,
        event_pt,
        lease,
        slot,
        events,
        delete,
        started,
    } = setup;
    let key = id.0;
    let _webrtc = gateway.webrtc_session();
    let sockets = crate::relay::bind_pair(&gateway.ports, gateway.config.media.bind_ip)
        .map_err(|err| err.to_string())
        .and_then(|(rtp, rtcp, lease)| {
            let rtp = UdpSocket::from_std(rtp).map_err(|err| err.to_string())?;
            let rtcp = UdpSocket::from_std(rtcp).map_err(|err| err.to_string())?;
            Ok((rtp, rtcp, lease))
        });
    let (rtp, rtcp, port_lease) = match sockets {
        Ok(sockets) => sockets,
        Err(err) => {
            tracing::warn!(%err, "no media ports for a WebRTC session");
            metrics::session_rejected("media_ports");
            hub.close(key);
            return;
        }
    };
    let port = port_lease.rtp();
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id: format!("whip:{resource}"),
            backend_call_id: None,
            peer: None,
            region: region.clone(),
            ports: (port, port),
        },
    );
    let rng = gateway.call_rng();
    let mut session = Session {
        gateway: gateway.clone(),
        hub,
        id,
        key,
        rng,
        opus_pt,
        event_pt,
        rtp,
        rtcp,
        port,
        events,
        delete,
        connected: false,
        started,
        sdp_version: 1,
    };
    let connected = match session.wait_connected().await {
        Ok(()) => session.connect(&region, &to_user, &resource, lease).await,
        Err(cause) => Err(cause),
    };
    let cause = match connected {
        Ok((mut backend, mut bridge)) => session.established(&mut backend, &mut bridge).await,
        Err(cause) => {
            session.hub.close(key);
            cause
        }
    };
    metrics::session_ended(cause.as_str());
    gateway.remove_session(id);
    tracing::debug!(session = %id, cause = cause.as_str(), "webrtc session ended");
    drop(port_lease);
    drop(slot);
}

impl Session {
    /// Waits for the client to connect; `Err` when the session ended first.
    async fn wait_connected(&mut self) -> Result<(), EndCause> {
        let gateway = self.gateway.clone();
        while !self.connected {
            tokio::select! {
                event = self.events.recv() => {
                    if self.on_setup_event(event) {
                        return Err(self.closed_cause());
                    }
                }
                _ = &mut self.delete => return Err(EndCause::Deleted),
                () = gateway.hang_up_requested() => return Err(EndCause::Shutdown),
            }
        }
        Ok(())
    }

    /// Why the session ends now that its peer closed: a DELETE that came with the close wins.
    fn closed_cause(&mut self) -> EndCause {
        if self.delete.try_recv().is_ok() {
            EndCause::Deleted
        } else {
            EndCause::PeerClosed
        }
    }

    /// Our SDP toward the Backend with `codecs`, its version raised.
    fn sdp(&mut self, codecs: Vec<Codec>) -> AudioSdp {
        self.sdp_version += 1;
        let public_ip = self.gateway.config.media.public_ip;
        let mut sdp = AudioSdp::offer(public_ip, self.port, codecs, self.id.0);
        sdp.origin.session_version = self.sdp_version;
        sdp
    }

    /// The SDP offer to the Backend: Opus first, then G.711, events when the client has them.
    fn offer(&mut self) -> String {
        let mut codecs = vec![Codec::opus(OPUS_PT), Codec::pcmu(), Codec::pcma()];
        if self.event_pt.is_some() {
            codecs.push(Codec {
                clock_rate: 48_000,
                ..Codec::telephone_event(EVENT_48K_PT)
            });
            codecs.push(Codec::telephone_event(EVENT_8K_PT));
        }
        self.sdp(codecs).to_string()
    }

    /// Calls Backends (the leased one, then others of the region) until one answers.
    async fn connect(
        &mut self,
        region: &RegionId,
        to_user: &str,
        resource: &str,
        first: BackendLease,
    ) -> Result<(BackendLeg, MediaBridge), EndCause> {
        let gateway = self.gateway.clone();
        let mut first = Some(first);
        let mut tried: Vec<NodeId> = Vec::new();
        for _ in 0..gateway.config.routing.max_attempts.max(1) {
            let now = Instant::now().into_std();
            let lease = match first.take() {
                Some(lease) => lease,
                None => match gateway.picker.pick(now, region, &tried) {
                    Ok(lease) => lease,
                    Err(_) => break,
                },
            };
            tried.push(lease.id().clone());
            let mut attempt = self.start_attempt(lease, to_user, resource);
            match self.await_attempt(&mut attempt).await {
                Ok(AttemptResult::Answered(response)) => return self.confirm(attempt, response),
                Ok(AttemptResult::Next) => {}
                Ok(AttemptResult::Silent) => {
                    let rng = self.call_rng();
                    give_up_silent(&gateway, attempt, rng);
                }
                Ok(AttemptResult::Reject(code)) => {
                    tracing::info!(session = %self.id, code, "backend refused the WebRTC session");
                    return Err(EndCause::Rejected);
                }
                // Only a SIP caller's CANCEL or the API's hang-up give these (`Call`), never
                // `attempt_result`; were one to come, the attempt is over like a refusal.
                Ok(AttemptResult::Cancelled | AttemptResult::HungUp) => {
                    let rng = self.call_rng();
                    tokio::spawn(wind_down(gateway.clone(), attempt, rng));
                    return Err(EndCause::Rejected);
                }
                Err(cause) => {
                    if attempt.provisional {
                        gateway
                            .endpoint
                            .request(attempt.address, dialog::cancel(&attempt.invite));
                    }
                    let rng = self.call_rng();
                    tokio::spawn(wind_down(gateway.clone(), attempt, rng));
                    return Err(cause);
                }
            }
        }
        metrics::session_rejected("no_backend");
        Err(EndCause::NoBackend)
    }

    fn start_attempt(&mut self, lease: BackendLease, to_user: &str, resource: &str) -> Attempt {
        let gateway = self.gateway.clone();
        let address = lease.address();
        let public_ip = gateway.config.media.public_ip;
        let mut leg = Dialog::outgoing(
            &mut self.rng,
            gateway.sip_addr,
            format!("sip:webrtc@{public_ip}"),
            format!("sip:{to_user}@{address}"),
            USER_AGENT,
        );
        leg.local_contact = format!("sip:voxgate@{}", gateway.sip_addr);
        let sdp = self.offer();
        let mut invite = leg.invite(&mut self.rng, sdp);
        // Lets the Backend tell a WebRTC session from a phone call, and find it in our logs.
        invite
            .headers
            .push(Header::Other("X-Voxgate-Whip".into(), resource.into()));
        let events = gateway.endpoint.register(&leg.call_id);
        gateway.set_session_peer(self.id, &leg.call_id, lease.id().to_string());
        gateway.endpoint.request(address, invite.clone());
        Attempt {
            dialog: leg,
            events,
            invite,
            address,
            backend: Some(lease.id().clone()),
            lease: Some(lease),
            provisional: false,
        }
    }

    /// Waits for the Backend's final answer; `Err` when the session ended meanwhile.
    async fn await_attempt(&mut self, attempt: &mut Attempt) -> Result<AttemptResult, EndCause> {
        let gateway = self.gateway.clone();
        let deadline = Instant::now() + gateway.config.routing.invite_timeout;
        loop {
            tokio::select! {
                event = attempt.events.recv() => match event {
                    Some(Event::Response { response, .. }) if dialog::is_invite_response(&response) => {
                        if let Some(result) = attempt_result(&gateway, attempt, response) {
                            return Ok(result);
                        }
                    }
                    Some(Event::Timeout { .. }) | None => return Ok(AttemptResult::Next),
                    Some(Event::Request { key, request, .. }) => {
                        gateway.endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(_) => {}
                },
                event = self.events.recv() => {
                    // Audio before the Backend answered has nowhere to go.
                    if self.on_setup_event(event) {
                        return Err(self.closed_cause());
                    }
                }
                _ = &mut self.delete => return Err(EndCause::Deleted),
                () = tokio::time::sleep_until(deadline), if !attempt.provisional => {
                    return Ok(AttemptResult::Silent);
                }
                () = gateway.hang_up_requested() => return Err(EndCause::Shutdown),
            }
        }
    }

    /// Notes a peer event that arrived while no Backend is connected; true if the peer closed.
    fn on_setup_event(&mut self, event: Option<PeerEvent>) -> bool {
        match event {
            Some(PeerEvent::Connected) => {
                self.on_connected();
                false
            }
            Some(PeerEvent::Closed(_)) | None => true,
            Some(_) => false,
        }
    }

    fn on_connected(&mut self) {
        if !self.connected {
            self.connected = true;
            metrics::webrtc_connect_time(self.started.elapsed());
        }
    }

    /// ACKs the Backend's 2xx and picks the bridge from its answer.
    fn confirm(
        &mut self,
        mut attempt: Attempt,
        response: rsip::Response,
    ) -> Result<(BackendLeg, MediaBridge), EndCause> {
        let ack = attempt.acknowledge(&self.gateway, &response, &mut self.rng);
        let answer = parse_sdp(&response.body).filter(|sdp| sdp.port != 0);
        let bridge = answer.as_ref().and_then(|answer| {
            MediaBridge::new(
                answer,
                self.opus_pt,
                self.event_pt,
                self.rng.random(),
                self.rng.random(),
                self.rng.random(),
            )
        });
        let mut leg = BackendLeg {
            dialog: attempt.dialog,
            events: attempt.events,
            address: attempt.address,
            ack,
            media: answer.as_ref().map_or(attempt.address, |sdp| {
                SocketAddr::new(sdp.connection, sdp.port)
            }),
            _lease: attempt.lease,
        };
        match bridge {
            Some(bridge) => {
                metrics::session_started();
                metrics::setup_time(self.started.elapsed());
                Ok((leg, bridge))
            }
            None => {
                self.bye(&mut leg);
                Err(EndCause::Rejected)
            }
        }
    }

    /// Answers a Backend re-INVITE: its offer must keep the codec (payload types and the media
    /// address may move); an offerless one gets what is negotiated.
    fn reinvite(
        &mut self,
        request: &rsip::Request,
        backend: &mut BackendLeg,
        bridge: &mut MediaBridge,
    ) -> rsip::Response {
        if request.body.is_empty() {
            let sdp = self.sdp(bridge.codecs()).to_string();
            return backend.dialog.response(request, 200, Some(sdp));
        }
        let Some(offer) = parse_sdp(&request.body) else {
            return backend.dialog.response(request, 488, None);
        };
        if !bridge.accept_reoffer(&offer) {
            return backend.dialog.response(request, 488, None);
        }
        if offer.port != 0 {
            backend.media = SocketAddr::new(offer.connection, offer.port);
        }
        let mut sdp = self.sdp(bridge.codecs());
        sdp.direction = offer.direction.mirrored();
        backend.dialog.response(request, 200, Some(sdp.to_string()))
    }

    /// The answered session, until something ends it.
    async fn established(
        &mut self,
        backend: &mut BackendLeg,
        bridge: &mut MediaBridge,
    ) -> EndCause {
        let gateway = self.gateway.clone();
        let timeout = gateway.config.media.timeout;
        let mut last_backend_rtp = Instant::now();
        let mut buf = vec![0u8; MAX_RTP];
        let mut rtcp_buf = vec![0u8; MAX_RTP];
        loop {
            tokio::select! {
                _ = &mut self.delete => {
                    self.bye(backend);
                    self.hub.close(self.key);
                    break EndCause::Deleted;
                }
                event = self.events.recv() => match event {
                    Some(PeerEvent::Connected) => self.on_connected(),
                    Some(PeerEvent::Audio { payload_type, seq, timestamp, marker, payload, .. }) => {
                        let (before, _) = bridge.transcoded();
                        let (rtp, to) = (&self.rtp, backend.media);
                        bridge.from_client(payload_type, seq, timestamp, marker, &payload, |datagram| {
                            // UDP to a local Backend does not block; a full buffer drops, as a
                            // network would.
                            let _ = rtp.try_send_to(datagram, to);
                        });
                        metrics::webrtc_transcoded(metrics::TranscodeDirection::ToBackend, bridge.transcoded().0 - before);
                    }
                    Some(PeerEvent::Closed(reason)) => {
                        tracing::debug!(session = %self.id, %reason, "webrtc peer closed");
                        self.bye(backend);
                        break self.closed_cause();
                    }
                    None => {
                        self.bye(backend);
                        break self.closed_cause();
                    }
                    Some(_) => {}
                },
                received = self.rtp.recv_from(&mut buf) => {
                    // From the address the Backend's SDP names, or from its SIP address (a Backend
                    // behind NAT or with several interfaces); the first such packet latches.
                    if let Ok((len, from)) = received
                        && (from.ip() == backend.media.ip() || from.ip() == backend.address.ip())
                    {
                        backend.media = from;
                        last_backend_rtp = Instant::now();
                        let (_, before) = bridge.transcoded();
                        let (hub, key) = (&self.hub, self.key);
                        bridge.from_backend(&buf[..len], |packet| {
                            hub.send(key, packet.payload_type, packet.timestamp, packet.marker, packet.payload);
                        });
                        metrics::webrtc_transcoded(metrics::TranscodeDirection::ToClient, bridge.transcoded().1 - before);
                    }
                }
                // The Backend's RTCP is read and dropped: the client's own RTCP is end to end
                // within the WebRTC leg.
                _ = self.rtcp.recv_from(&mut rtcp_buf) => {}
                event = backend.events.recv() => match event {
                    Some(Event::Request { key, request, .. }) if !in_dialog(&request, &backend.dialog) => {
                        gateway.endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(Event::Request { key, request, .. }) => match request.method {
                        rsip::Method::Bye => {
                            gateway.endpoint.respond(key, backend.dialog.response(&request, 200, None));
                            self.hub.close(self.key);
                            break EndCause::BackendBye;
                        }
                        rsip::Method::Invite => {
                            let reply = self.reinvite(&request, backend, bridge);
                            gateway.endpoint.respond(key, reply);
                        }
                        rsip::Method::Info => {
                            gateway.endpoint.respond(key, backend.dialog.response(&request, 200, None));
                        }
                        _ => gateway.endpoint.respond(key, answer_other(&backend.dialog, &request)),
                    },
                    Some(Event::Response { response, .. })
                        if dialog::is_invite_response(&response) && response.status_code.code() / 100 == 2 =>
                    {
                        let next_hop = backend.dialog.next_hop().unwrap_or(backend.address);
                        gateway.endpoint.stateless(next_hop, backend.ack.clone());
                    }
                    Some(_) => {}
                    None => {
                        self.hub.close(self.key);
                        break EndCause::BackendBye;
                    }
                },
                () = tokio::time::sleep_until(last_backend_rtp + timeout) => {
                    tracing::info!(session = %self.id, "no media from the backend: ending the WebRTC session");
                    self.bye(backend);
                    self.hub.close(self.key);
                    break EndCause::MediaTimeout;
                }
                () = gateway.hang_up_requested() => {
                    self.bye(backend);
                    self.hub.close(self.key);
                    break EndCause::Shutdown;
                }
            }
        }
    }

    fn bye(&mut self, backend: &mut BackendLeg) {
        let bye = backend.dialog.bye(&mut self.rng);
        let hop = backend.dialog.next_hop().unwrap_or(backend.address);
        self.gateway.endpoint.request(hop, bye);
    }

    fn call_rng(&mut self) -> SmallRng {
        use rand::SeedableRng;
        SmallRng::from_rng(&mut self.rng)
    }
}
