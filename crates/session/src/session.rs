//! [`Session`]: the state machine of one B2BUA session.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_core::NodeId;
use voxgate_sip::dialog::{self, Dialog, uri_user};
use voxgate_sip::message::{self, new_tag, response_for};
use voxgate_sip::sdp::{AudioSdp, Codec};
use voxgate_sip::{Event, TransactionKey, Transport};

use crate::attempt::{Attempt, WIND_DOWN};
use crate::cause::{End, EndCause};
use crate::io::{CallerSpec, Dialled, Inbound, Input, MediaCommand, Output, Progress, Target};
use crate::leg::SipLeg;
use crate::media::{PeerMedia, SdpWriter, Side, first_codec_only, parse_sdp, peer_media};

/// Methods a session answers in a dialog, for `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO";

/// How a session behaves; the driver fills it from the node's configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The session id (also the SDP session id).
    pub id: u64,
    /// Our SIP address as peers see it (Via, Contact).
    pub sip_addr: SocketAddr,
    /// Our media address as peers see it.
    pub public_ip: IpAddr,
    /// The relay port of each side (caller, Backend).
    pub ports: [u16; 2],
    /// `User-Agent` and `Server`.
    pub user_agent: &'static str,
    /// A far INVITE with not even a provisional answer by then is given up (silent Backend).
    pub invite_timeout: Duration,
    /// A far INVITE still unanswered by then is cancelled and the caller told 408.
    pub ring_timeout: Duration,
    /// Far INVITEs tried before the caller is refused.
    pub max_attempts: u32,
    /// Cooldown of a Backend that answered 503 without Retry-After.
    pub default_cooldown: Duration,
    /// Cooldown of a silent Backend.
    pub silent_cooldown: Duration,
    /// Retry-After of this node's 503s.
    pub retry_after: Duration,
    /// Headers added to every far INVITE (name, value).
    pub far_headers: Vec<(String, String)>,
    /// Seed of the session's tags, branches and Call-IDs.
    pub seed: u64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the caller leg to come up (a dialled number, a WebRTC client).
    Setup,
    /// Waiting for [`Input::Target`].
    Picking,
    /// A far INVITE is out.
    Calling,
    /// Both legs up.
    Up,
    /// Ended; cancelled far INVITEs may still be followed.
    Ended,
}

/// The caller's side of the session.
#[derive(Debug)]
struct Caller<L> {
    /// Its SIP leg (`None` for a WebRTC client, and for a number not yet answered).
    leg: Option<SipLeg>,
    /// An inbound caller's INVITE while it awaits our final answer.
    invite: Option<(TransactionKey, rsip::Request)>,
    /// A dialled number's INVITE while it rings.
    dialling: Option<Attempt<L>>,
    /// How long a dialled number may ring.
    dial_ring: Duration,
    /// A WebRTC client.
    webrtc: bool,
    up: bool,
    /// The From and To users the far side sees.
    from_user: String,
    to_user: String,
    /// The host the caller dialled (kept for a trunk).
    request_host: String,
    max_forwards: Option<u32>,
}

/// An in-dialog request relayed from one side to the other, awaiting the far answer.
#[derive(Debug)]
struct Relayed {
    from: Side,
    key: TransactionKey,
    request: rsip::Request,
    /// The branch of our request on the other side.
    branch: String,
    since: Instant,
    /// The media of `from` before a re-INVITE re-pointed it, restored if it fails.
    restore: Option<PeerMedia>,
    /// A re-INVITE's offer, whose every section the answer answers.
    offer: Option<AudioSdp>,
}

/// One B2BUA session; `L` is the Backend lease type (dropped to release).
#[derive(Debug)]
pub struct Session<L> {
    config: SessionConfig,
    rng: SmallRng,
    sdp: SdpWriter,
    phase: Phase,
    caller: Caller<L>,
    /// What the far side is offered.
    offer: Option<AudioSdp>,
    /// The caller's rtcp-mux choice, kept in our answer.
    caller_mux: bool,
    /// An inbound caller's offer, whose every section our answer answers.
    caller_offer: Option<AudioSdp>,
    attempt: Option<Attempt<L>>,
    /// The far leg once it answered, with its lease.
    far: Option<(SipLeg, Option<L>)>,
    tried: Vec<NodeId>,
    attempts: u32,
    winding: Vec<Attempt<L>>,
    relayed: Vec<Relayed>,
    media: [Option<PeerMedia>; 2],
    /// A far re-INVITE answered here for a caller without SIP, awaiting the bridge's word.
    reoffer: Option<(TransactionKey, rsip::Request, AudioSdp)>,
    /// The inbound caller's INVITE transaction once answered (Timer L names it).
    caller_invite_key: Option<TransactionKey>,
    outputs: VecDeque<Output>,
    end: Option<End>,
}

impl<L> Session<L> {
    /// A new session for `caller`, started at `now`. Poll its outputs at once: an inbound
    /// caller's session asks for a Backend, a dialled one sends its INVITE.
    pub fn new(config: SessionConfig, caller: CallerSpec, now: Instant) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        let sdp = SdpWriter::new(config.public_ip, config.id, config.ports);
        let mut session = Self {
            rng,
            sdp,
            phase: Phase::Setup,
            caller: Caller {
                leg: None,
                invite: None,
                dialling: None,
                dial_ring: Duration::ZERO,
                webrtc: false,
                up: false,
                from_user: String::new(),
                to_user: String::new(),
                request_host: String::new(),
                max_forwards: None,
            },
            offer: None,
            caller_mux: false,
            caller_offer: None,
            attempt: None,
            far: None,
            tried: Vec::new(),
            attempts: 0,
            winding: Vec::new(),
            relayed: Vec::new(),
            media: [None, None],
            reoffer: None,
            caller_invite_key: None,
            outputs: VecDeque::new(),
            end: None,
            config,
        };
        match caller {
            CallerSpec::Inbound(inbound) => session.start_inbound(now, inbound),
            CallerSpec::Dialled(dialled) => session.start_dialled(now, dialled),
            CallerSpec::WebRtc(client) => {
                session.caller.webrtc = true;
                session.caller.from_user = client.from_user;
                session.caller.to_user = client.to_user;
                session.offer = Some(client.offer);
            }
        }
        session
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input<L>) {
        match input {
            Input::Sip(event) => self.on_sip(now, event),
            Input::Target(target) => self.on_target(now, target),
            Input::ReofferAnswer(codecs) => self.on_reoffer_answer(codecs),
            Input::ClientConnected => {
                if self.caller.webrtc && self.phase == Phase::Setup {
                    self.caller.up = true;
                    self.pick(now);
                }
            }
            Input::ClientGone(cause) => {
                if self.caller.webrtc {
                    self.end(now, cause, None, None, Some(Side::Caller));
                }
            }
            Input::MediaTimeout(_) => {
                if self.phase == Phase::Up {
                    self.end(now, EndCause::MediaTimeout, None, None, None);
                }
            }
            Input::MediaLost => {
                let refusal = Some((500, vec![warning("media relay unavailable")]));
                self.end(now, EndCause::MediaFailure, None, refusal, None);
            }
            Input::HangUp => self.end(now, EndCause::HungUp, None, Some((480, Vec::new())), None),
            Input::Shutdown => {
                let refusal = Some((503, vec![self.retry_after()]));
                self.end(now, EndCause::Shutdown, None, refusal, None);
            }
        }
    }

    /// Acts on every deadline up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Wound-down INVITEs that never finished are forgotten (and their leases released).
        self.winding
            .retain(|a| a.wind_down_deadline().is_none_or(|d| d > now));
        let stale: Vec<usize> = (0..self.relayed.len())
            .filter(|&i| self.relayed[i].since + WIND_DOWN <= now)
            .collect();
        for index in stale.into_iter().rev() {
            let relayed = self.relayed.remove(index);
            self.relayed_failed(relayed, 408);
        }
        if let Some(dialling) = &self.caller.dialling {
            if !dialling.provisional && dialling.sent + self.config.invite_timeout <= now {
                self.end(now, EndCause::Silent, None, None, None);
                return;
            }
            if dialling.sent + self.caller.dial_ring <= now {
                self.end(now, EndCause::RingTimeout, None, None, None);
                return;
            }
        }
        if let Some(attempt) = &self.attempt {
            if !attempt.provisional && attempt.sent + self.config.invite_timeout <= now {
                // Not even a 100 Trying: this Backend is not there (or too slow to count on).
                let mut attempt = self.attempt.take().expect("checked above");
                if let Some(backend) = attempt.backend.clone() {
                    let until = now + self.config.silent_cooldown;
                    self.outputs.push_back(Output::CoolDown { backend, until });
                }
                attempt.winding = Some(now);
                self.winding.push(attempt);
                self.pick(now);
            } else if attempt.sent + self.config.ring_timeout <= now {
                // RFC 3261 Timer C: the far side rang for too long.
                let refusal = Some((408, Vec::new()));
                self.end(now, EndCause::RingTimeout, Some(408), refusal, None);
            }
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for attempt in &self.winding {
            if let Some(deadline) = attempt.wind_down_deadline() {
                consider(deadline);
            }
        }
        for relayed in &self.relayed {
            consider(relayed.since + WIND_DOWN);
        }
        if let Some(dialling) = &self.caller.dialling {
            if !dialling.provisional {
                consider(dialling.sent + self.config.invite_timeout);
            }
            consider(dialling.sent + self.caller.dial_ring);
        }
        if let Some(attempt) = &self.attempt {
            if !attempt.provisional {
                consider(attempt.sent + self.config.invite_timeout);
            }
            consider(attempt.sent + self.config.ring_timeout);
        }
        next
    }

    /// The next output, if any; drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How the session ended, once it has.
    pub fn ended(&self) -> Option<End> {
        self.end
    }

    /// The session ended and has nothing left to follow: the driver may drop it.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Ended && self.winding.is_empty() && self.relayed.is_empty()
    }

    // ---- starting ----

    fn start_inbound(&mut self, now: Instant, inbound: Inbound) {
        let Inbound {
            key,
            source,
            transport,
            invite,
        } = inbound;
        let tag = new_tag(&mut self.rng);
        let mut dialog = Dialog::incoming(
            &invite,
            self.config.sip_addr,
            tag,
            "voxgate",
            self.config.user_agent,
        );
        if dialog.next_hop().is_none() {
            dialog.remote_target = format!("sip:{source}");
        }
        let mut leg = SipLeg::new(dialog, source);
        if transport == Transport::Tcp {
            // Requests go back on the caller's connection (RFC 5923 style reuse).
            leg.dialog.transport = "TCP";
            leg.sticky = true;
        }
        let from = dialog::header_value(&invite.headers, "From").unwrap_or_default();
        let from_uri = dialog::name_addr_uri(&from);
        let request_uri = invite.uri.to_string();
        self.caller.from_user = uri_user(&from_uri).unwrap_or("anonymous").to_owned();
        self.caller.to_user = uri_user(&request_uri).unwrap_or("voxgate").to_owned();
        self.caller.request_host = dialog::uri_host(&request_uri)
            .unwrap_or("invalid")
            .to_owned();
        self.caller.max_forwards = message::max_forwards(&invite);
        let offer = parse_sdp(&invite.body);
        self.caller.leg = Some(leg);
        self.caller.invite = Some((key, invite));
        let Some(offer) = offer else {
            let refusal = (
                488,
                vec![warning("no usable SDP offer (audio RTP/AVP expected)")],
            );
            self.end(now, EndCause::BadSdp, Some(488), Some(refusal), None);
            return;
        };
        if offer.is_secure() {
            // SRTP (SDES) is not carried yet: refuse rather than answer it in the clear.
            let refusal = (488, vec![warning("SRTP (RTP/SAVP) is not supported")]);
            self.end(now, EndCause::BadSdp, Some(488), Some(refusal), None);
            return;
        }
        self.caller_mux = offer.rtcp_mux;
        self.set_media(Side::Caller, peer_media(&offer));
        self.offer = Some(offer.clone());
        self.caller_offer = Some(offer);
        self.pick(now);
    }

    fn start_dialled(&mut self, now: Instant, dialled: Dialled) {
        let Dialled {
            address,
            from,
            to,
            host,
            ring_timeout,
        } = dialled;
        let public_ip = self.config.public_ip;
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            self.config.sip_addr,
            format!("sip:{from}@{public_ip}"),
            format!("sip:{to}@{host}"),
            self.config.user_agent,
        );
        dialog.local_contact = format!("sip:voxgate@{}", self.config.sip_addr);
        let codecs = vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)];
        let offer = AudioSdp::offer(public_ip, self.config.ports[0], codecs, self.config.id);
        let invite = dialog.invite(&mut self.rng, offer.to_string());
        // The Backend sees the dialled party calling the caller id, as for an inbound call.
        self.caller.from_user = to;
        self.caller.to_user = from;
        self.caller.request_host = host;
        self.caller.dial_ring = ring_timeout;
        self.outputs
            .push_back(Output::Listen(dialog.call_id.clone()));
        self.outputs.push_back(Output::Request {
            to: address,
            request: invite.clone(),
        });
        let leg = SipLeg::new(dialog, address);
        self.caller.dialling = Some(Attempt::new(leg, invite, None, None, now));
    }

    // ---- the far leg ----

    /// Asks for the next far target, or ends the session when the attempts are used up.
    fn pick(&mut self, now: Instant) {
        if self.attempts >= self.config.max_attempts.max(1) {
            let refusal = Some((503, vec![self.retry_after()]));
            self.end(now, EndCause::NoBackend, None, refusal, None);
            return;
        }
        self.phase = Phase::Picking;
        self.outputs.push_back(Output::Pick {
            tried: self.tried.clone(),
        });
    }

    fn on_target(&mut self, now: Instant, target: Option<Target<L>>) {
        if self.phase != Phase::Picking {
            // A late answer (the session ended meanwhile): its lease is dropped here.
            return;
        }
        let Some(target) = target else {
            let refusal = Some((503, vec![self.retry_after()]));
            self.end(now, EndCause::NoBackend, None, refusal, None);
            return;
        };
        self.attempts += 1;
        if let Some(id) = &target.backend {
            self.tried.push(id.clone());
        }
        let public_ip = self.config.public_ip;
        let host = target
            .host
            .clone()
            .unwrap_or_else(|| target.address.to_string());
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            self.config.sip_addr,
            format!("sip:{}@{public_ip}", self.caller.from_user),
            format!("sip:{}@{host}", self.caller.to_user),
            self.config.user_agent,
        );
        dialog.local_contact = format!("sip:voxgate@{}", self.config.sip_addr);
        let offer = self.offer.clone().unwrap_or_else(|| {
            AudioSdp::offer(public_ip, self.config.ports[1], Vec::new(), self.config.id)
        });
        let body = self.sdp.write(Side::Backend, &offer);
        let mut invite = dialog.invite(&mut self.rng, body);
        if let Some(max_forwards) = self.caller.max_forwards {
            invite
                .headers
                .retain(|h| !matches!(h, Header::MaxForwards(_)));
            invite.headers.push(Header::MaxForwards(
                max_forwards.saturating_sub(1).to_string().into(),
            ));
        }
        for (name, value) in &self.config.far_headers {
            invite
                .headers
                .push(Header::Other(name.clone(), value.clone()));
        }
        self.outputs
            .push_back(Output::Listen(dialog.call_id.clone()));
        self.outputs.push_back(Output::Progress(Progress::Calling {
            backend: target.backend.clone(),
            address: target.address,
            call_id: dialog.call_id.clone(),
        }));
        self.outputs.push_back(Output::Request {
            to: target.address,
            request: invite.clone(),
        });
        let leg = SipLeg::new(dialog, target.address);
        self.attempt = Some(Attempt::new(leg, invite, target.backend, target.lease, now));
        self.phase = Phase::Calling;
    }

    /// A response to the far INVITE now out.
    fn on_attempt_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        match code {
            100..=199 => {
                attempt.provisional = true;
                if code > 100 {
                    self.early_response(code, &response);
                }
            }
            200..=299 => {
                let mut attempt = self.attempt.take().expect("checked above");
                let cseq = attempt.cseq();
                let ack = attempt.leg.confirm(&mut self.rng, &response, cseq);
                self.outputs.push_back(Output::Stateless {
                    to: attempt.leg.hop(),
                    message: ack,
                });
                let lease = attempt.lease.take();
                self.far = Some((attempt.leg, lease));
                self.far_answered(now, &response);
            }
            503 => {
                let attempt = self.attempt.take().expect("checked above");
                if let Some(backend) = attempt.backend {
                    let cooldown = retry_after(&response).unwrap_or(self.config.default_cooldown);
                    self.outputs.push_back(Output::CoolDown {
                        backend,
                        until: now + cooldown,
                    });
                }
                self.pick(now);
            }
            408 | 500..=599 => {
                self.attempt = None;
                self.pick(now);
            }
            _ => {
                self.attempt = None;
                // Redirects would reveal the far side's contacts: the caller sees 480.
                let mapped = map_failure(code);
                self.end(
                    now,
                    EndCause::Rejected,
                    Some(code),
                    Some((mapped, Vec::new())),
                    None,
                );
            }
        }
    }

    /// Relays a 180/183 to an inbound caller, with early media rewritten to this node.
    fn early_response(&mut self, code: u16, response: &rsip::Response) {
        let sdp = parse_sdp(&response.body).map(|answer| {
            self.set_media(Side::Backend, peer_media(&answer));
            match &self.caller_offer {
                Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                None => self.sdp.write(Side::Caller, &answer),
            }
        });
        if let (Some((key, invite)), Some(leg)) = (&self.caller.invite, &self.caller.leg) {
            let reply = leg.dialog.response(invite, code, sdp);
            self.outputs.push_back(Output::Respond {
                key: key.clone(),
                response: reply,
            });
        }
    }

    /// The far side answered 2xx (already ACKed): connect the caller, or hang up if its SDP is
    /// unusable.
    fn far_answered(&mut self, now: Instant, response: &rsip::Response) {
        let answer = parse_sdp(&response.body).filter(|sdp| sdp.port != 0);
        let Some(mut answer) = answer else {
            let refusal = (502, vec![warning("backend answered without usable SDP")]);
            self.end(now, EndCause::BadSdp, Some(200), Some(refusal), None);
            return;
        };
        self.set_media(Side::Backend, peer_media(&answer));
        self.outputs.push_back(Output::Answered(answer.clone()));
        if let (Some((key, invite)), Some(leg)) = (self.caller.invite.take(), &self.caller.leg) {
            // We terminate rtcp-mux ourselves: accept it toward the caller whenever it offered
            // it, whatever the far side chose.
            answer.rtcp_mux = self.caller_mux;
            let body = match &self.caller_offer {
                Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                None => self.sdp.write(Side::Caller, &answer),
            };
            let ok = leg.dialog.response(&invite, 200, Some(body));
            // Keep the INVITE's key: a missing ACK (Timer L) names it.
            self.caller_invite_key = Some(key.clone());
            self.outputs
                .push_back(Output::Respond { key, response: ok });
        }
        self.caller.up = true;
        self.phase = Phase::Up;
        self.outputs.push_back(Output::Media(MediaCommand::Arm));
        self.outputs
            .push_back(Output::Progress(Progress::Connected));
    }

    // ---- SIP events ----

    fn on_sip(&mut self, now: Instant, event: Event) {
        match event {
            Event::Request { key, request, .. } => self.on_request(now, key, request),
            Event::Response { key, response } => self.on_response(now, &key, response),
            Event::Timeout { key } => self.on_timeout(now, &key),
            Event::AckTimeout { key }
                if self.caller_invite_key.as_ref() == Some(&key) && self.phase == Phase::Up =>
            {
                self.end(now, EndCause::AckTimeout, None, None, None);
            }
            _ => {}
        }
    }

    /// Which side a message of dialog `call_id` belongs to, if any live one.
    fn side_of(&self, call_id: &str) -> Option<Side> {
        let caller = self
            .caller
            .leg
            .as_ref()
            .map(|l| l.dialog.call_id.as_str())
            .or_else(|| {
                self.caller
                    .dialling
                    .as_ref()
                    .map(|a| a.leg.dialog.call_id.as_str())
            });
        if caller == Some(call_id) {
            return Some(Side::Caller);
        }
        let far = self
            .far
            .as_ref()
            .map(|(l, _)| l.dialog.call_id.as_str())
            .or_else(|| self.attempt.as_ref().map(|a| a.leg.dialog.call_id.as_str()));
        (far == Some(call_id)).then_some(Side::Backend)
    }

    fn on_request(&mut self, now: Instant, key: TransactionKey, request: rsip::Request) {
        let call_id = message::call_id(&request).unwrap_or_default().to_owned();
        let side = self.side_of(&call_id);
        let answered = |code: u16| Output::Respond {
            key: key.clone(),
            response: response_for(&request, code, None),
        };
        let Some(side) = side else {
            // A wound-down INVITE's dialog, or an ended session: nothing to talk about.
            self.outputs.push_back(answered(481));
            return;
        };
        // The caller's INVITE still awaits our answer: CANCEL, or BYE on the early dialog.
        if side == Side::Caller && self.caller.invite.is_some() {
            match request.method {
                Method::Cancel => {
                    self.outputs.push_back(answered(200));
                    let refusal = Some((487, Vec::new()));
                    self.end(now, EndCause::Cancelled, None, refusal, Some(Side::Caller));
                }
                Method::Bye if self.caller.leg.as_ref().is_some_and(|l| l.owns(&request)) => {
                    self.outputs.push_back(answered(200));
                    let refusal = Some((487, Vec::new()));
                    self.end(now, EndCause::Cancelled, None, refusal, Some(Side::Caller));
                }
                // A second INVITE of the same call on another branch: a loop or a fork.
                Method::Invite => self.outputs.push_back(answered(482)),
                _ => self.outputs.push_back(answered(481)),
            }
            return;
        }
        let leg = match side {
            Side::Caller => self.caller.leg.as_ref(),
            Side::Backend => self.far.as_ref().map(|(l, _)| l),
        };
        let Some(leg) = leg.filter(|l| l.owns(&request)) else {
            // Same Call-ID, other tags (a stray or a forged request), or no dialog yet.
            self.outputs.push_back(answered(481));
            return;
        };
        match request.method {
            Method::Bye => {
                let reply = leg.dialog.response(&request, 200, None);
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
                let cause = match side {
                    Side::Caller => EndCause::CallerBye,
                    Side::Backend => EndCause::BackendBye,
                };
                self.end(now, cause, None, None, Some(side));
            }
            Method::Invite | Method::Info if self.phase == Phase::Up => {
                self.relay_request(now, side, key, request);
            }
            Method::Options => {
                let reply = leg.dialog.response(&request, 200, None);
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            // A CANCEL after our final answer has nothing left to cancel (RFC 3261 9.2).
            Method::Cancel => self.outputs.push_back(answered(200)),
            Method::Invite | Method::Info => {
                // The far side is still being called: not yet (RFC 3261 14.2).
                let mut reply = leg.dialog.response(&request, 500, None);
                reply.headers.push(Header::RetryAfter("1".into()));
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            _ => {
                let mut reply = leg.dialog.response(&request, 405, None);
                reply.headers.push(Header::Allow(ALLOW.into()));
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
        }
    }

    fn on_response(&mut self, now: Instant, key: &TransactionKey, response: rsip::Response) {
        let branch = key.branch();
        if self.attempt.as_ref().is_some_and(|a| a.branch == branch) {
            self.on_attempt_response(now, response);
            return;
        }
        if self
            .caller
            .dialling
            .as_ref()
            .is_some_and(|a| a.branch == branch)
        {
            self.on_dialling_response(now, response);
            return;
        }
        if let Some(index) = self.winding.iter().position(|a| a.branch == branch) {
            self.on_winding_response(index, response);
            return;
        }
        if let Some(index) = self.relayed.iter().position(|r| r.branch == branch) {
            if response.status_code.code() >= 200 {
                let relayed = self.relayed.remove(index);
                self.relayed_answered(relayed, response);
            }
            return;
        }
        // A 2xx to an INVITE answered before: our ACK was lost, send it again.
        if dialog::is_invite_response(&response) && response.status_code.code() / 100 == 2 {
            let call_id = message::call_id(&response).unwrap_or_default();
            let cseq = message::cseq(&response).map(|(n, _)| n);
            for leg in [self.caller.leg.as_ref(), self.far.as_ref().map(|(l, _)| l)]
                .into_iter()
                .flatten()
            {
                let Some(ack) = &leg.ack else { continue };
                let acked = message::cseq(ack).map(|(n, _)| n);
                if leg.dialog.call_id == call_id && acked == cseq {
                    self.outputs.push_back(Output::Stateless {
                        to: leg.hop(),
                        message: ack.clone(),
                    });
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Instant, key: &TransactionKey) {
        let branch = key.branch();
        if self.attempt.as_ref().is_some_and(|a| a.branch == branch) {
            self.attempt = None;
            self.pick(now);
        } else if self
            .caller
            .dialling
            .as_ref()
            .is_some_and(|a| a.branch == branch)
        {
            self.caller.dialling = None;
            self.end(now, EndCause::Rejected, Some(408), None, None);
        } else if let Some(index) = self.winding.iter().position(|a| a.branch == branch) {
            self.winding.remove(index);
        } else if let Some(index) = self.relayed.iter().position(|r| r.branch == branch) {
            let relayed = self.relayed.remove(index);
            self.relayed_failed(relayed, 408);
        }
    }

    /// A response to the INVITE of a dialled number.
    fn on_dialling_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        match code {
            100..=199 => {
                if let Some(dialling) = self.caller.dialling.as_mut() {
                    dialling.provisional = true;
                }
            }
            200..=299 => {
                let Some(mut dialling) = self.caller.dialling.take() else {
                    return;
                };
                let cseq = dialling.cseq();
                let ack = dialling.leg.confirm(&mut self.rng, &response, cseq);
                self.outputs.push_back(Output::Stateless {
                    to: dialling.leg.hop(),
                    message: ack,
                });
                self.caller.leg = Some(dialling.leg);
                self.caller.up = true;
                let answer = parse_sdp(&response.body)
                    .filter(|sdp| sdp.port != 0)
                    .and_then(first_codec_only);
                let Some(answer) = answer else {
                    self.end(now, EndCause::BadSdp, Some(200), None, None);
                    return;
                };
                self.set_media(Side::Caller, peer_media(&answer));
                self.caller_mux = answer.rtcp_mux;
                self.offer = Some(answer);
                self.outputs.push_back(Output::Progress(Progress::Bridging));
                self.pick(now);
            }
            _ => {
                self.caller.dialling = None;
                self.end(now, EndCause::Rejected, Some(code), None, None);
            }
        }
    }

    /// A response to an INVITE being wound down: CANCEL it once it may be, hang up a 2xx that
    /// crossed the CANCEL, forget it on a final answer.
    fn on_winding_response(&mut self, index: usize, response: rsip::Response) {
        let code = response.status_code.code();
        let attempt = &mut self.winding[index];
        match code {
            100..=199 => {
                attempt.provisional = true;
                if let Some(cancel) = attempt.cancel() {
                    self.outputs.push_back(Output::Request {
                        to: attempt.leg.address,
                        request: cancel,
                    });
                }
            }
            200..=299 => {
                let mut attempt = self.winding.remove(index);
                let cseq = attempt.cseq();
                let ack = attempt.leg.confirm(&mut self.rng, &response, cseq);
                let hop = attempt.leg.hop();
                self.outputs.push_back(Output::Stateless {
                    to: hop,
                    message: ack,
                });
                let bye = attempt.leg.dialog.bye(&mut self.rng);
                self.outputs.push_back(Output::Request {
                    to: hop,
                    request: bye,
                });
            }
            // The transaction layer ACKs the 487 (or any other final answer).
            _ => {
                self.winding.remove(index);
            }
        }
    }

    // ---- in-dialog requests across the session ----

    /// Relays a re-INVITE or INFO from `from` to the other side.
    fn relay_request(
        &mut self,
        now: Instant,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
    ) {
        let to = from.other();
        if self.leg(to).is_none() {
            self.answer_locally(from, key, request);
            return;
        }
        let reinvite = request.method == Method::Invite;
        let respond = |session: &mut Self, code: u16, extra: Option<Header>| {
            if let Some(leg) = session.leg(from) {
                let mut reply = leg.dialog.response(&request, code, None);
                if let Some(header) = extra {
                    reply.headers.push(header);
                }
                session.outputs.push_back(Output::Respond {
                    key: key.clone(),
                    response: reply,
                });
            }
        };
        if reinvite
            && self
                .relayed
                .iter()
                .any(|r| r.request.method == Method::Invite)
        {
            // Glare (RFC 3261 14.1): one offer at a time across the session.
            respond(self, 491, None);
            return;
        }
        let (body, content_type, restore, offer) = if reinvite {
            let Some(offer) = parse_sdp(&request.body).filter(|o| !o.is_secure()) else {
                let refusal = warning("re-INVITE without a usable SDP offer");
                respond(self, 488, Some(refusal));
                return;
            };
            let restore = self.media[from.index()];
            self.set_media(from, peer_media(&offer));
            let body = self.sdp.write(to, &offer);
            let content_type = Some("application/sdp".to_owned());
            (Some(body.into_bytes()), content_type, restore, Some(offer))
        } else {
            let body = (!request.body.is_empty()).then(|| request.body.clone());
            let content_type = dialog::header_value(&request.headers, "Content-Type");
            (body, content_type, None, None)
        };
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.leg_mut(to) else {
            respond(self, 481, None);
            return;
        };
        let mut out = leg.dialog.request(&mut rng, request.method, None);
        if let Some(body) = body {
            let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
            message::set_body(&mut out, body, Some(&content_type));
        }
        let hop = leg.hop();
        let branch = message::top_branch(&out).unwrap_or_default();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: out,
        });
        self.relayed.push(Relayed {
            from,
            key,
            request,
            branch,
            since: now,
            restore,
            offer,
        });
    }

    /// An in-dialog request toward a side without SIP (a WebRTC client): INFO is taken, a
    /// re-INVITE is answered with what this node carries (the media bridge decides whether it
    /// can follow a new offer).
    fn answer_locally(&mut self, from: Side, key: TransactionKey, request: rsip::Request) {
        let Some(leg) = self.leg(from) else { return };
        if request.method != Method::Invite {
            let reply = leg.dialog.response(&request, 200, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
            return;
        }
        if request.body.is_empty() {
            // An offerless re-INVITE gets what is negotiated as the offer.
            let body = self.offer.clone().map(|sdp| self.sdp.write(from, &sdp));
            let reply = self
                .leg(from)
                .map(|leg| leg.dialog.response(&request, 200, body));
            if let Some(reply) = reply {
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            return;
        }
        let Some(offer) = parse_sdp(&request.body) else {
            let reply = leg.dialog.response(&request, 488, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
            return;
        };
        self.outputs.push_back(Output::Reoffer(offer.clone()));
        self.reoffer = Some((key, request, offer));
    }

    fn on_reoffer_answer(&mut self, codecs: Option<Vec<Codec>>) {
        let Some((key, request, offer)) = self.reoffer.take() else {
            return;
        };
        let (code, body) = match (codecs, self.offer.clone()) {
            (Some(codecs), Some(mut ours)) => {
                if offer.port != 0 {
                    self.set_media(Side::Backend, peer_media(&offer));
                }
                ours.codecs = codecs;
                ours.direction = offer.direction.mirrored();
                self.offer = Some(ours.clone());
                (200, Some(self.sdp.write(Side::Backend, &ours)))
            }
            _ => (488, None),
        };
        if let Some(leg) = self.leg(Side::Backend) {
            let reply = leg.dialog.response(&request, code, body);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
        }
    }

    /// The other side's final answer to a relayed request, mapped back.
    fn relayed_answered(&mut self, relayed: Relayed, response: rsip::Response) {
        let code = response.status_code.code();
        if code / 100 != 2 {
            self.relayed_failed(relayed, map_failure(code));
            return;
        }
        let to = relayed.from.other();
        if relayed.request.method != Method::Invite {
            self.respond_relayed(&relayed, 200, None);
            return;
        }
        let cseq = message::cseq(&response).map_or(1, |(n, _)| n);
        let mut rng = SmallRng::from_rng(&mut self.rng);
        if let Some(leg) = self.leg_mut(to) {
            let ack = leg.dialog.ack(&mut rng, cseq);
            leg.ack = Some(ack.clone());
            let hop = leg.hop();
            self.outputs.push_back(Output::Stateless {
                to: hop,
                message: ack,
            });
        }
        match parse_sdp(&response.body) {
            Some(answer) => {
                self.set_media(to, peer_media(&answer));
                let body = match &relayed.offer {
                    Some(offer) => self.sdp.write_answer(relayed.from, &answer, offer),
                    None => self.sdp.write(relayed.from, &answer),
                };
                self.respond_relayed(&relayed, 200, Some(body));
            }
            None => {
                if let Some(previous) = relayed.restore {
                    self.set_media(relayed.from, previous);
                }
                self.respond_relayed(&relayed, 488, None);
            }
        }
    }

    /// A relayed request failed with `code` (as the requester gets it): the media it re-pointed
    /// is restored.
    fn relayed_failed(&mut self, relayed: Relayed, code: u16) {
        if let Some(previous) = relayed.restore {
            self.set_media(relayed.from, previous);
        }
        self.respond_relayed(&relayed, code, None);
    }

    fn respond_relayed(&mut self, relayed: &Relayed, code: u16, sdp: Option<String>) {
        if let Some(leg) = self.leg(relayed.from) {
            let reply = leg.dialog.response(&relayed.request, code, sdp);
            self.outputs.push_back(Output::Respond {
                key: relayed.key.clone(),
                response: reply,
            });
        }
    }

    // ---- the end ----

    /// Ends the session with `cause`: an unanswered inbound caller gets `refusal` (else 500),
    /// every leg that is up and did not hang up itself (`gone`) gets a BYE, far INVITEs in
    /// flight are cancelled and followed to their end, relayed requests are answered 487.
    fn end(
        &mut self,
        now: Instant,
        cause: EndCause,
        code: Option<u16>,
        refusal: Option<(u16, Vec<Header>)>,
        gone: Option<Side>,
    ) {
        if self.phase == Phase::Ended {
            return;
        }
        let connected = self.phase == Phase::Up;
        let caller_up = self.caller.up;
        self.phase = Phase::Ended;
        for relayed in std::mem::take(&mut self.relayed) {
            if Some(relayed.from) != gone {
                self.respond_relayed(&relayed, 487, None);
            }
        }
        // Far INVITEs still out are cancelled (once provisional) and followed to their end.
        let pending = [self.attempt.take(), self.caller.dialling.take()];
        for mut attempt in pending.into_iter().flatten() {
            if let Some(cancel) = attempt.cancel() {
                self.outputs.push_back(Output::Request {
                    to: attempt.leg.address,
                    request: cancel,
                });
            }
            attempt.winding = Some(now);
            self.winding.push(attempt);
        }
        if let Some((key, invite)) = self.caller.invite.take() {
            let (status, extra) = refusal.unwrap_or((500, Vec::new()));
            if let Some(leg) = &self.caller.leg {
                let mut response = leg.dialog.response(&invite, status, None);
                response.headers.extend(extra);
                self.outputs.push_back(Output::Respond { key, response });
            }
        } else if caller_up && gone != Some(Side::Caller) {
            self.bye(Side::Caller);
        }
        if self.far.is_some() && gone != Some(Side::Backend) {
            self.bye(Side::Backend);
        }
        // The far dialog and its lease go now: nothing more will be said on it.
        self.far = None;
        let end = End {
            cause,
            code,
            caller_up,
            connected,
        };
        self.end = Some(end);
        self.outputs.push_back(Output::Ended(end));
    }

    fn bye(&mut self, side: Side) {
        let mut rng = SmallRng::from_rng(&mut self.rng);
        if let Some(leg) = self.leg_mut(side) {
            let bye = leg.dialog.bye(&mut rng);
            let hop = leg.hop();
            self.outputs.push_back(Output::Request {
                to: hop,
                request: bye,
            });
        }
    }

    // ---- helpers ----

    fn leg(&self, side: Side) -> Option<&SipLeg> {
        match side {
            Side::Caller => self.caller.leg.as_ref(),
            Side::Backend => self.far.as_ref().map(|(l, _)| l),
        }
    }

    fn leg_mut(&mut self, side: Side) -> Option<&mut SipLeg> {
        match side {
            Side::Caller => self.caller.leg.as_mut(),
            Side::Backend => self.far.as_mut().map(|(l, _)| l),
        }
    }

    fn set_media(&mut self, side: Side, media: PeerMedia) {
        self.media[side.index()] = Some(media);
        self.outputs
            .push_back(Output::Media(MediaCommand::Peer(side, media)));
    }

    fn retry_after(&self) -> Header {
        Header::RetryAfter(self.config.retry_after.as_secs().max(1).to_string().into())
    }
}

/// A failure code as the other side gets it: a 503 is never passed on (RFC 3261 16.7); it is
/// this node's to give, with its own Retry-After. Redirects would reveal the far side's
/// contacts.
fn map_failure(code: u16) -> u16 {
    match code {
        503 => 500,
        300..=399 => 480,
        other => other,
    }
}

/// Seconds of a response's Retry-After header.
fn retry_after(response: &rsip::Response) -> Option<Duration> {
    let value = dialog::header_value(&response.headers, "Retry-After")?;
    let secs: u64 = value.split([';', '(', ' ']).next()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A Warning header (RFC 3261 20.43) with our agent name.
fn warning(text: &str) -> Header {
    Header::Other("Warning".into(), format!("399 voxgate \"{text}\""))
}
