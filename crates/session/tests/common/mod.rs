//! Deterministic harness for session scenarios: one [`Session`] behind a real (sans-I/O)
//! `voxgate_sip::Transactions`, the caller and the Backends played as scripted user agents that
//! read what the proxy sent and answer with SIP bytes, and time that jumps to the next deadline.
//!
//! Like quinn-proto's `tests/util.rs`: no sockets, no tasks, no clock. The harness stands in for
//! the proxy's driver: it answers [`Output::Pick`] from a list of Backends, each target carrying
//! a [`Lease`] whose drop is counted, so a scenario can check that every lease came back.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::SipMessage;
use voxgate_core::NodeId;
use voxgate_session::{
    CallerSpec, Dialled, End, Inbound, Input, MediaCommand, Output, Progress, Session,
    SessionConfig, Side, Target, WebRtcCaller,
};
use voxgate_sip::dialog::Dialog;
use voxgate_sip::sdp::{AudioSdp, Codec};
use voxgate_sip::{Event, TimerConfig, Transactions, Transport};

pub const PROXY: &str = "127.0.0.1:5060";
pub const CALLER: &str = "127.0.0.10:5060";
pub const B1: &str = "127.0.0.21:5080";
pub const B2: &str = "127.0.0.22:5080";
pub const TRUNK: &str = "127.0.0.30:5060";
pub const TARGET: &str = "127.0.0.40:5060";

pub const INVITE_TIMEOUT: Duration = Duration::from_secs(2);
pub const RING_TIMEOUT: Duration = Duration::from_secs(120);

pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A Backend's share of its cap; the count of live ones is shared with the harness.
#[derive(Debug)]
pub struct Lease(Arc<AtomicUsize>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The session's configuration in scenarios.
pub fn config() -> SessionConfig {
    SessionConfig {
        id: 7,
        sip_addr: addr(PROXY),
        public_ip: "127.0.0.1".parse().unwrap(),
        ports: [30_000, 30_002],
        user_agent: "voxgate/test",
        invite_timeout: INVITE_TIMEOUT,
        ring_timeout: RING_TIMEOUT,
        max_attempts: 3,
        default_cooldown: Duration::from_secs(5),
        silent_cooldown: Duration::from_secs(10),
        retry_after: Duration::from_secs(4),
        session_expires: Duration::from_secs(1800),
        min_se: Duration::from_secs(90),
        far_headers: Vec::new(),
        transfer: voxgate_session::TransferMode::Bridge,
        trunk_credentials: None,
        identity: voxgate_session::IdentityPolicy::default(),
        seed: 42,
    }
}

/// An SDP offer or answer from `ip:port`, PCMU and telephone-event.
pub fn sdp(ip: &str, port: u16) -> String {
    let ip: IpAddr = ip.parse().unwrap();
    AudioSdp::offer(
        ip,
        port,
        vec![Codec::pcmu(), Codec::telephone_event(101)],
        1,
    )
    .to_string()
}

/// One SIP message on the wire: where it went and what it was.
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: SocketAddr,
    pub message: SipMessage,
}

impl Sent {
    pub fn request(&self) -> Option<&rsip::Request> {
        match &self.message {
            SipMessage::Request(r) => Some(r),
            SipMessage::Response(_) => None,
        }
    }

    pub fn response(&self) -> Option<&rsip::Response> {
        match &self.message {
            SipMessage::Response(r) => Some(r),
            SipMessage::Request(_) => None,
        }
    }
}

/// The session, the proxy's transaction layer and everything that came out of them.
pub struct Harness {
    pub now: Instant,
    tx: Transactions,
    pub session: Session<Lease>,
    live_leases: Arc<AtomicUsize>,
    /// Backends handed out on `Pick`, in order (the harness's "picker").
    pub backends: Vec<(NodeId, SocketAddr)>,
    /// Answer `Pick` with nothing (no eligible Backend).
    pub no_backends: bool,
    /// Every message the proxy sent, in order (retransmissions too).
    pub wire: Vec<Sent>,
    /// How many of `wire` each peer has read.
    read: std::collections::HashMap<SocketAddr, usize>,
    pub cooldowns: Vec<(NodeId, Instant)>,
    pub media: Vec<MediaCommand>,
    pub progress: Vec<Progress>,
    pub answered: Vec<AudioSdp>,
    /// Re-offers handed to the "media bridge", and whether it follows them.
    pub reoffers: Vec<AudioSdp>,
    pub bridge_follows: bool,
    pub picks: usize,
    pub ended: Option<End>,
    pub ended_at: Option<Instant>,
    pub listened: Vec<String>,
    /// Transfer targets asked for ([`Output::Transfer`]), in order.
    pub transfers: Vec<String>,
    /// Where a transfer target goes (with a lease of its own); `None`: nowhere, with
    /// `transfer_refusal` (404 unless set).
    pub transfer_to: Option<SocketAddr>,
    pub transfer_refusal: u16,
}

impl Harness {
    /// A session for `caller`, whose first message (an INVITE) the harness delivers.
    pub fn new(
        config: SessionConfig,
        caller: impl FnOnce(&mut Transactions, Instant) -> CallerSpec,
    ) -> Self {
        Self::with_backends(config, &[("b1", B1), ("b2", B2)], caller)
    }

    pub fn with_backends(
        config: SessionConfig,
        backends: &[(&str, &str)],
        caller: impl FnOnce(&mut Transactions, Instant) -> CallerSpec,
    ) -> Self {
        // A fixed origin: every scenario runs on the same virtual clock.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default());
        let spec = caller(&mut tx, now);
        let session = Session::new(config, spec, now);
        let mut harness = Self {
            now,
            tx,
            session,
            live_leases: Arc::new(AtomicUsize::new(0)),
            backends: backends
                .iter()
                .map(|(id, a)| (NodeId::new(id).unwrap(), addr(a)))
                .collect(),
            no_backends: false,
            wire: Vec::new(),
            read: Default::default(),
            cooldowns: Vec::new(),
            media: Vec::new(),
            progress: Vec::new(),
            answered: Vec::new(),
            reoffers: Vec::new(),
            bridge_follows: true,
            picks: 0,
            ended: None,
            ended_at: None,
            listened: Vec::new(),
            transfers: Vec::new(),
            transfer_to: Some(addr(TARGET)),
            transfer_refusal: 404,
        };
        harness.pump();
        harness
    }

    /// An inbound call: `invite` (SIP text from CALLER) through the transaction layer.
    pub fn inbound(
        invite: &rsip::Request,
    ) -> impl FnOnce(&mut Transactions, Instant) -> CallerSpec {
        let bytes = invite.to_string().into_bytes();
        move |tx, now| {
            tx.handle_datagram(now, addr(CALLER), Transport::Udp, &bytes)
                .unwrap();
            match tx.poll_event() {
                Some(Event::Request {
                    key,
                    source,
                    transport,
                    request,
                }) => CallerSpec::Inbound(Inbound {
                    key,
                    source,
                    transport,
                    invite: request,
                }),
                other => panic!("expected the INVITE, got {other:?}"),
            }
        }
    }

    /// An originated call to `to` through TRUNK.
    pub fn dialled(to: &str) -> impl FnOnce(&mut Transactions, Instant) -> CallerSpec {
        let to = to.to_owned();
        move |_, _| {
            CallerSpec::Dialled(Dialled {
                address: addr(TRUNK),
                from: "+15550000".into(),
                to,
                host: "pstn.test".into(),
                ring_timeout: Duration::from_secs(60),
            })
        }
    }

    /// A WebRTC client.
    pub fn webrtc() -> impl FnOnce(&mut Transactions, Instant) -> CallerSpec {
        |_, _| {
            let offer = AudioSdp::offer(
                "127.0.0.1".parse().unwrap(),
                30_002,
                vec![Codec::opus(111), Codec::pcmu(), Codec::pcma()],
                7,
            );
            CallerSpec::WebRtc(WebRtcCaller {
                offer,
                from_user: "webrtc".into(),
                to_user: "agent".into(),
            })
        }
    }

    /// Live Backend leases.
    pub fn leases(&self) -> usize {
        self.live_leases.load(Ordering::SeqCst)
    }

    /// Feeds an input and runs everything it causes.
    pub fn input(&mut self, input: Input<Lease>) {
        self.session.handle(self.now, input);
        self.pump();
    }

    /// An operator transfers the caller to `to`.
    pub fn transfer(&mut self, to: &str) -> Result<(), &'static str> {
        let result = self.session.transfer(to.to_owned());
        self.pump();
        result
    }

    /// An operator sends the caller an INFO with `body` of `content_type`.
    pub fn info_to_caller(&mut self, content_type: &str, body: &str) -> Result<(), &'static str> {
        let result = self
            .session
            .info_to_caller(content_type, body.as_bytes().to_vec());
        self.pump();
        result
    }

    /// A peer at `from` sends `message` to the proxy.
    pub fn deliver(&mut self, from: &str, message: impl Into<SipMessage>) {
        let bytes = message.into().to_string().into_bytes();
        self.tx
            .handle_datagram(self.now, addr(from), Transport::Udp, &bytes)
            .unwrap();
        self.pump();
    }

    /// Moves time forward by `by`, acting on every deadline on the way.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = [self.tx.poll_timeout(), self.session.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= until)
                .min();
            let Some(next) = next else { break };
            self.now = next.max(self.now);
            self.tx.handle_timeout(self.now);
            if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
                self.session.handle_timeout(self.now);
            }
            self.pump();
        }
        self.now = until;
    }

    /// Runs outputs and events until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            while let Some(output) = self.session.poll_output() {
                busy = true;
                self.apply(output);
            }
            while let Some(transmit) = self.tx.poll_transmit() {
                let message = voxgate_sip::parse(&transmit.payload).unwrap();
                self.wire.push(Sent {
                    to: transmit.destination,
                    message,
                });
            }
            while let Some(event) = self.tx.poll_event() {
                busy = true;
                self.session.handle(self.now, Input::Sip(event));
            }
            if !busy {
                break;
            }
        }
    }

    fn apply(&mut self, output: Output) {
        let now = self.now;
        match output {
            Output::Listen(call_id) => self.listened.push(call_id),
            Output::Request { to, request } => {
                self.tx
                    .send_request(now, to, Transport::Udp, request)
                    .unwrap();
            }
            Output::Respond { key, response } => {
                self.tx.send_response(now, &key, response).unwrap();
            }
            Output::Stateless { to, message } => {
                self.tx.send_stateless(to, Transport::Udp, message.into());
            }
            Output::Pick { tried } => {
                self.picks += 1;
                let next = if self.no_backends {
                    None
                } else {
                    self.backends
                        .iter()
                        .find(|(id, _)| !tried.contains(id))
                        .cloned()
                };
                let target = next.map(|(id, address)| {
                    self.live_leases.fetch_add(1, Ordering::SeqCst);
                    Target {
                        address,
                        backend: Some(id),
                        host: None,
                        lease: Some(Lease(self.live_leases.clone())),
                    }
                });
                self.session.handle(now, Input::Target(target));
            }
            Output::Transfer { to } => {
                self.transfers.push(to);
                let target = self
                    .transfer_to
                    .ok_or(self.transfer_refusal)
                    .map(|address| {
                        self.live_leases.fetch_add(1, Ordering::SeqCst);
                        Target {
                            address,
                            backend: None,
                            host: None,
                            lease: Some(Lease(self.live_leases.clone())),
                        }
                    });
                self.session.handle(now, Input::TransferTarget(target));
            }
            Output::CoolDown { backend, until } => self.cooldowns.push((backend, until)),
            Output::Media(command) => self.media.push(command),
            Output::Answered(sdp) => self.answered.push(sdp),
            Output::Progress(progress) => self.progress.push(progress),
            Output::Reoffer(offer) => {
                let codecs = self
                    .bridge_follows
                    .then(|| offer.codecs.iter().take(1).cloned().collect());
                self.reoffers.push(offer);
                self.session.handle(now, Input::ReofferAnswer(codecs));
            }
            Output::Ended(end) => {
                assert!(self.ended.is_none(), "ended twice");
                self.ended = Some(end);
                self.ended_at = Some(now);
            }
        }
    }

    /// What the proxy sent to `peer` since that peer last read.
    pub fn take(&mut self, peer: &str) -> Vec<Sent> {
        let peer = addr(peer);
        let start = self.read.get(&peer).copied().unwrap_or(0);
        self.read.insert(peer, self.wire.len());
        self.wire[start..]
            .iter()
            .filter(|s| s.to == peer)
            .cloned()
            .collect()
    }

    /// Runs the session to its finish (wind-downs included) and checks that every lease is back.
    pub fn assert_released(&mut self) {
        self.advance(Duration::from_secs(40));
        assert!(self.ended.is_some(), "the session did not end");
        assert!(self.session.is_finished(), "the session is not finished");
        assert_eq!(self.leases(), 0, "a Backend lease was not released");
    }

    /// The last media peer set for `side`.
    pub fn peer_of(&self, side: Side) -> Option<voxgate_session::PeerMedia> {
        self.media.iter().rev().find_map(|c| match c {
            MediaCommand::Peer(s, m) if *s == side => Some(*m),
            _ => None,
        })
    }
}

/// Requests of `method` among `sent`, retransmissions left out (one per branch).
pub fn requests(sent: &[Sent], method: rsip::Method) -> Vec<&rsip::Request> {
    let mut seen = std::collections::HashSet::new();
    sent.iter()
        .filter_map(Sent::request)
        .filter(|r| r.method == method)
        .filter(|r| seen.insert(voxgate_sip::message::top_branch(*r)))
        .collect()
}

/// The first response with status `code` among `sent`.
pub fn response(sent: &[Sent], code: u16) -> rsip::Response {
    sent.iter()
        .filter_map(Sent::response)
        .find(|r| r.status_code.code() == code)
        .unwrap_or_else(|| panic!("no {code} among {:?}", codes(sent)))
        .clone()
}

/// The first final response among `sent`.
pub fn final_response(sent: &[Sent]) -> rsip::Response {
    sent.iter()
        .filter_map(Sent::response)
        .find(|r| r.status_code.code() >= 200)
        .expect("a final response")
        .clone()
}

/// Status codes of the responses among `sent`, in order.
pub fn codes(sent: &[Sent]) -> Vec<u16> {
    sent.iter()
        .filter_map(Sent::response)
        .map(|r| r.status_code.code())
        .collect()
}

/// A user agent played by a test: its dialog with the proxy.
pub struct Ua {
    pub addr: &'static str,
    pub dialog: Dialog,
    pub rng: SmallRng,
    /// The INVITE this UA sent (caller) or received (Backend).
    pub invite: Option<rsip::Request>,
}

impl Ua {
    /// A caller with an INVITE carrying an SDP offer from `media_port`.
    pub fn caller(media_port: u16) -> (Self, rsip::Request) {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut dialog = Dialog::outgoing(
            &mut rng,
            addr(CALLER),
            "sip:+15551230000@127.0.0.10".into(),
            format!("sip:+15557654321@{PROXY}"),
            "caller/test",
        );
        dialog.remote_target = format!("sip:+15557654321@{PROXY}");
        let invite = dialog.invite(&mut rng, sdp("127.0.0.10", media_port));
        let ua = Self {
            addr: CALLER,
            dialog,
            rng,
            invite: Some(invite.clone()),
        };
        (ua, invite)
    }

    /// A Backend (or trunk) at `addr` that received `invite`.
    pub fn callee(at: &'static str, invite: &rsip::Request) -> Self {
        let mut rng = SmallRng::seed_from_u64(2);
        let tag = voxgate_sip::message::new_tag(&mut rng);
        let dialog = Dialog::incoming(invite, addr(at), tag, "agent", "agent/test");
        Self {
            addr: at,
            dialog,
            rng,
            invite: Some(invite.clone()),
        }
    }

    /// This callee's answer to its INVITE.
    pub fn answer(&self, code: u16, sdp: Option<String>) -> rsip::Response {
        self.dialog
            .response(self.invite.as_ref().unwrap(), code, sdp)
    }

    /// A response to `request` (an in-dialog request the proxy sent this UA).
    pub fn reply(&self, request: &rsip::Request, code: u16, sdp: Option<String>) -> rsip::Response {
        self.dialog.response(request, code, sdp)
    }

    /// The caller learns the proxy's tag and Contact from its 2xx.
    pub fn confirm(&mut self, response: &rsip::Response) {
        self.dialog.confirm(response);
    }

    /// The caller's ACK for a 2xx.
    pub fn ack(&mut self) -> rsip::Request {
        let cseq = voxgate_sip::message::cseq(self.invite.as_ref().unwrap()).map_or(1, |(n, _)| n);
        self.dialog.ack(&mut self.rng, cseq)
    }

    /// A new in-dialog request.
    pub fn request(&mut self, method: rsip::Method, sdp: Option<String>) -> rsip::Request {
        self.dialog.request(&mut self.rng, method, sdp)
    }

    /// The CANCEL of this caller's INVITE.
    pub fn cancel(&self) -> rsip::Request {
        voxgate_sip::dialog::cancel(self.invite.as_ref().unwrap())
    }
}

/// Sets up an inbound call answered by B1: returns the harness, the caller and the Backend.
pub fn connected_call() -> (Harness, Ua, Ua) {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let sent = h.take(B1);
    let invites = requests(&sent, rsip::Method::Invite);
    let backend = Ua::callee(B1, invites[0]);
    h.deliver(B1, backend.answer(180, None));
    h.deliver(B1, backend.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let sent = h.take(CALLER);
    let ok = sent
        .iter()
        .filter_map(Sent::response)
        .find(|r| r.status_code.code() == 200)
        .expect("the caller got 200")
        .clone();
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);
    (h, caller, backend)
}
