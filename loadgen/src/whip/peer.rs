//! The WHIP client's WebRTC peer: a browser stand-in on webrtc-rs's sans-I/O `rtc` core.
//!
//! Like a browser facing a WHIP server: full ICE as the controlling agent, one host candidate
//! (the session's UDP socket) in a non-trickle offer, DTLS `actpass` (the server's `passive`
//! makes us the DTLS client), one sendrecv audio section with Opus/48000/2 and optionally
//! telephone-event/48000. The session task owns the socket and the clock: datagrams and time go
//! in through `handle_*`, datagrams, state changes and received RTP come out through `poll_*`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol as _;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

/// Payload type the client offers Opus at (what browsers use).
pub const OPUS_PT: u8 = 111;
/// Payload type the client offers telephone-event/48000 at.
pub const TELEPHONE_EVENT_PT: u8 = 126;

/// Pace of the ICE connectivity checks while connecting.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it fails: 2 s at [`ICE_CHECK_INTERVAL`], room for a loaded
/// server.
const ICE_MAX_BINDING_REQUESTS: u16 = 40;

/// Where the peer's connection stands, as far as a load test cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// ICE and DTLS under way.
    Connecting,
    /// ICE and DTLS done, SRTP keyed.
    Connected,
    /// `rtc` gave up (ICE or DTLS failed), or the server closed DTLS.
    Failed,
}

/// One received RTP packet: what the echo analysis needs.
#[derive(Debug, Clone)]
pub struct Received {
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// The payload.
    pub payload: Bytes,
}

/// A browser-like WebRTC client for one WHIP session.
pub struct ClientPeer {
    pc: RTCPeerConnection,
    local: SocketAddr,
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    state: PeerState,
}

impl ClientPeer {
    /// A client whose one host candidate is `local` (its socket's address). `ssrc`, `seq` and
    /// `timestamp` start its RTP stream.
    pub fn new(
        local: SocketAddr,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        telephone_event: bool,
        now: Instant,
    ) -> anyhow::Result<Self> {
        let mut codecs = vec![RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: OPUS_PT,
        }];
        if telephone_event {
            codecs.push(RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
                    clock_rate: 48000,
                    channels: 0,
                    sdp_fmtp_line: "0-16".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: TELEPHONE_EVENT_PT,
            });
        }
        let mut media_engine = MediaEngine::default();
        for codec in &codecs {
            media_engine
                .register_codec(codec.clone(), RtpCodecKind::Audio)
                .context("register codec")?;
        }
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(
                SettingEngineBuilder::new()
                    // rtc paces checks (and nomination) at 200 ms; browsers check about every
                    // 50 ms, and setup time should measure the server, not our timer.
                    .with_ice_connection_attempts(
                        Some(ICE_CHECK_INTERVAL),
                        Some(ICE_MAX_BINDING_REQUESTS),
                    )
                    .build(),
            )
            .with_media_engine(media_engine)
            .build(now)
            .context("peer connection")?;
        let track = MediaStreamTrack::new(
            "voxgate-loadgen".to_owned(),
            "tone".to_owned(),
            "tone".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).context("add track")?;
        // rtc offers only the track's codec unless told; a browser offers telephone-event too.
        pc.rtp_transceiver(sender.into())
            .context("no transceiver for the track")?
            .set_codec_preferences(codecs)
            .context("codec preferences")?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .context("host candidate")?;
        let candidate = RTCIceCandidate::from(&candidate)
            .to_json()
            .context("candidate")?;
        pc.add_local_candidate(candidate)
            .context("add local candidate")?;
        Ok(Self {
            pc,
            local,
            sender,
            ssrc,
            seq,
            timestamp,
            state: PeerState::Connecting,
        })
    }

    /// Creates the offer, with the host candidate in it, and applies it locally.
    pub fn offer(&mut self, now: Instant) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None).context("create offer")?;
        self.pc
            .set_local_description(now, offer)
            .context("set local description")?;
        let sdp = self
            .pc
            .local_description()
            .map(|desc| desc.sdp)
            .context("no local description")?;
        Ok(sdp)
    }

    /// Applies the server's answer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> anyhow::Result<()> {
        let answer = RTCSessionDescription::answer(sdp.to_owned()).context("answer SDP")?;
        self.pc
            .set_remote_description(now, answer)
            .context("set remote description")?;
        Ok(())
    }

    /// Feeds a datagram the socket received from `from`.
    pub fn handle_receive(&mut self, now: Instant, from: SocketAddr, datagram: BytesMut) {
        // rtc drops what it cannot use; an error is about one datagram, not the session.
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: datagram,
        });
        self.update_state();
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
        self.update_state();
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.pc.poll_timeout()
    }

    /// The next datagram to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.pc
            .poll_write()
            .map(|out| (out.transport.peer_addr, out.message))
    }

    /// The next RTP packet received.
    pub fn poll_rtp(&mut self) -> Option<Received> {
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                return Some(Received {
                    payload_type: packet.header.payload_type,
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    payload: packet.payload,
                });
            }
        }
        None
    }

    /// Where the connection stands.
    pub fn state(&mut self) -> PeerState {
        self.update_state();
        self.state
    }

    /// Sends one 20 ms Opus frame (`ticks` of the 48 kHz clock); the sequence number, timestamp
    /// and SSRC are the peer's.
    pub fn send_opus(&mut self, now: Instant, payload: Bytes, ticks: u32) -> anyhow::Result<()> {
        let packet = Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(ticks);
        self.pc
            .rtp_sender(self.sender)
            .context("no RTP sender")?
            .write_rtp(now, packet)
            .context("write RTP")?;
        Ok(())
    }

    /// Closes the connection: queues a DTLS `close_notify` (drain [`poll_transmit`]).
    ///
    /// [`poll_transmit`]: Self::poll_transmit
    pub fn close(&mut self) {
        let _ = self.pc.close();
    }

    fn update_state(&mut self) {
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                match state {
                    RTCPeerConnectionState::Connected if self.state == PeerState::Connecting => {
                        self.state = PeerState::Connected;
                    }
                    // Disconnected is rtc's "no packet for 5 s", which may pass; not a failure.
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.state = PeerState::Failed;
                    }
                    _ => {}
                }
            }
        }
    }
}

impl std::fmt::Debug for ClientPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPeer")
            .field("local", &self.local)
            .field("ssrc", &self.ssrc)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}
