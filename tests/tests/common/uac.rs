//! A small blocking SIP UAC over one UDP socket, for tests that inspect headers or act step by step.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rsip::SipMessage;
use voxgate_sip::dialog::{self, Dialog};
use voxgate_sip::message::{cseq, response_for};
use voxgate_sip::sdp::{AudioSdp, Codec};

/// One caller: a SIP socket, an RTP socket and one dialog.
pub struct Uac {
    /// SIP socket (Via, Contact and From name its address).
    pub sip: UdpSocket,
    /// RTP socket offered in the SDP.
    pub rtp: UdpSocket,
    /// Our SIP address.
    pub local: SocketAddr,
    /// Where requests go.
    pub proxy: SocketAddr,
    /// The call's dialog.
    pub dialog: Dialog,
    /// The initial INVITE, once sent.
    pub invite: Option<rsip::Request>,
    /// Every message received, in order (the raw text, for topology checks).
    pub received: Vec<String>,
    /// Requests received while waiting for something else.
    pending: VecDeque<rsip::Request>,
    /// Drives tags, branches and Call-IDs.
    pub rng: StdRng,
}

impl Uac {
    /// A caller on `ip` (any loopback address) calling through `proxy`.
    pub fn new(ip: &str, proxy: SocketAddr) -> Self {
        let sip = UdpSocket::bind((ip, 0)).expect("bind sip");
        let rtp = UdpSocket::bind((ip, 0)).expect("bind rtp");
        let local = sip.local_addr().unwrap();
        let mut rng = StdRng::seed_from_u64(u64::from(local.port()));
        let dialog = Dialog::outgoing(
            &mut rng,
            local,
            format!("sip:caller@{local}"),
            format!("sip:echo@{proxy}"),
            "voxgate-tests",
        );
        Self {
            sip,
            rtp,
            local,
            proxy,
            dialog,
            invite: None,
            received: Vec::new(),
            pending: VecDeque::new(),
            rng,
        }
    }

    /// An SDP offer of PCMU/PCMA on `port` of our address.
    pub fn offer(&self, port: u16) -> String {
        AudioSdp::offer(
            self.local.ip(),
            port,
            vec![Codec::pcmu(), Codec::pcma()],
            u64::from(port),
        )
        .to_string()
    }

    /// Sends the initial INVITE with an offer of our RTP socket.
    pub fn send_invite(&mut self) -> rsip::Request {
        let sdp = self.offer(self.rtp.local_addr().unwrap().port());
        let invite = self.dialog.invite(&mut self.rng, sdp);
        self.send(&invite.to_string());
        self.invite = Some(invite.clone());
        invite
    }

    /// Sends raw text (or bytes) to the proxy.
    pub fn send(&self, message: &str) {
        self.send_bytes(message.as_bytes());
    }

    /// Sends raw bytes to the proxy.
    pub fn send_bytes(&self, bytes: &[u8]) {
        self.sip.send_to(bytes, self.proxy).expect("send");
    }

    /// The next parsable SIP message within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<SipMessage> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            self.sip
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((len, _)) = self.sip.recv_from(&mut buf) else {
                if std::time::Instant::now() >= deadline {
                    return None;
                }
                continue;
            };
            self.received
                .push(String::from_utf8_lossy(&buf[..len]).into_owned());
            if let Ok(message) = voxgate_sip::parse(&buf[..len]) {
                return Some(message);
            }
        }
    }

    /// Responses to our `method` until the final one (provisionals first); requests meanwhile
    /// are kept for [`Uac::recv_request`]. `None` when no final response came in `timeout`.
    pub fn final_response(
        &mut self,
        method: rsip::Method,
        timeout: Duration,
    ) -> Option<(Vec<rsip::Response>, rsip::Response)> {
        let deadline = std::time::Instant::now() + timeout;
        let mut provisional = Vec::new();
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.recv(left)? {
                SipMessage::Response(response) => {
                    if cseq(&response).map(|(_, m)| m) != Some(method) {
                        continue;
                    }
                    if response.status_code.code() < 200 {
                        provisional.push(response);
                    } else {
                        return Some((provisional, response));
                    }
                }
                SipMessage::Request(request) => self.pending.push_back(request),
            }
        }
    }

    /// The next request of `method` from the proxy within `timeout` (responses are skipped).
    pub fn recv_request(
        &mut self,
        method: rsip::Method,
        timeout: Duration,
    ) -> Option<rsip::Request> {
        if let Some(i) = self.pending.iter().position(|r| r.method == method) {
            return self.pending.remove(i);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            if let SipMessage::Request(request) = self.recv(left)? {
                if request.method == method {
                    return Some(request);
                }
                self.pending.push_back(request);
            }
        }
    }

    /// Answers `request` with `code` (our tag on To).
    pub fn respond(&self, request: &rsip::Request, code: u16) {
        let response = response_for(request, code, Some(&self.dialog.local_tag));
        self.send(&response.to_string());
    }

    /// A call from `ip` through `proxy`, answered 200 and ACKed (panics otherwise), with its 200.
    pub fn answered(ip: &str, proxy: SocketAddr) -> (Self, rsip::Response) {
        let mut uac = Self::new(ip, proxy);
        uac.send_invite();
        let (_, ok) = uac
            .final_response(rsip::Method::Invite, Duration::from_secs(3))
            .expect("no final answer to the INVITE");
        assert_eq!(ok.status_code.code(), 200, "{ok}");
        uac.ack(&ok);
        (uac, ok)
    }

    /// Confirms the dialog from the 2xx and ACKs it; returns where in-dialog requests go.
    pub fn ack(&mut self, ok: &rsip::Response) -> SocketAddr {
        self.dialog.confirm(ok);
        let invite_cseq = cseq(ok).map_or(1, |(n, _)| n);
        let ack = self.dialog.ack(&mut self.rng, invite_cseq);
        let hop = self.dialog.next_hop().unwrap_or(self.proxy);
        self.sip.send_to(ack.to_string().as_bytes(), hop).unwrap();
        hop
    }

    /// Sends an in-dialog request (BYE, re-INVITE with `sdp`) and returns its final response.
    pub fn in_dialog(
        &mut self,
        method: rsip::Method,
        sdp: Option<String>,
        timeout: Duration,
    ) -> Option<rsip::Response> {
        let request = self.dialog.request(&mut self.rng, method, sdp);
        let hop = self.dialog.next_hop().unwrap_or(self.proxy);
        self.sip
            .send_to(request.to_string().as_bytes(), hop)
            .unwrap();
        self.final_response(method, timeout).map(|(_, r)| r)
    }

    /// ACKs a non-2xx final response to the initial INVITE (RFC 3261 17.1.1.3: same branch).
    pub fn ack_failure(&self, response: &rsip::Response) {
        let invite = self.invite.as_ref().expect("no INVITE sent");
        let mut ack = dialog::cancel(invite);
        ack.method = rsip::Method::Ack;
        let number = cseq(invite).map_or(1, |(n, _)| n);
        for header in ack.headers.iter_mut() {
            match header {
                rsip::Header::CSeq(_) => {
                    *header = rsip::Header::CSeq(format!("{number} ACK").into())
                }
                rsip::Header::To(_) => {
                    if let Some(to) = dialog::header_value(&response.headers, "To") {
                        *header = rsip::Header::To(to.into());
                    }
                }
                _ => {}
            }
        }
        self.send(&ack.to_string());
    }

    /// Waits for a response with `code` to our `method` (others skipped, requests kept).
    pub fn wait_response(
        &mut self,
        method: rsip::Method,
        code: u16,
        timeout: Duration,
    ) -> Option<rsip::Response> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.recv(left)? {
                SipMessage::Response(response)
                    if response.status_code.code() == code
                        && cseq(&response).map(|(_, m)| m) == Some(method) =>
                {
                    return Some(response);
                }
                SipMessage::Response(_) => {}
                SipMessage::Request(request) => self.pending.push_back(request),
            }
        }
    }

    /// Sends CANCEL for the initial INVITE.
    pub fn cancel(&self) {
        let invite = self.invite.as_ref().expect("no INVITE sent");
        self.send(&dialog::cancel(invite).to_string());
    }

    /// Sequence numbers of the RTP with `ssrc` that came back to this UA's media socket, until
    /// `want` of them or `timeout`.
    pub fn echoed(
        &self,
        ssrc: u32,
        want: u16,
        timeout: Duration,
    ) -> std::collections::BTreeSet<u16> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 2048];
        self.rtp
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        while seen.len() < usize::from(want) && std::time::Instant::now() < deadline {
            let Ok(len) = self.rtp.recv(&mut buf) else {
                continue;
            };
            if len >= 12 && buf[8..12] == ssrc.to_be_bytes() {
                seen.insert(u16::from_be_bytes([buf[2], buf[3]]));
            }
        }
        seen
    }

    /// Sends `count` 20 ms RTP packets (PCMU) from our RTP socket to `to`.
    pub fn send_rtp(&self, to: SocketAddr, count: u16, ssrc: u32) {
        for seq in 0..count {
            let mut packet = vec![0x80, 0x00];
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&[0xffu8; 160]);
            self.rtp.send_to(&packet, to).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// RTP packets received on our RTP socket within `timeout` (stops early at `want`).
    pub fn recv_rtp(&self, want: usize, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        let mut got = 0;
        self.rtp
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        while got < want && std::time::Instant::now() < deadline {
            if self.rtp.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    }
}

/// A called party that answers by hand: a carrier behind a trunk, or a Backend.
pub struct Uas {
    /// Its SIP and RTP sockets (requests it sends go to `uac.proxy`).
    pub uac: Uac,
}

impl Uas {
    /// A called party on `ip`; set `uac.proxy` to the proxy once it is known.
    pub fn new(ip: &str) -> Self {
        Self {
            uac: Uac::new(ip, "127.0.0.1:9".parse().unwrap()),
        }
    }

    /// The next INVITE (panics after 5 s).
    pub fn invite(&mut self) -> rsip::Request {
        self.uac
            .recv_request(rsip::Method::Invite, Duration::from_secs(5))
            .expect("no INVITE arrived")
    }

    /// Rings, answers with `codecs` on our RTP socket and waits for the ACK; returns the dialog.
    pub fn answer(&mut self, invite: &rsip::Request, codecs: Vec<Codec>) -> Dialog {
        let dialog = Dialog::incoming(invite, self.uac.local, "uas-tag".into(), "uas", "tests");
        self.uac
            .send(&dialog.response(invite, 180, None).to_string());
        let port = self.uac.rtp.local_addr().unwrap().port();
        let sdp = AudioSdp::offer(self.uac.local.ip(), port, codecs, 7).to_string();
        let ok = dialog.response(invite, 200, Some(sdp));
        self.uac.send(&ok.to_string());
        self.uac
            .recv_request(rsip::Method::Ack, Duration::from_secs(5))
            .expect("no ACK for the 200");
        dialog
    }

    /// Hangs up the dialog with BYE (its answer is not awaited).
    pub fn bye(&mut self, dialog: &mut Dialog) {
        let bye = dialog.bye(&mut self.uac.rng);
        self.uac.send(&bye.to_string());
    }
}

/// The SDP of a message body.
pub fn sdp_of(body: &[u8]) -> AudioSdp {
    let text = std::str::from_utf8(body).expect("SDP is UTF-8");
    AudioSdp::parse(text).unwrap_or_else(|e| panic!("bad SDP ({e}):\n{text}"))
}

/// The media address an SDP announces.
pub fn media_addr(sdp: &AudioSdp) -> SocketAddr {
    SocketAddr::new(sdp.connection, sdp.port)
}

/// The first value of header `name` in a response.
pub fn header(response: &rsip::Response, name: &str) -> Option<String> {
    dialog::header_value(&response.headers, name)
}

/// Whether `ip` is a loopback address (for readable asserts).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// The first value of header `name` in a request.
pub fn header_of(request: &rsip::Request, name: &str) -> Option<String> {
    dialog::header_value(&request.headers, name)
}
