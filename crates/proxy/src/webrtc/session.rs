//! One WebRTC session: a WHIP client's peer bridged to a Backend as an ordinary SIP call.
//!
//! The Backend is offered Opus and G.711 (and telephone-event when the client offered it). If it
//! answers Opus, media passes through: the client's decrypted Opus RTP goes to the Backend as
//! plain RTP and back, payloads untouched. Otherwise the session transcodes: Opus decoded at
//! 8 kHz to PCMU/PCMA toward the Backend (with loss concealment), G.711 encoded to Opus toward
//! the client. RFC 4733 events pass through in both modes, their timestamps and durations moved
//! between the 48 kHz clock of the client and the Backend's event clock.
//!
//! The session holds its node slot and Backend lease for its whole life and ends on the first of:
//! WHIP DELETE, the peer closing (DTLS close, consent expired, setup timeout), a BYE from the
//! Backend, no RTP from the Backend for `media.timeout`, or the node hanging up every call.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;
use rsip::Header;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_cluster::{BackendLease, SessionSlot};
use voxgate_core::{NodeId, RegionId, SessionId};
use voxgate_endpoint::DialogEvents;
use voxgate_media::{G711Law, G711ToOpus, OpusToG711, RtpHeader, RtpPacket};
use voxgate_sip::Event;
use voxgate_sip::dialog::{self, Dialog};
use voxgate_sip::message::response_for;
use voxgate_sip::sdp::{AudioSdp, Codec, CodecKind};
use voxgate_webrtc::PeerEvent;

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

/// How media crosses between the client and the Backend.
enum Bridge {
    /// The Backend took Opus: payloads pass through.
    Passthrough { backend_pt: u8 },
    /// The Backend took G.711: transcoders are made on the first packet of each direction.
    Transcode {
        law: G711Law,
        to_backend: Option<Box<OpusToG711>>,
        to_client: Option<Box<G711ToOpus>>,
    },
}

/// The Backend's side once it answered.
struct BackendLeg {
    dialog: Dialog,
    events: DialogEvents,
    address: SocketAddr,
    ack: rsip::Request,
    /// Where its RTP goes (latched to the source of what it sends).
    media: SocketAddr,
    event_pt: Option<(u8, u32)>,
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
    /// Our RTP stream toward the Backend.
    ssrc: u32,
    seq: u16,
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
    let mut rng = gateway.call_rng();
    let mut session = Session {
        gateway: gateway.clone(),
        hub,
        id,
        key,
        ssrc: rng.random(),
        seq: rng.random(),
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
    let cause = match session.connect(&region, &to_user, &resource, lease).await {
        Ok((mut backend, bridge)) => session.established(&mut backend, bridge).await,
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
        self.sdp_version += 1;
        let public_ip = self.gateway.config.media.public_ip;
        let mut sdp = AudioSdp::offer(public_ip, self.port, codecs, self.id.0);
        sdp.origin.session_version = self.sdp_version;
        sdp.to_string()
    }

    /// Calls Backends (the leased one, then others of the region) until one answers.
    async fn connect(
        &mut self,
        region: &RegionId,
        to_user: &str,
        resource: &str,
        first: BackendLease,
    ) -> Result<(BackendLeg, Bridge), EndCause> {
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
                Ok(AttemptResult::Cancelled) => unreachable_cancel(),
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
                        return Err(EndCause::PeerClosed);
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
    ) -> Result<(BackendLeg, Bridge), EndCause> {
        attempt.dialog.confirm(&response);
        let invite_cseq = voxgate_sip::message::cseq(&attempt.invite).map_or(1, |(n, _)| n);
        let ack = attempt.dialog.ack(&mut self.rng, invite_cseq);
        let next_hop = attempt.dialog.next_hop().unwrap_or(attempt.address);
        self.gateway.endpoint.stateless(next_hop, ack.clone());
        let answer = parse_sdp(&response.body).filter(|sdp| sdp.port != 0);
        let bridge = answer.as_ref().and_then(bridge_for);
        let mut leg = BackendLeg {
            dialog: attempt.dialog,
            events: attempt.events,
            address: attempt.address,
            ack,
            media: answer.as_ref().map_or(attempt.address, |sdp| {
                SocketAddr::new(sdp.connection, sdp.port)
            }),
            event_pt: answer.as_ref().and_then(|sdp| {
                sdp.codecs
                    .iter()
                    .find(|c| c.kind == CodecKind::TelephoneEvent)
                    .map(|c| (c.payload_type, c.clock_rate))
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

    /// The answered session, until something ends it.
    async fn established(&mut self, backend: &mut BackendLeg, mut bridge: Bridge) -> EndCause {
        let gateway = self.gateway.clone();
        let timeout = gateway.config.media.timeout;
        let mut last_backend_rtp = Instant::now();
        let mut buf = vec![0u8; MAX_RTP];
        let mut rtcp_buf = vec![0u8; MAX_RTP];
        loop {
            tokio::select! {
                // A DELETE wins over the peer's close that usually follows it at once.
                biased;
                _ = &mut self.delete => {
                    self.bye(backend);
                    self.hub.close(self.key);
                    break EndCause::Deleted;
                }
                event = self.events.recv() => match event {
                    Some(PeerEvent::Connected) => self.on_connected(),
                    Some(PeerEvent::Audio { payload_type, seq, timestamp, marker, payload, .. }) => {
                        self.forward_to_backend(backend, &mut bridge, payload_type, seq, timestamp, marker, &payload).await;
                    }
                    Some(PeerEvent::Closed(reason)) => {
                        tracing::debug!(session = %self.id, %reason, "webrtc peer closed");
                        self.bye(backend);
                        break EndCause::PeerClosed;
                    }
                    None => {
                        self.bye(backend);
                        break EndCause::PeerClosed;
                    }
                    Some(_) => {}
                },
                received = self.rtp.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received
                        && from.ip() == backend.media.ip()
                    {
                        backend.media = from;
                        last_backend_rtp = Instant::now();
                        self.forward_to_client(backend, &mut bridge, &buf[..len]);
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
                            // A session refresh or re-offer: answer with what was negotiated.
                            let sdp = self.offer();
                            gateway.endpoint.respond(key, backend.dialog.response(&request, 200, Some(sdp)));
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

    /// One RTP packet from the client, toward the Backend.
    #[allow(clippy::too_many_arguments)]
    async fn forward_to_backend(
        &mut self,
        backend: &BackendLeg,
        bridge: &mut Bridge,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) {
        let mut out = [0u8; MAX_RTP];
        if Some(payload_type) == self.event_pt {
            let Some((pt, rate)) = backend.event_pt else {
                return;
            };
            let Some(event) = rescale_event(payload, 48_000, rate) else {
                return;
            };
            let ts = rescale_timestamp(timestamp, 48_000, rate);
            self.send_backend(backend, pt, ts, marker, &event, &mut out)
                .await;
            return;
        }
        if payload_type != self.opus_pt {
            return;
        }
        match bridge {
            Bridge::Passthrough { backend_pt } => {
                let pt = *backend_pt;
                self.send_backend(backend, pt, timestamp, marker, payload, &mut out)
                    .await;
            }
            Bridge::Transcode {
                law, to_backend, ..
            } => {
                if to_backend.is_none() {
                    let first = rescale_timestamp(timestamp, 48_000, 8_000);
                    match OpusToG711::new(*law, self.seq, first) {
                        Ok(t) => *to_backend = Some(Box::new(t)),
                        Err(err) => {
                            tracing::warn!(%err, "cannot create the Opus decoder");
                            return;
                        }
                    }
                }
                let Some(transcoder) = to_backend.as_mut() else {
                    return;
                };
                if transcoder.handle_packet(seq, timestamp, payload).is_err() {
                    return;
                }
                let pt = law.payload_type();
                while let Some(frame) = transcoder.poll_frame() {
                    if let Ok(len) = frame.write_rtp(self.ssrc, pt, &mut out) {
                        let _ = self.rtp.send_to(&out[..len], backend.media).await;
                        metrics::webrtc_transcoded(metrics::TranscodeDirection::ToBackend);
                    }
                    self.seq = frame.sequence.wrapping_add(1);
                }
            }
        }
    }

    async fn send_backend(
        &mut self,
        backend: &BackendLeg,
        payload_type: u8,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        out: &mut [u8],
    ) {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.seq,
            timestamp,
            ssrc: self.ssrc,
        };
        let Ok(len) = header.write(out) else {
            return;
        };
        let end = len + payload.len();
        if end > out.len() {
            return;
        }
        out[len..end].copy_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        let _ = self.rtp.send_to(&out[..end], backend.media).await;
    }

    /// One RTP packet from the Backend, toward the client.
    fn forward_to_client(&mut self, backend: &BackendLeg, bridge: &mut Bridge, datagram: &[u8]) {
        let Ok(packet) = RtpPacket::parse(datagram) else {
            return;
        };
        let pt = packet.payload_type();
        if let Some((event_pt, rate)) = backend.event_pt
            && pt == event_pt
        {
            let (Some(client_pt), Some(event)) =
                (self.event_pt, rescale_event(packet.payload(), rate, 48_000))
            else {
                return;
            };
            let ts = rescale_timestamp(packet.timestamp(), rate, 48_000);
            self.hub
                .send(self.key, client_pt, ts, packet.marker(), Bytes::from(event));
            return;
        }
        match bridge {
            Bridge::Passthrough { backend_pt } => {
                if pt == *backend_pt {
                    let payload = Bytes::copy_from_slice(packet.payload());
                    self.hub.send(
                        self.key,
                        self.opus_pt,
                        packet.timestamp(),
                        packet.marker(),
                        payload,
                    );
                }
            }
            Bridge::Transcode { law, to_client, .. } => {
                if pt != law.payload_type() {
                    return;
                }
                if to_client.is_none() {
                    let first = rescale_timestamp(packet.timestamp(), 8_000, 48_000);
                    match G711ToOpus::new(*law, 0, first) {
                        Ok(t) => *to_client = Some(Box::new(t)),
                        Err(err) => {
                            tracing::warn!(%err, "cannot create the Opus encoder");
                            return;
                        }
                    }
                }
                let Some(transcoder) = to_client.as_mut() else {
                    return;
                };
                if transcoder
                    .handle_packet(packet.sequence(), packet.timestamp(), packet.payload())
                    .is_err()
                {
                    return;
                }
                while let Some(frame) = transcoder.poll_frame() {
                    let payload = Bytes::copy_from_slice(frame.payload());
                    self.hub.send(
                        self.key,
                        self.opus_pt,
                        frame.timestamp,
                        frame.marker,
                        payload,
                    );
                    metrics::webrtc_transcoded(metrics::TranscodeDirection::ToClient);
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

/// The bridge an answer calls for: Opus passes through, PCMU/PCMA transcode.
fn bridge_for(answer: &AudioSdp) -> Option<Bridge> {
    let codec = answer
        .codecs
        .iter()
        .find(|c| c.kind != CodecKind::TelephoneEvent)?;
    match codec.kind {
        CodecKind::Opus => Some(Bridge::Passthrough {
            backend_pt: codec.payload_type,
        }),
        CodecKind::Pcmu | CodecKind::Pcma => Some(Bridge::Transcode {
            law: G711Law::from_payload_type(match codec.kind {
                CodecKind::Pcmu => 0,
                _ => 8,
            })?,
            to_backend: None,
            to_client: None,
        }),
        _ => None,
    }
}

/// An RTP timestamp moved from a `from` Hz clock to a `to` Hz clock (48 kHz and 8 kHz only).
fn rescale_timestamp(timestamp: u32, from: u32, to: u32) -> u32 {
    match (from, to) {
        (48_000, 8_000) => timestamp / 6,
        (8_000, 48_000) => timestamp.wrapping_mul(6),
        _ => timestamp,
    }
}

/// An RFC 4733 event payload with its duration moved between clocks; `None` if malformed.
fn rescale_event(payload: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    if payload.len() < 4 {
        return None;
    }
    let mut event = payload[..4].to_vec();
    let duration = u32::from(u16::from_be_bytes([event[2], event[3]]));
    let scaled = match (from, to) {
        (48_000, 8_000) => duration / 6,
        (8_000, 48_000) => (duration * 6).min(u32::from(u16::MAX)),
        _ => duration,
    };
    let scaled = u16::try_from(scaled).unwrap_or(u16::MAX).to_be_bytes();
    event[2..4].copy_from_slice(&scaled);
    Some(event)
}

/// The WebRTC path never cancels through a SIP caller; its `Cancelled` cannot occur.
fn unreachable_cancel() -> ! {
    unreachable!("await_attempt of a WebRTC session never returns Cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_between_clocks() {
        // Digit 5, end bit clear, volume 10, duration 960 at 48 kHz = 160 at 8 kHz.
        let at_48k = [5u8, 10, 0x03, 0xC0];
        let at_8k = rescale_event(&at_48k, 48_000, 8_000).expect("event");
        assert_eq!(at_8k, vec![5, 10, 0x00, 0xA0]);
        assert_eq!(rescale_event(&at_8k, 8_000, 48_000).expect("event"), at_48k);
        assert_eq!(rescale_event(&[1, 2], 8_000, 48_000), None);
        assert_eq!(rescale_timestamp(48_000, 48_000, 8_000), 8_000);
        assert_eq!(rescale_timestamp(8_000, 8_000, 48_000), 48_000);
        assert_eq!(rescale_timestamp(7, 48_000, 48_000), 7);
    }

    #[test]
    fn the_backend_answer_picks_the_bridge() {
        let ip = "127.0.0.1".parse().expect("ip");
        let opus = AudioSdp::offer(
            ip,
            4000,
            vec![Codec::opus(96), Codec::telephone_event(101)],
            1,
        );
        assert!(matches!(
            bridge_for(&opus),
            Some(Bridge::Passthrough { backend_pt: 96 })
        ));
        let pcma = AudioSdp::offer(ip, 4000, vec![Codec::pcma()], 1);
        assert!(matches!(
            bridge_for(&pcma),
            Some(Bridge::Transcode {
                law: G711Law::Pcma,
                ..
            })
        ));
        let events_only = AudioSdp::offer(ip, 4000, vec![Codec::telephone_event(101)], 1);
        assert!(bridge_for(&events_only).is_none());
    }
}
