//! The media side of a session as signalling sees it: which side is which, where a peer's media
//! goes, and the SDP this node presents to each side.

use std::net::{IpAddr, SocketAddr};

use voxgate_sip::sdp::{AudioSdp, CodecKind, Direction, Origin};

/// Which side of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The leg facing the caller (trunk, softphone, dialled number or WebRTC client).
    Caller,
    /// The leg facing the Backend (or the outbound trunk).
    Backend,
}

impl Side {
    /// 0 for the caller, 1 for the Backend.
    pub fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Backend => 1,
        }
    }

    /// The side across the session.
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Backend,
            Side::Backend => Side::Caller,
        }
    }
}

/// What the peer of a side announced in its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMedia {
    /// RTP address (`c=` and `m=` port).
    pub rtp: SocketAddr,
    /// RTCP address (`a=rtcp`, else RTP port + 1); unused when `mux`.
    pub rtcp: SocketAddr,
    /// RTP and RTCP share the RTP port (rtcp-mux).
    pub mux: bool,
    /// The peer will send media (its direction is sendrecv or sendonly), so silence means trouble.
    pub sends: bool,
    /// RTP clock rate of its first audio codec (8000 when it names none): the unit of its
    /// timestamps, for jitter.
    pub clock_rate: u32,
}

/// The media a peer announced in `sdp`.
pub fn peer_media(sdp: &AudioSdp) -> PeerMedia {
    let rtp = SocketAddr::new(sdp.connection, sdp.port);
    let rtcp_port = sdp.rtcp.unwrap_or(sdp.port.saturating_add(1));
    PeerMedia {
        rtp,
        rtcp: SocketAddr::new(sdp.connection, rtcp_port),
        mux: sdp.rtcp_mux,
        sends: sdp.port != 0 && matches!(sdp.direction, Direction::SendRecv | Direction::SendOnly),
        clock_rate: sdp
            .codecs
            .iter()
            .find(|c| c.kind != CodecKind::TelephoneEvent)
            .map_or(8000, |c| c.clock_rate),
    }
}

/// The SDP of a message body, if it is one this node can use.
pub fn parse_sdp(body: &[u8]) -> Option<AudioSdp> {
    let text = std::str::from_utf8(body).ok()?;
    AudioSdp::parse(text).ok()
}

/// `sdp` with only its first audio codec (and the telephone-event at that codec's clock), so that
/// a side offered it cannot pick a codec the other side will not send; `None` if it has no audio
/// codec.
pub fn first_codec_only(mut sdp: AudioSdp) -> Option<AudioSdp> {
    let audio = sdp
        .codecs
        .iter()
        .find(|c| c.kind != CodecKind::TelephoneEvent)?
        .clone();
    let event = sdp
        .codecs
        .iter()
        .find(|c| c.kind == CodecKind::TelephoneEvent && c.clock_rate == audio.clock_rate)
        .cloned();
    sdp.codecs = std::iter::once(audio).chain(event).collect();
    Some(sdp)
}

/// The SDP this node presents: its own origin (version raised on every SDP sent to a side) and
/// address, each side seeing its own relay port, so that neither side learns the other's.
#[derive(Debug, Clone)]
pub(crate) struct SdpWriter {
    pub(crate) public_ip: IpAddr,
    pub(crate) session_id: u64,
    /// Relay port per side.
    pub(crate) ports: [u16; 2],
    versions: [u64; 2],
    /// The last SDP sent to each side, for a session refresh that changes nothing.
    pub(crate) last: [Option<String>; 2],
}

impl SdpWriter {
    pub(crate) fn new(public_ip: IpAddr, session_id: u64, ports: [u16; 2]) -> Self {
        Self {
            public_ip,
            session_id,
            ports,
            versions: [1, 1],
            last: [None, None],
        }
    }

    /// `sdp` as this node presents it to `side`: its audio section only, without the lines this
    /// node does not model (they would tell `side` about the other one: ICE, SSRCs, mids).
    pub(crate) fn write(&mut self, side: Side, sdp: &AudioSdp) -> String {
        let text = self.rewrite(side, sdp).to_string();
        self.last[side.index()] = Some(text.clone());
        text
    }

    /// An answer to `offer` as this node presents it to `side`: every section `offer` has is
    /// answered in its place, the ones other than audio refused with port 0 (RFC 3264 6).
    pub(crate) fn write_answer(&mut self, side: Side, sdp: &AudioSdp, offer: &AudioSdp) -> String {
        let mut out = self.rewrite(side, sdp);
        out.answer_sections_of(offer);
        let text = out.to_string();
        self.last[side.index()] = Some(text.clone());
        text
    }

    fn rewrite(&mut self, side: Side, sdp: &AudioSdp) -> AudioSdp {
        let index = side.index();
        self.versions[index] += 1;
        let mut out = sdp.without_other_sections();
        out.session_lines.clear();
        out.audio_lines.clear();
        out.origin = Origin {
            username: "voxgate".into(),
            session_id: self.session_id,
            session_version: self.versions[index],
            address: self.public_ip,
        };
        out.session_name = "voxgate".into();
        out.connection = self.public_ip;
        if out.port != 0 {
            out.port = self.ports[index];
        }
        out.rtcp = None;
        out
    }
}
