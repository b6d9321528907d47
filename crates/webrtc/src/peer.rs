//! One WebRTC media session with a browser: ICE-lite, DTLS-SRTP, one sendrecv Opus stream.
//!
//! [`WebRtcPeer::new`] answers the client's offer the way a media server does: `a=ice-lite`,
//! one host candidate (the shared socket), `a=setup:passive` (the client starts DTLS), Opus with
//! the offer's payload type, `telephone-event/48000` when offered, `a=sendrecv`, `a=rtcp-mux`.
//! Any other `m=` section is rejected with port 0 (`rtc` rejects video by itself, having no
//! video codec; it would accept a data channel, so [`inspect_offer`] sets `m=application` to
//! port 0 in the parsed offer it is handed). Then the proxy drives it like every voxgate
//! core: [`handle_receive`](WebRtcPeer::handle_receive) and
//! [`handle_timeout`](WebRtcPeer::handle_timeout) take `now`; after each call drain
//! [`poll_transmit`](WebRtcPeer::poll_transmit) and [`poll_event`](WebRtcPeer::poll_event),
//! then sleep until [`poll_timeout`](WebRtcPeer::poll_timeout).
//!
//! ICE, DTLS and SRTP are webrtc-rs's `rtc` crate, run as an ICE-lite controlled agent and a
//! DTLS server. On top of it this type keeps two timers of its own:
//!
//! - setup: a peer that is not connected (ICE and DTLS done, SRTP keys in place) within
//!   [`PeerConfig::setup_timeout`] closes with [`ClosedReason::SetupTimeout`];
//! - consent (RFC 7675): an ICE-lite agent sends no checks, the client does (every ~5 s). A
//!   binding request counts only once `rtc` answered it with a success response, i.e. its
//!   USERNAME and MESSAGE-INTEGRITY checked out. Without one for
//!   [`PeerConfig::consent_timeout`] the peer closes with [`ClosedReason::ConsentExpired`] and
//!   sends nothing more. `rtc`'s own ICE failure timer is disabled so that consent is the one
//!   rule; its liveness timer counts any packet, which a replayed SRTP stream could keep alive.
//!
//! A DTLS `close_notify` from the client closes the peer with [`ClosedReason::DtlsClose`];
//! `rtc` reports it only in the DTLS transport state, which this type checks after each datagram.
//!
//! Costs: a connected peer holds about 72 KB of heap (`examples/peer_memory.rs`), and `rtc`'s ICE
//! agent asks for a timer wakeup every 200 ms (its check interval is a floor, even for a lite
//! agent). A binding request replayed verbatim by someone on the path passes the integrity
//! check and refreshes consent; RFC 7675 has the same limit.
//!
//! No RTCP interceptors are registered (no sender/receiver reports, no NACK): audio-only
//! passthrough does not need them and each costs memory per peer.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCDtlsTransportState, RTCIceCandidate,
    RTCIceTransportState,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::demux::is_stun;
use crate::whip::{WhipError, WhipOffer, inspect_offer};

/// Settings of a [`WebRtcPeer`]; the defaults suit browsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// How long the client has to complete ICE and DTLS after the answer (default 15 s).
    pub setup_timeout: Duration,
    /// How long consent lasts after the last valid STUN binding request (RFC 7675: 30 s).
    pub consent_timeout: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            setup_timeout: Duration::from_secs(15),
            consent_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`WebRtcPeer::new`] could not answer an offer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The offer fails the checks of [`classify_post`](crate::classify_post) (its status applies).
    #[error(transparent)]
    Offer(#[from] WhipError),
    /// `rtc` refused the offer or could not answer it (caller's fault: `422`).
    #[error("cannot negotiate the offer: {0}")]
    Negotiation(String),
    /// `rtc` could not build a peer connection, e.g. certificate generation failed (`500`).
    #[error("cannot create the peer connection: {0}")]
    Internal(String),
}

impl PeerError {
    /// The HTTP status for the WHIP POST that carried the offer.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Offer(err) => err.http_status(),
            Self::Negotiation(_) => 422,
            Self::Internal(_) => 500,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Offer(err) => err.code(),
            Self::Negotiation(_) => "negotiation_failed",
            Self::Internal(_) => "internal",
        }
    }
}

/// Why [`WebRtcPeer::send_audio`] did not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Not connected yet (no SRTP keys) or already closed; the packet is dropped.
    #[error("the peer is not connected")]
    NotConnected,
    /// The payload type is neither the negotiated Opus nor telephone-event one.
    #[error("payload type {0} is not negotiated with this peer")]
    PayloadType(u8),
    /// `rtc` refused the packet.
    #[error("rtc refused the packet: {0}")]
    Rtc(String),
}

/// Why a peer closed; carried by [`PeerEvent::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClosedReason {
    /// [`WebRtcPeer::close`] was called.
    Local,
    /// The client closed DTLS (`close_notify`): a browser's `pc.close()`.
    DtlsClose,
    /// No valid STUN binding request for [`PeerConfig::consent_timeout`] (RFC 7675).
    ConsentExpired,
    /// Not connected within [`PeerConfig::setup_timeout`].
    SetupTimeout,
    /// `rtc` reported ICE failed.
    IceFailed,
    /// `rtc` reported the connection failed with ICE up: the DTLS handshake or the certificate
    /// fingerprint check failed.
    DtlsFailed,
}

impl ClosedReason {
    /// The metric label value, e.g. `consent_expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::DtlsClose => "dtls_close",
            Self::ConsentExpired => "consent_expired",
            Self::SetupTimeout => "setup_timeout",
            Self::IceFailed => "ice_failed",
            Self::DtlsFailed => "dtls_failed",
        }
    }
}

impl fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`WebRtcPeer`] tells the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The peer accepted a STUN binding request from an address it had not seen: route that
    /// address to this peer ([`PeerDemux::learn`](crate::PeerDemux::learn)).
    RemoteAddress(SocketAddr),
    /// ICE and DTLS are done and SRTP is keyed: media flows both ways from now on.
    Connected,
    /// A decrypted RTP packet from the client: Opus, or telephone-event (RFC 4733) by its
    /// payload type.
    Audio {
        /// RTP payload type (the offer's numbering).
        payload_type: u8,
        /// RTP sequence number.
        seq: u16,
        /// RTP timestamp (48 kHz clock).
        timestamp: u32,
        /// RTP marker bit.
        marker: bool,
        /// The client's SSRC.
        ssrc: u32,
        /// The codec payload.
        payload: Bytes,
    },
    /// The peer is finished; nothing more comes out of it except transmits already queued
    /// (a `close_notify`). Remove it from the demux and drop it. Emitted exactly once.
    Closed(ClosedReason),
}

/// A datagram to send from the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub payload: Bytes,
}

/// STUN Binding request and success response message types (RFC 5389 6).
const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const STUN_BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];

/// Characters of generated ICE ufrags and passwords (a subset of RFC 8839 ice-char).
const ICE_CHARS: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// One browser's WebRTC media session, answered and run on a shared UDP socket. See the module
/// doc for the timers and the answer's shape.
pub struct WebRtcPeer {
    pc: RTCPeerConnection,
    local: SocketAddr,
    local_ufrag: String,
    remote_ufrag: String,
    answer: String,
    sender: RTCRtpSenderId,
    opus_payload_type: u8,
    telephone_event_payload_type: Option<u8>,
    ssrc: u32,
    next_seq: u16,
    config: PeerConfig,
    created: Instant,
    /// When the last valid STUN binding request arrived (consent refreshed).
    consent_at: Option<Instant>,
    known_remotes: Vec<SocketAddr>,
    connected: bool,
    closed: Option<ClosedReason>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PeerEvent>,
}

impl WebRtcPeer {
    /// Answers `offer_sdp` with `local_candidate` (the shared socket's public address) as the only
    /// candidate. `rng` supplies the ICE credentials, SSRC and first sequence number (DTLS keys
    /// and the certificate come from `rtc`'s own OS-seeded generator).
    ///
    /// The text is checked with [`inspect_offer`] first; a caller that already has the
    /// [`WhipOffer`] (from [`classify_post`](crate::classify_post)) calls
    /// [`from_offer`](Self::from_offer) and saves parsing it again.
    pub fn new(
        offer_sdp: &str,
        local_candidate: SocketAddr,
        config: PeerConfig,
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Self, PeerError> {
        Self::from_offer(
            &inspect_offer(offer_sdp)?,
            local_candidate,
            config,
            rng,
            now,
        )
    }

    /// Answers an offer that passed [`classify_post`](crate::classify_post), as
    /// [`new`](Self::new) does, without parsing it again. (`rtc` still reads the offer's text
    /// once more: its API takes SDP as text only.)
    pub fn from_offer(
        offer: &WhipOffer,
        local_candidate: SocketAddr,
        config: PeerConfig,
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Self, PeerError> {
        let opus_payload_type = offer.opus_payload_type();
        let telephone_event_payload_type = offer.telephone_event_payload_type();
        let local_ufrag = random_ice_string(rng, 16);
        let local_pwd = random_ice_string(rng, 32);
        let ssrc = rng.next_u32();
        let next_seq = (rng.next_u32() & 0xFFFF) as u16;

        let mut media_engine = MediaEngine::default();
        let opus = opus_codec();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus.clone(),
                    payload_type: opus_payload_type,
                },
                RtpCodecKind::Audio,
            )
            .map_err(|err| PeerError::Internal(err.to_string()))?;
        if let Some(payload_type) = telephone_event_payload_type {
            media_engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
                            clock_rate: 48000,
                            channels: 0,
                            sdp_fmtp_line: "0-16".to_owned(),
                            rtcp_feedback: vec![],
                        },
                        payload_type,
                    },
                    RtpCodecKind::Audio,
                )
                .map_err(|err| PeerError::Internal(err.to_string()))?;
        }
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_ice_credentials(local_ufrag.clone(), local_pwd)
            // Disconnected after 5 s of silence is informational; failure is our consent timer
            // (module doc), and a lite agent sends no keepalives.
            .with_ice_timeouts(None, Some(Duration::ZERO), Some(Duration::ZERO))
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .build(now)
            .map_err(|err| PeerError::Internal(err.to_string()))?;

        let offer_desc = RTCSessionDescription::offer(offer.description().marshal())
            .map_err(|err| PeerError::Negotiation(err.to_string()))?;
        pc.set_remote_description(now, offer_desc)
            .map_err(|err| PeerError::Negotiation(err.to_string()))?;
        // After the offer, so the track joins the transceiver the offer created and keeps the
        // offer's codec list (Opus and telephone-event), instead of a new one with only Opus.
        let track = MediaStreamTrack::new(
            "voxgate".to_owned(),
            "voxgate-audio".to_owned(),
            "voxgate-audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus,
                ..Default::default()
            }],
        );
        let sender = pc
            .add_track(track)
            .map_err(|err| PeerError::Internal(err.to_string()))?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local_candidate.ip().to_string(),
                port: local_candidate.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|err| PeerError::Internal(err.to_string()))?;
        let candidate = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(|err| PeerError::Internal(err.to_string()))?;
        pc.add_local_candidate(candidate)
            .map_err(|err| PeerError::Internal(err.to_string()))?;
        let answer = pc
            .create_answer(None)
            .map_err(|err| PeerError::Negotiation(err.to_string()))?;
        pc.set_local_description(now, answer)
            .map_err(|err| PeerError::Negotiation(err.to_string()))?;
        let answer = pc
            .local_description()
            .map(|desc| desc.sdp)
            .ok_or_else(|| PeerError::Internal("no local description".to_owned()))?;

        let mut peer = Self {
            pc,
            local: local_candidate,
            local_ufrag,
            remote_ufrag: offer.remote_ufrag().to_owned(),
            answer,
            sender,
            opus_payload_type,
            telephone_event_payload_type,
            ssrc,
            next_seq,
            config,
            created: now,
            consent_at: None,
            known_remotes: Vec::new(),
            connected: false,
            closed: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        peer.pump(now, None);
        Ok(peer)
    }

    /// The answer SDP for the `201 Created` body.
    pub fn answer_sdp(&self) -> &str {
        &self.answer
    }

    /// Our ICE ufrag: the key to register in [`PeerDemux::insert`](crate::PeerDemux::insert).
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// The client's ICE ufrag from its offer (what a WHIP PATCH is checked against).
    pub fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }

    /// The negotiated Opus payload type (the offer's).
    pub fn opus_payload_type(&self) -> u8 {
        self.opus_payload_type
    }

    /// The negotiated telephone-event/48000 payload type, if the offer had one.
    pub fn telephone_event_payload_type(&self) -> Option<u8> {
        self.telephone_event_payload_type
    }

    /// Whether ICE, DTLS and SRTP are up and the peer is not closed.
    pub fn is_connected(&self) -> bool {
        self.connected && self.closed.is_none()
    }

    /// Why the peer closed, once it has.
    pub fn closed_reason(&self) -> Option<ClosedReason> {
        self.closed
    }

    /// Feeds a datagram the shared socket received from `from` and [`PeerDemux`] routed here.
    ///
    /// [`PeerDemux`]: crate::PeerDemux
    pub fn handle_receive(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        let binding_request = is_stun(datagram) && datagram[..2] == STUN_BINDING_REQUEST;
        let transaction = binding_request.then(|| stun_transaction_id(datagram));
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(datagram),
        };
        // rtc drops what it cannot use (garbage, media from unchecked addresses); an error here
        // is about one datagram, never the session.
        let _ = self.pc.handle_read(message);
        self.pump(now, transaction.map(|id| (from, id)));
        if self.closed.is_none() && self.dtls_closed() {
            self.close_with(now, ClosedReason::DtlsClose, true);
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if let Some((deadline, reason)) = self.own_deadline()
            && now >= deadline
        {
            // The client is gone or never came: RFC 7675 says send nothing more.
            self.close_with(now, reason, false);
            return;
        }
        let _ = self.pc.handle_timeout(now);
        self.pump(now, None);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None` once closed.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let own = self.own_deadline().map(|(at, _)| at);
        match (own, self.pc.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Sends one RTP packet to the client, SRTP-encrypted: `payload_type` must be the negotiated
    /// Opus or telephone-event one; the sequence number and SSRC are this peer's.
    pub fn send_audio(
        &mut self,
        now: Instant,
        payload_type: u8,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::NotConnected);
        }
        if payload_type != self.opus_payload_type
            && Some(payload_type) != self.telephone_event_payload_type
        {
            return Err(SendError::PayloadType(payload_type));
        }
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type,
                sequence_number: self.next_seq,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        let mut sender = self
            .pc
            .rtp_sender(self.sender)
            .ok_or(SendError::NotConnected)?;
        sender
            .write_rtp(now, packet)
            .map_err(|err| SendError::Rtc(err.to_string()))?;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.pump(now, None);
        Ok(())
    }

    /// Ends the session: sends a DTLS `close_notify` (when connected) and emits
    /// [`PeerEvent::Closed`]`(`[`ClosedReason::Local`]`)`. Idempotent.
    pub fn close(&mut self, now: Instant) {
        if self.closed.is_none() {
            self.close_with(now, ClosedReason::Local, true);
        }
    }

    fn own_deadline(&self) -> Option<(Instant, ClosedReason)> {
        if self.closed.is_some() {
            return None;
        }
        if !self.connected {
            return Some((
                self.created + self.config.setup_timeout,
                ClosedReason::SetupTimeout,
            ));
        }
        // Connected implies a binding request was accepted; the fallback is for safety.
        let since = self.consent_at.unwrap_or(self.created);
        Some((
            since + self.config.consent_timeout,
            ClosedReason::ConsentExpired,
        ))
    }

    fn close_with(&mut self, now: Instant, reason: ClosedReason, send: bool) {
        self.closed = Some(reason);
        let _ = self.pc.close();
        // Drain what close() queued (close_notify); keep it only if we may still talk.
        self.drain_writes(now, None, send);
        if !send {
            self.transmits.clear();
        }
        while self.pc.poll_event().is_some() {}
        while self.pc.poll_read().is_some() {}
        self.events.push_back(PeerEvent::Closed(reason));
    }

    /// Moves everything `rtc` produced into our queues. `binding` is the source and transaction
    /// id of a STUN binding request just fed in: if `rtc` answered it with a success, consent is
    /// refreshed and the address announced.
    fn pump(&mut self, now: Instant, binding: Option<(SocketAddr, [u8; 12])>) {
        self.drain_writes(now, binding, true);
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        self.events.push_back(PeerEvent::Connected);
                    }
                    RTCPeerConnectionState::Failed if self.closed.is_none() => {
                        let reason = if self.ice_failed() {
                            ClosedReason::IceFailed
                        } else {
                            ClosedReason::DtlsFailed
                        };
                        self.close_with(now, reason, false);
                        return;
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Failed,
                ) if self.closed.is_none() => {
                    self.close_with(now, ClosedReason::IceFailed, false);
                    return;
                }
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                self.events.push_back(PeerEvent::Audio {
                    payload_type: packet.header.payload_type,
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    ssrc: packet.header.ssrc,
                    payload: packet.payload,
                });
            }
        }
        // Reading can queue writes (DTLS flights, SRTCP).
        self.drain_writes(now, None, true);
    }

    fn drain_writes(&mut self, now: Instant, binding: Option<(SocketAddr, [u8; 12])>, keep: bool) {
        while let Some(out) = self.pc.poll_write() {
            let destination = out.transport.peer_addr;
            let payload = out.message.freeze();
            if let Some((from, id)) = binding
                && destination == from
                && is_stun(&payload)
                && payload[..2] == STUN_BINDING_SUCCESS
                && stun_transaction_id(&payload) == id
            {
                self.consent_at = Some(now);
                if !self.known_remotes.contains(&from) {
                    self.known_remotes.push(from);
                    self.events.push_back(PeerEvent::RemoteAddress(from));
                }
            }
            if keep {
                self.transmits.push_back(Transmit {
                    destination,
                    payload,
                });
            }
        }
    }

    fn dtls_closed(&mut self) -> bool {
        self.connected
            && self
                .pc
                .rtp_sender(self.sender)
                .and_then(|sender| sender.transport().map(|t| t.state()))
                == Some(RTCDtlsTransportState::Closed)
    }

    fn ice_failed(&mut self) -> bool {
        self.pc
            .rtp_sender(self.sender)
            .and_then(|sender| sender.transport().map(|t| t.ice_transport().state()))
            == Some(RTCIceTransportState::Failed)
    }
}

impl fmt::Debug for WebRtcPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebRtcPeer")
            .field("local", &self.local)
            .field("local_ufrag", &self.local_ufrag)
            .field("connected", &self.connected)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn random_ice_string(rng: &mut impl RngCore, len: usize) -> String {
    (0..len)
        .map(|_| {
            // 62 symbols: the modulo bias of a u32 is below 2^-26, irrelevant for credentials.
            let index = (rng.next_u32() % ICE_CHARS.len() as u32) as usize;
            char::from(ICE_CHARS[index])
        })
        .collect()
}

/// The transaction id of a datagram that passed [`is_stun`] (bytes 8..20).
fn stun_transaction_id(datagram: &[u8]) -> [u8; 12] {
    let mut id = [0u8; 12];
    if let Some(bytes) = datagram.get(8..20) {
        id.copy_from_slice(bytes);
    }
    id
}
