//! A deterministic harness: rtc-built browser-like clients and `WebRtcPeer`s on one server
//! address, datagrams shuttled in memory through a `PeerDemux`, time jumped to the next deadline.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;
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
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use voxgate_webrtc::{PeerConfig, PeerDemux, PeerEvent, WebRtcPeer};

/// The shared server socket's address (the one host candidate of every peer).
pub const SERVER: &str = "127.0.0.1:3478";
pub const OPUS_PT: u8 = 111;
pub const DTMF_PT: u8 = 126;

/// The origin of simulated time; only offsets from it matter.
pub fn origin() -> Instant {
    #[allow(clippy::disallowed_methods)] // an origin for virtual time; only offsets matter
    Instant::now()
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
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

fn telephone_event() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
        clock_rate: 48000,
        channels: 0,
        sdp_fmtp_line: "0-16".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A browser stand-in: full ICE (controlling, as the offerer facing a lite agent), DTLS
/// actpass in the offer so the server's passive makes it the DTLS client, Opus/48000/2 at 111
/// and telephone-event/48000 at 126.
pub struct Client {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    pub connected: bool,
    pub received: Vec<Packet>,
    /// Drop everything this client sends (it vanished).
    pub silent: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, ssrc: u32, now: Instant) -> Self {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus(),
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .expect("opus");
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: telephone_event(),
                    payload_type: DTMF_PT,
                },
                RtpCodecKind::Audio,
            )
            .expect("telephone-event");
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(SettingEngineBuilder::new().build())
            .with_media_engine(media_engine)
            .build(now)
            .expect("client pc");
        let track = MediaStreamTrack::new(
            "browser".to_owned(),
            "mic".to_owned(),
            "mic".to_owned(),
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
        let sender = pc.add_track(track).expect("track");
        // A browser offers telephone-event next to Opus; rtc offers only the track's codec
        // unless told.
        pc.rtp_transceiver(sender.into())
            .expect("transceiver")
            .set_codec_preferences(vec![
                RTCRtpCodecParameters {
                    rtp_codec: opus(),
                    payload_type: OPUS_PT,
                },
                RTCRtpCodecParameters {
                    rtp_codec: telephone_event(),
                    payload_type: DTMF_PT,
                },
            ])
            .expect("codec preferences");
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("candidate");
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().expect("json"))
            .expect("local candidate");
        Self {
            pc,
            addr,
            sender,
            ssrc,
            connected: false,
            received: Vec::new(),
            silent: false,
        }
    }

    pub fn offer(&mut self, now: Instant) -> String {
        let offer = self.pc.create_offer(None).expect("offer");
        self.pc
            .set_local_description(now, offer.clone())
            .expect("set local");
        offer.sdp
    }

    pub fn accept_answer(&mut self, now: Instant, sdp: &str) {
        let answer = RTCSessionDescription::answer(sdp.to_owned()).expect("answer");
        self.pc
            .set_remote_description(now, answer)
            .expect("set remote");
    }

    pub fn send_opus(&mut self, now: Instant, seq: u16, timestamp: u32, payload: &[u8]) {
        self.send(now, OPUS_PT, seq, timestamp, payload);
    }

    pub fn send(&mut self, now: Instant, pt: u8, seq: u16, timestamp: u32, payload: &[u8]) {
        let ssrc = self.ssrc;
        let mut sender = self.pc.rtp_sender(self.sender).expect("sender");
        sender
            .write_rtp(
                now,
                Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp,
                        ssrc,
                        marker: seq == 0,
                        ..Default::default()
                    },
                    payload: Bytes::copy_from_slice(payload),
                },
            )
            .expect("write_rtp");
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = event
            {
                self.connected = true;
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                self.received.push(packet);
            }
        }
    }
}

/// The server side (one shared address, a demux, peers keyed by index) and its clients.
pub struct Harness {
    pub now: Instant,
    pub server: SocketAddr,
    pub demux: PeerDemux<usize>,
    pub peers: Vec<Option<WebRtcPeer>>,
    /// Every event each peer emitted, in order.
    pub events: Vec<Vec<PeerEvent>>,
    /// When each peer emitted `Closed`.
    pub closed_at: Vec<Option<Instant>>,
    pub clients: Vec<Client>,
    pub rng: StdRng,
    pub config: PeerConfig,
    /// Datagrams the demux could not route.
    pub unrouted: usize,
    /// Every STUN binding request a client sent toward the server.
    pub binding_requests: Vec<(SocketAddr, Vec<u8>)>,
}

impl Harness {
    pub fn new() -> Self {
        Self {
            now: origin(),
            server: addr(SERVER),
            demux: PeerDemux::new(),
            peers: Vec::new(),
            events: Vec::new(),
            closed_at: Vec::new(),
            clients: Vec::new(),
            rng: StdRng::seed_from_u64(42),
            config: PeerConfig::default(),
            unrouted: 0,
            binding_requests: Vec::new(),
        }
    }

    /// Adds a client at `client_addr` and its server peer; returns their common index.
    pub fn add_pair(&mut self, client_addr: &str) -> usize {
        self.add_pair_with(client_addr, |_| {})
    }

    /// As [`Harness::add_pair`], with `setup` run on the client before it makes its offer.
    pub fn add_pair_with(&mut self, client_addr: &str, setup: impl FnOnce(&mut Client)) -> usize {
        let index = self.clients.len();
        let mut client = Client::new(addr(client_addr), 0x1000 + index as u32, self.now);
        setup(&mut client);
        let offer = client.offer(self.now);
        if std::env::var_os("SHOW_SDP").is_some() {
            println!("{offer}");
        }
        let peer = WebRtcPeer::new(
            &offer,
            self.server,
            self.config.clone(),
            &mut self.rng,
            self.now,
        )
        .expect("server peer");
        client.accept_answer(self.now, peer.answer_sdp());
        self.demux
            .insert(index, peer.local_ufrag())
            .expect("unique ufrag");
        self.clients.push(client);
        self.peers.push(Some(peer));
        self.events.push(Vec::new());
        self.closed_at.push(None);
        index
    }

    pub fn peer(&mut self, index: usize) -> &mut WebRtcPeer {
        self.peers[index].as_mut().expect("peer not dropped")
    }

    /// Moves datagrams both ways until none is in flight. Returns how many moved.
    pub fn flush(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let mut round = 0;
            for c in 0..self.clients.len() {
                while let Some(out) = self.clients[c].pc.poll_write() {
                    if self.clients[c].silent || out.transport.peer_addr != self.server {
                        continue;
                    }
                    round += 1;
                    let from = self.clients[c].addr;
                    if voxgate_webrtc::demux::is_stun(&out.message) && out.message[..2] == [0, 1] {
                        self.binding_requests.push((from, out.message.to_vec()));
                    }
                    self.deliver_to_server(from, &out.message);
                }
                self.clients[c].drain_events();
            }
            for p in 0..self.peers.len() {
                self.drain_peer(p);
                let Some(peer) = self.peers[p].as_mut() else {
                    continue;
                };
                let mut outs = Vec::new();
                while let Some(t) = peer.poll_transmit() {
                    outs.push(t);
                }
                for t in outs {
                    round += 1;
                    if let Some(client) = self.clients.iter_mut().find(|c| c.addr == t.destination)
                    {
                        let _ = client.pc.handle_read(TaggedBytesMut {
                            now: self.now,
                            transport: TransportContext {
                                local_addr: client.addr,
                                peer_addr: self.server,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(&t.payload[..]),
                        });
                        client.drain_events();
                    }
                }
            }
            moved += round;
            if round == 0 {
                return moved;
            }
        }
    }

    /// Routes one datagram through the demux into its peer, as the proxy's socket loop would.
    pub fn deliver_to_server(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some(key) = self.demux.route(from, datagram) else {
            self.unrouted += 1;
            return;
        };
        if let Some(peer) = self.peers[key].as_mut() {
            peer.handle_receive(self.now, from, datagram);
        }
        self.drain_peer(key);
    }

    fn drain_peer(&mut self, key: usize) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        while let Some(event) = peer.poll_event() {
            match &event {
                PeerEvent::RemoteAddress(a) => self.demux.learn(key, *a),
                PeerEvent::Closed(_) => {
                    self.demux.remove(key);
                    self.closed_at[key] = Some(self.now);
                }
                _ => {}
            }
            self.events[key].push(event);
        }
    }

    /// The earliest deadline of every client and live peer.
    fn next_deadline(&mut self) -> Option<Instant> {
        let clients = self.clients.iter_mut().filter_map(|c| c.pc.poll_timeout());
        let peers = self
            .peers
            .iter_mut()
            .flatten()
            .filter_map(|p| p.poll_timeout())
            .collect::<Vec<_>>();
        clients.chain(peers).min()
    }

    /// Flushes, then jumps to the next deadline (at least 1 ms on, so a deadline stuck in the
    /// past cannot spin) and runs the timers, until `done` or `limit` of simulated time passed.
    /// Returns whether `done` became true.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let next = self
                .next_deadline()
                .unwrap_or(end)
                .max(self.now + Duration::from_millis(1))
                .min(end);
            self.now = next;
            let now = self.now;
            for c in &mut self.clients {
                let _ = c.pc.handle_timeout(now);
            }
            for p in self.peers.iter_mut().flatten() {
                p.handle_timeout(now);
            }
        }
    }

    /// Runs until every client and peer is connected.
    pub fn connect_all(&mut self) {
        let connected = self.run_until(Duration::from_secs(10), |h| {
            h.clients.iter().all(|c| c.connected)
                && h.peers.iter().flatten().all(|p| p.is_connected())
        });
        assert!(connected, "did not connect: events {:?}", self.events);
    }

    pub fn closed_reason(&self, index: usize) -> Option<voxgate_webrtc::ClosedReason> {
        self.events[index].iter().find_map(|e| match e {
            PeerEvent::Closed(r) => Some(*r),
            _ => None,
        })
    }

    pub fn audio(&self, index: usize) -> Vec<(u8, u16, u32, Bytes)> {
        self.events[index]
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Audio {
                    payload_type,
                    seq,
                    timestamp,
                    payload,
                    ..
                } => Some((*payload_type, *seq, *timestamp, payload.clone())),
                _ => None,
            })
            .collect()
    }
}
