//! One WebRTC session: a WHIP client's peer bridged to a Backend, driven by the session engine.
//!
//! The engine ([`Session`] with a WebRTC caller) calls the Backend only once the client has
//! connected (ICE and DTLS done), so a client that never gets that far costs a slot for
//! `webrtc.setup_timeout` but no Backend lease. The Backend is offered Opus and G.711 (and
//! telephone-event when the client offered it); its answer decides the [`MediaBridge`]: Opus
//! passes through, G.711 is transcoded. This task carries the engine's SIP through the
//! [`SessionDriver`], and the media between the hub (the client) and the Backend's RTP socket.
//!
//! The session ends on the first of: WHIP DELETE, the peer closing (DTLS close, consent expired,
//! setup timeout), a BYE from the Backend, no RTP from the Backend for `media.timeout`, or the
//! node hanging up every call; its slot, ports and lease go the moment the engine reports it.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use rand::rngs::SmallRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_cluster::SessionSlot;
use voxgate_core::{RegionId, SessionId};
use voxgate_media::stats::StreamStats;
use voxgate_session::{
    CallerSpec, EndCause, Input, MediaCommand, Output, Progress, Session, WebRtcCaller,
};
use voxgate_sip::sdp::{AudioSdp, Codec};
use voxgate_webrtc::PeerEvent;

use super::bridge::MediaBridge;
use super::hub::PeerHub;
use crate::control::{self, DtmfRefusal, LegView, MediaView, SessionCommand, SessionView};
use crate::driver::{Destination, SessionDriver};
use crate::gateway::{Gateway, SessionInfo};
use crate::metrics;
use crate::records::{self, Draft, SessionKind};
use crate::relay::Side;

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
    /// This session's share of the node cap.
    pub slot: SessionSlot,
    /// The peer's events, from the hub.
    pub events: mpsc::Receiver<PeerEvent>,
    /// Fires on WHIP DELETE.
    pub delete: oneshot::Receiver<()>,
    /// When the POST arrived.
    pub started: Instant,
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
        slot,
        events,
        delete,
        started,
    } = setup;
    let key = id.0;
    let _webrtc = gateway.webrtc_session();
    let mut draft = Draft::new(
        &gateway.records,
        SessionKind::Webrtc,
        Some(id),
        &region,
        started,
    );
    draft.caller(
        Some(format!("whip:{resource}")),
        Some("webrtc".to_owned()),
        Some(to_user.clone()),
    );
    draft.codec(Side::Caller, Some(&Codec::opus(opus_pt)));
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
            let ending = records::Ending {
                cause: "media_ports",
                by: records::EndedBy::Node,
                code: None,
                caller_code: None,
            };
            gateway
                .records
                .submit(draft.finish(ending, Instant::now(), None));
            hub.close(key);
            return;
        }
    };
    let port = port_lease.rtp();
    let (commands, command_rx) = control::channel();
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id: format!("whip:{resource}"),
            backend_call_id: None,
            peer: None,
            region: region.clone(),
            ports: (port, port),
            kind: SessionKind::Webrtc,
            trunk: None,
            commands,
        },
    );
    let mut config = SessionDriver::config(&gateway, id, [port, port]);
    // Lets the Backend tell a WebRTC session from a phone call, and find it in our logs.
    config
        .far_headers
        .push(("X-Voxgate-Whip".into(), resource.clone()));
    let offer = offer(gateway.config.media.public_ip, port, id, event_pt.is_some());
    let spec = CallerSpec::WebRtc(WebRtcCaller {
        offer,
        from_user: "webrtc".into(),
        to_user,
    });
    let session = Session::new(config, spec, started.into_std());
    let driver = SessionDriver::new(
        gateway.endpoint.clone(),
        gateway.picker.clone(),
        id,
        session,
        Destination::Backend {
            region,
            first: None,
        },
        mpsc::channel(voxgate_endpoint::DIALOG_QUEUE),
        Vec::new(),
    );
    let rng = gateway.call_rng();
    let mut session = WebRtcSession {
        gateway: gateway.clone(),
        driver,
        hub,
        key,
        rng,
        opus_pt,
        event_pt,
        rtp,
        rtcp,
        backend_sip: None,
        backend_media: None,
        bridge: None,
        events,
        delete: Some(delete),
        connected: false,
        started,
        last_backend_rtp: None,
        slot: Some(slot),
        port_lease: Some(port_lease),
        draft: Some(draft),
        received: [StreamStats::new(48_000), StreamStats::new(8000)],
        commands: command_rx,
        state: "calling",
        caller_id: format!("whip:{resource}"),
        backend_codec: None,
    };
    session.run().await;
}

/// The SDP offer to the Backend: Opus first, then G.711, events when the client has them.
fn offer(public_ip: std::net::IpAddr, port: u16, id: SessionId, events: bool) -> AudioSdp {
    let mut codecs = vec![Codec::opus(OPUS_PT), Codec::pcmu(), Codec::pcma()];
    if events {
        codecs.push(Codec {
            clock_rate: 48_000,
            ..Codec::telephone_event(EVENT_48K_PT)
        });
        codecs.push(Codec::telephone_event(EVENT_8K_PT));
    }
    AudioSdp::offer(public_ip, port, codecs, id.0)
}

/// A WebRTC session's task: the engine's driver and the media between the client and Backend.
struct WebRtcSession {
    gateway: Arc<Gateway>,
    driver: SessionDriver,
    hub: PeerHub,
    key: u64,
    rng: SmallRng,
    opus_pt: u8,
    event_pt: Option<u8>,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The Backend's SIP address, once called.
    backend_sip: Option<SocketAddr>,
    /// Where the Backend's RTP goes (latched to the source of what it sends).
    backend_media: Option<SocketAddr>,
    bridge: Option<MediaBridge>,
    events: mpsc::Receiver<PeerEvent>,
    delete: Option<oneshot::Receiver<()>>,
    connected: bool,
    started: Instant,
    /// Armed once the Backend answered: the media timeout runs from its last packet.
    last_backend_rtp: Option<Instant>,
    slot: Option<SessionSlot>,
    port_lease: Option<voxgate_media::pool::PortLease>,
    /// The call record, until the end.
    draft: Option<Draft>,
    /// RTP received from the client (Opus, 48 kHz) and from the Backend (its codec's clock).
    received: [StreamStats; 2],
    /// Operator commands (`/v1/sessions/{id}`).
    commands: mpsc::Receiver<SessionCommand>,
    /// What an operator sees: `calling`, `connected`, ...
    state: &'static str,
    /// The caller leg's id, `whip:<resource>`.
    caller_id: String,
    /// The Backend's codec, once answered.
    backend_codec: Option<String>,
}

impl WebRtcSession {
    async fn run(&mut self) {
        let gateway = self.gateway.clone();
        let timeout = gateway.config.media.timeout;
        let mut buf = vec![0u8; MAX_RTP];
        let mut rtcp_buf = vec![0u8; MAX_RTP];
        loop {
            while let Some(output) = self.driver.poll() {
                self.on_output(output);
            }
            if self.driver.session.is_finished() {
                self.driver.close();
                while let Some(output) = self.driver.poll() {
                    self.on_output(output);
                }
                break;
            }
            let live = self.driver.session.ended().is_none();
            let deadline = self.driver.deadline();
            let silence = self.last_backend_rtp.filter(|_| live).map(|t| t + timeout);
            tokio::select! {
                // Never `None`: the driver holds a sender of its own queue.
                Some(event) = self.driver.next_event() => self.driver.handle(Input::Sip(event)),
                deleted = deleted(&mut self.delete), if live => {
                    if deleted {
                        self.driver.handle(Input::ClientGone(EndCause::WhipDelete));
                    }
                }
                event = self.events.recv(), if live => self.on_peer_event(event),
                received = self.rtp.recv_from(&mut buf), if live => {
                    if let Ok((len, from)) = received {
                        self.on_backend_rtp(&buf[..len], from);
                    }
                }
                // The Backend's RTCP is read and dropped: the client's own RTCP is end to end
                // within the WebRTC leg.
                _ = self.rtcp.recv_from(&mut rtcp_buf), if live => {}
                () = sleep_until(silence) => {
                    tracing::debug!(session = %self.driver.id, "no media from the backend: ending the WebRTC session");
                    self.driver.handle(Input::MediaTimeout(Side::Backend));
                }
                () = gateway.hang_up_requested(), if live => self.driver.handle(Input::Shutdown),
                Some(command) = self.commands.recv() => self.on_command(command, live),
                () = sleep_until(deadline) => self.driver.handle_timeout(),
            }
        }
    }

    /// Carries out an operator's command. DTMF toward a WebRTC client is not sent by this node
    /// (the client's events reach the Backend; the other way is refused as unavailable).
    fn on_command(&mut self, command: SessionCommand, live: bool) {
        match command {
            SessionCommand::View { reply } => {
                let media = |side: Side| {
                    let stats = &self.received[side.index()];
                    (stats.packets() > 0).then(|| MediaView::from(stats))
                };
                let view = SessionView {
                    state: self.state,
                    age_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    caller: LegView {
                        call_id: Some(self.caller_id.clone()),
                        codec: Some(control::codec_name(&Codec::opus(self.opus_pt))),
                        media: media(Side::Caller),
                    },
                    backend: LegView {
                        call_id: self
                            .gateway
                            .session(self.driver.id)
                            .and_then(|info| info.backend_call_id),
                        codec: self.backend_codec.clone(),
                        media: media(Side::Backend),
                    },
                };
                let _ = reply.send(view);
            }
            command if !live => control::refuse(command),
            SessionCommand::HangUp => self.driver.handle(Input::HangUp),
            SessionCommand::Transfer { to, reply } => {
                let _ = reply.send(self.driver.session.transfer(to));
            }
            SessionCommand::Dtmf { reply, .. } => {
                let refusal = if self.state == "connected" {
                    DtmfRefusal::Unavailable
                } else {
                    DtmfRefusal::NotConnected
                };
                let _ = reply.send(Err(refusal));
            }
        }
    }

    fn on_output(&mut self, output: Output) {
        if let Output::Progress(progress) = &output {
            self.state = control::state_after(progress, self.state);
        }
        if let (Output::Progress(progress), Some(draft)) = (&output, self.draft.as_mut()) {
            draft.progress(progress, Instant::now());
        }
        match output {
            Output::Media(MediaCommand::Peer(Side::Backend, media)) => {
                self.backend_media = Some(media.rtp);
            }
            Output::Media(MediaCommand::Arm) => self.last_backend_rtp = Some(Instant::now()),
            Output::Answered(answer) => {
                let bridge = MediaBridge::new(
                    &answer,
                    self.opus_pt,
                    self.event_pt,
                    self.rng.random(),
                    self.rng.random(),
                    self.rng.random(),
                );
                let codec = records::first_audio(&answer.codecs);
                self.backend_codec = codec.map(control::codec_name);
                if let Some(draft) = self.draft.as_mut() {
                    draft.codec(Side::Backend, codec);
                }
                if let Some(codec) = codec {
                    self.received[Side::Backend.index()] = StreamStats::new(codec.clock_rate);
                }
                match bridge {
                    Some(bridge) => self.bridge = Some(bridge),
                    // Nothing this node can carry: hung up like a refusal.
                    None => self.driver.handle(Input::HangUp),
                }
            }
            Output::Reoffer(offer) => {
                let codecs = self
                    .bridge
                    .as_mut()
                    .and_then(|bridge| bridge.accept_reoffer(&offer).then(|| bridge.codecs()));
                self.driver.handle(Input::ReofferAnswer(codecs));
            }
            Output::Progress(Progress::Calling {
                backend,
                address,
                call_id,
            }) => {
                self.backend_sip = Some(address);
                let peer = backend.map_or_else(|| address.to_string(), |b| b.to_string());
                self.gateway
                    .set_session_peer(self.driver.id, &call_id, peer);
            }
            Output::Transfer { to } => {
                // A WebRTC client came through no trunk: Backends and trunks by host only.
                let target = crate::transfer::target(&self.gateway, &to, None);
                self.driver.handle(Input::TransferTarget(target));
            }
            Output::Progress(Progress::Transferred { to, code }) => {
                let outcome = crate::transfer::outcome(code);
                metrics::transfer_ended(outcome);
                tracing::info!(session = %self.driver.id, %to, code, "transfer ended");
                if let Some(draft) = self.draft.as_mut() {
                    draft.transfer(to, outcome.to_owned());
                }
            }
            Output::Progress(Progress::Connected) if self.bridge.is_some() => {
                metrics::session_started();
                metrics::setup_time(self.started.elapsed());
            }
            Output::Ended(end) => {
                self.state = "ending";
                let cause = match end.cause {
                    // An answer without a codec the bridge carries.
                    EndCause::HungUp if !end.connected || self.bridge.is_none() => {
                        EndCause::Rejected
                    }
                    cause => cause,
                };
                if cause == EndCause::NoBackend {
                    metrics::session_rejected("no_backend");
                }
                metrics::session_ended(cause.as_str());
                self.hub.close(self.key);
                self.gateway.remove_session(self.driver.id);
                self.port_lease = None;
                self.slot = None;
                if let Some(draft) = self.draft.take() {
                    let ending = records::Ending {
                        cause: cause.as_str(),
                        ..end.into()
                    };
                    let media = self.bridge.is_some().then_some(&self.received);
                    let record = draft.finish(ending, Instant::now(), media);
                    self.gateway.records.submit(record);
                }
            }
            _ => {}
        }
    }

    fn on_peer_event(&mut self, event: Option<PeerEvent>) {
        match event {
            Some(PeerEvent::Connected) => {
                if !self.connected {
                    self.connected = true;
                    metrics::webrtc_connect_time(self.started.elapsed());
                    self.driver.handle(Input::ClientConnected);
                }
            }
            Some(PeerEvent::Audio {
                payload_type,
                seq,
                timestamp,
                marker,
                payload,
                ..
            }) => {
                // Audio before the Backend answered has nowhere to go.
                let (Some(bridge), Some(to)) = (self.bridge.as_mut(), self.backend_media) else {
                    return;
                };
                if Some(payload_type) != self.event_pt {
                    // The SRTP-decrypted packet: a 12-byte header (extensions not counted) and
                    // its payload.
                    let bytes = 12 + payload.len();
                    self.received[Side::Caller.index()].record(now_std(), seq, timestamp, bytes);
                }
                let (before, _) = bridge.transcoded();
                let rtp = &self.rtp;
                bridge.from_client(payload_type, seq, timestamp, marker, &payload, |datagram| {
                    // UDP to a local Backend does not block; a full buffer drops, as a network
                    // would.
                    let _ = rtp.try_send_to(datagram, to);
                });
                metrics::webrtc_transcoded(
                    metrics::TranscodeDirection::ToBackend,
                    bridge.transcoded().0 - before,
                );
            }
            Some(PeerEvent::Closed(reason)) => {
                tracing::debug!(session = %self.driver.id, %reason, "webrtc peer closed");
                let cause = self.closed_cause();
                self.driver.handle(Input::ClientGone(cause));
            }
            None => {
                let cause = self.closed_cause();
                self.driver.handle(Input::ClientGone(cause));
            }
            Some(_) => {}
        }
    }

    /// Why the session ends now that its peer closed: a DELETE that came with the close wins.
    fn closed_cause(&mut self) -> EndCause {
        match self.delete.as_mut().map(oneshot::Receiver::try_recv) {
            Some(Ok(())) => EndCause::WhipDelete,
            _ => EndCause::WebRtcClosed,
        }
    }

    /// RTP from the Backend: from the address its SDP names, or from its SIP address (a Backend
    /// behind NAT or with several interfaces); the first such packet latches.
    fn on_backend_rtp(&mut self, datagram: &[u8], from: SocketAddr) {
        let known = self.backend_media.map(|a| a.ip()) == Some(from.ip())
            || self.backend_sip.map(|a| a.ip()) == Some(from.ip());
        let Some(bridge) = self.bridge.as_mut().filter(|_| known) else {
            return;
        };
        self.backend_media = Some(from);
        self.last_backend_rtp = Some(Instant::now());
        if let Ok(rtp) = voxgate_media::rtp::RtpPacket::parse(datagram) {
            self.received[Side::Backend.index()].record(
                now_std(),
                rtp.sequence(),
                rtp.timestamp(),
                datagram.len(),
            );
        }
        let (_, before) = bridge.transcoded();
        let (hub, key) = (&self.hub, self.key);
        bridge.from_backend(datagram, |packet| {
            hub.send(
                key,
                packet.payload_type,
                packet.timestamp,
                packet.marker,
                packet.payload,
            );
        });
        metrics::webrtc_transcoded(
            metrics::TranscodeDirection::ToClient,
            bridge.transcoded().1 - before,
        );
    }
}

/// Resolves `true` on a WHIP DELETE, `false` (once) if the resource was dropped without one;
/// pending forever after either.
async fn deleted(delete: &mut Option<oneshot::Receiver<()>>) -> bool {
    let Some(rx) = delete.as_mut() else {
        return std::future::pending().await;
    };
    let result = rx.await.is_ok();
    *delete = None;
    result
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// Sleeps until `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
