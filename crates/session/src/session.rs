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
use crate::reliable::{self, ReliableProvisionals};
use crate::timer::{self, LegTimer, Refresher};

/// Methods a session answers in a dialog, for `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK";

/// Extensions a session supports, for `Supported` (RFC 3262 reliable provisionals, RFC 4028
/// session timers).
pub const SUPPORTED: &str = "100rel, timer";

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
    /// The session interval this node asks for on the far leg and grants a caller that asks
    /// for none (RFC 4028).
    pub session_expires: Duration,
    /// The smallest session interval accepted (a caller asking for less gets 422).
    pub min_se: Duration,
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

/// A 2xx to an offerless INVITE, answered with an offer whose answer comes in the other side's
/// ACK: our ACK to `to` waits for it (RFC 3264 late offer, passed through).
#[derive(Debug)]
struct HeldAck {
    /// The side we owe the ACK.
    to: Side,
    /// CSeq of our INVITE on `to`.
    cseq: u32,
    /// CSeq of the other side's INVITE, whose ACK carries the answer.
    from_cseq: u32,
    /// The offer `to` made in its 2xx.
    offer: AudioSdp,
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
    /// The caller required reliable provisionals (RFC 3262).
    caller_rel: Option<ReliableProvisionals>,
    /// The caller's session timer once answered: interval, refresher, `Require: timer`.
    caller_timer: Option<(Duration, Refresher, bool)>,
    /// Session timers (RFC 4028) per side.
    timers: [Option<LegTimer>; 2],
    /// Each side allows UPDATE (its refreshes use it rather than re-INVITE).
    updates: [bool; 2],
    /// The caller sent no offer: the far side's offer comes in its 2xx.
    late: bool,
    held_ack: Option<HeldAck>,
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
            caller_rel: None,
            caller_timer: None,
            timers: [None, None],
            updates: [false, false],
            late: false,
            held_ack: None,
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
        self.retransmit_reliable(now);
        for side in [Side::Caller, Side::Backend] {
            self.session_timer_due(side, now);
        }
        if self.phase == Phase::Ended && self.end.is_some() {
            self.winding
                .retain(|a| a.wind_down_deadline().is_none_or(|d| d > now));
            return;
        }
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
        if self.phase != Phase::Ended {
            if let Some(deadline) = self.caller_rel.as_ref().and_then(|r| r.deadline()) {
                consider(deadline);
            }
            for timer in self.timers.iter().flatten() {
                if let Some(deadline) = timer.deadline() {
                    consider(deadline);
                }
            }
        }
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
        self.updates[Side::Caller.index()] = timer::allows(&invite.headers, "UPDATE");
        if timer::has_option(&invite.headers, "Require", "100rel") {
            let first = rand::Rng::random_range(&mut self.rng, 1..1u32 << 30);
            self.caller_rel = Some(ReliableProvisionals::new(first));
        }
        let late = invite.body.is_empty();
        let offer = parse_sdp(&invite.body);
        let timer = self.caller_session_timer(&invite.headers);
        self.caller.leg = Some(leg);
        self.caller.invite = Some((key, invite));
        let timer = match timer {
            Ok(timer) => timer,
            Err(too_small) => {
                // RFC 4028 6: the interval asked for is below ours.
                let min_se = Header::Other("Min-SE".into(), too_small.to_string());
                let refusal = (422, vec![min_se]);
                self.end(now, EndCause::Rejected, Some(422), Some(refusal), None);
                return;
            }
        };
        self.caller_timer = timer;
        if late {
            // Late offer (RFC 3264): the far side is asked for the offer, passed through.
            self.late = true;
            self.pick(now);
            return;
        }
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

    /// The session timer an inbound caller gets (RFC 4028): `None` if it does not use them,
    /// `Err(min_se)` if it asked for less than `min_se` seconds.
    fn caller_session_timer(
        &self,
        headers: &rsip::Headers,
    ) -> Result<Option<(Duration, Refresher, bool)>, u64> {
        let supported = timer::has_option(headers, "Supported", "timer");
        let asked = timer::session_expires(headers);
        let min_se = self.config.min_se.as_secs().max(1);
        if asked.is_none() && !supported {
            return Ok(None);
        }
        let (secs, refresher) = match asked {
            Some((secs, _)) if secs < min_se => return Err(min_se),
            Some((secs, refresher)) => (secs, refresher),
            None => (self.config.session_expires.as_secs().max(min_se), None),
        };
        // The caller refreshes only when it says so and can say so; else this node does.
        let refresher = match refresher.as_deref() {
            Some("uac") if supported => Refresher::Peer,
            _ => Refresher::Us,
        };
        Ok(Some((Duration::from_secs(secs), refresher, supported)))
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
        let session_expires = self.config.session_expires.as_secs().max(1);
        let invite = self.far_invite(&mut dialog, session_expires);
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

    /// The far INVITE on `dialog`: our offer (none for a late-offer caller), the caller's
    /// Max-Forwards less one, our extensions and session interval, the configured headers.
    fn far_invite(&mut self, dialog: &mut Dialog, session_expires: u64) -> rsip::Request {
        let mut invite = match self.offer.clone() {
            Some(offer) => {
                let body = self.sdp.write(Side::Backend, &offer);
                dialog.invite(&mut self.rng, body)
            }
            None => dialog.request(&mut self.rng, Method::Invite, None),
        };
        if let Some(max_forwards) = self.caller.max_forwards {
            invite
                .headers
                .retain(|h| !matches!(h, Header::MaxForwards(_)));
            invite.headers.push(Header::MaxForwards(
                max_forwards.saturating_sub(1).to_string().into(),
            ));
        }
        let min_se = self.config.min_se.as_secs().max(1);
        invite.headers.push(Header::Allow(ALLOW.into()));
        invite.headers.push(Header::Supported(SUPPORTED.into()));
        invite.headers.push(Header::Other(
            "Session-Expires".into(),
            format!("{session_expires};refresher=uac"),
        ));
        invite
            .headers
            .push(Header::Other("Min-SE".into(), min_se.to_string()));
        for (name, value) in &self.config.far_headers {
            invite
                .headers
                .push(Header::Other(name.clone(), value.clone()));
        }
        invite
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
                if code > 100 && message::to_tag(&response).is_some() {
                    // An early dialog: PRACK and UPDATE go in it.
                    attempt.leg.dialog.confirm(&response);
                }
                self.prack_if_reliable(&response);
                if code > 100 {
                    self.early_response(now, code, &response);
                }
            }
            200..=299 => {
                let mut attempt = self.attempt.take().expect("checked above");
                let cseq = attempt.cseq();
                let offer = self.late.then(|| parse_sdp(&response.body)).flatten();
                if self.late && offer.is_some() {
                    // The ACK carries the caller's answer: it waits for the caller's ACK.
                    attempt.leg.dialog.confirm(&response);
                } else {
                    let ack = attempt.leg.confirm(&mut self.rng, &response, cseq);
                    self.outputs.push_back(Output::Stateless {
                        to: attempt.leg.hop(),
                        message: ack,
                    });
                }
                self.updates[Side::Backend.index()] = timer::allows(&response.headers, "UPDATE");
                if let Some((secs, refresher)) = timer::session_expires(&response.headers) {
                    // Its 2xx sets the interval; "uac" (or none) is us (RFC 4028 7.2).
                    let refresher = match refresher.as_deref() {
                        Some("uas") => Refresher::Peer,
                        _ => Refresher::Us,
                    };
                    let interval = Duration::from_secs(secs.max(1));
                    self.timers[Side::Backend.index()] =
                        Some(LegTimer::new(interval, refresher, now));
                }
                let lease = attempt.lease.take();
                self.far = Some((attempt.leg, lease));
                match offer {
                    Some(offer) => self.far_offered(now, cseq, offer),
                    None => self.far_answered(now, &response),
                }
            }
            422 => {
                // RFC 4028 6: ask again with the far side's Min-SE.
                let mut attempt = self.attempt.take().expect("checked above");
                let ours = self.config.session_expires.as_secs().max(1);
                let asked = timer::min_se(&response.headers).unwrap_or(ours).max(ours);
                if asked == ours || asked > 86_400 {
                    self.pick(now);
                    return;
                }
                let invite = self.far_invite(&mut attempt.leg.dialog, asked);
                self.outputs.push_back(Output::Request {
                    to: attempt.leg.address,
                    request: invite.clone(),
                });
                let retry = Attempt::new(attempt.leg, invite, attempt.backend, attempt.lease, now);
                self.attempt = Some(retry);
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

    /// PRACKs a reliable provisional of the far INVITE (RFC 3262), once per RSeq.
    fn prack_if_reliable(&mut self, response: &rsip::Response) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        let reliable = timer::has_option(&response.headers, "Require", "100rel");
        let Some(rseq) = reliable.then(|| reliable::rseq(response)).flatten() else {
            return;
        };
        if attempt.last_rseq.is_some_and(|last| rseq <= last) {
            return;
        }
        attempt.last_rseq = Some(rseq);
        let cseq = attempt.cseq();
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let mut prack = attempt.leg.dialog.request(&mut rng, Method::PRack, None);
        prack.headers.push(Header::Other(
            "RAck".into(),
            format!("{rseq} {cseq} INVITE"),
        ));
        self.outputs.push_back(Output::Request {
            to: attempt.leg.hop(),
            request: prack,
        });
    }

    /// The far side answered a late-offer INVITE with its offer: the caller gets it in our
    /// 200, and its answer (in its ACK) goes in our ACK.
    fn far_offered(&mut self, now: Instant, cseq: u32, offer: AudioSdp) {
        self.set_media(Side::Backend, peer_media(&offer));
        self.caller_mux = offer.rtcp_mux;
        let body = self.sdp.write(Side::Caller, &offer);
        let from_cseq = self
            .caller
            .invite
            .as_ref()
            .and_then(|(_, invite)| message::cseq(invite))
            .map_or(1, |(n, _)| n);
        self.held_ack = Some(HeldAck {
            to: Side::Backend,
            cseq,
            from_cseq,
            offer,
        });
        self.answer_caller(now, body);
        self.caller.up = true;
        self.phase = Phase::Up;
        self.outputs
            .push_back(Output::Progress(Progress::Connected));
    }

    /// Sends our 200 (with `body`) to an inbound caller's INVITE, with its session timer.
    fn answer_caller(&mut self, now: Instant, body: String) {
        let Some((key, invite)) = self.caller.invite.take() else {
            return;
        };
        let Some(leg) = &self.caller.leg else { return };
        let mut ok = leg.dialog.response(&invite, 200, Some(body));
        ok.headers.push(Header::Allow(ALLOW.into()));
        ok.headers.push(Header::Supported(SUPPORTED.into()));
        if let Some((interval, refresher, require)) = self.caller_timer {
            let timer = LegTimer::new(interval, refresher, now);
            ok.headers
                .push(Header::Other("Session-Expires".into(), timer.header(false)));
            if require {
                ok.headers.push(Header::Require("timer".into()));
            }
            self.timers[Side::Caller.index()] = Some(timer);
        }
        // Keep the INVITE's key: a missing ACK (Timer L) names it.
        self.caller_invite_key = Some(key.clone());
        if let Some(rel) = self.caller_rel.as_mut() {
            // Nothing more goes out reliably once the final answer is sent.
            rel.pending = None;
            rel.queued = None;
        }
        self.outputs
            .push_back(Output::Respond { key, response: ok });
    }

    /// Relays a 180/183 to an inbound caller, with early media rewritten to this node.
    fn early_response(&mut self, now: Instant, code: u16, response: &rsip::Response) {
        // A late-offer caller has made no offer to answer: ringing only.
        let sdp = parse_sdp(&response.body)
            .filter(|_| !self.late)
            .map(|answer| {
                self.set_media(Side::Backend, peer_media(&answer));
                match &self.caller_offer {
                    Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                    None => self.sdp.write(Side::Caller, &answer),
                }
            });
        let (Some((key, invite)), Some(leg)) = (&self.caller.invite, &self.caller.leg) else {
            return;
        };
        let key = key.clone();
        let mut reply = leg.dialog.response(invite, code, sdp);
        reply.headers.push(Header::Allow(ALLOW.into()));
        let reply = match self.caller_rel.as_mut() {
            // The caller required reliable provisionals: sent one at a time until PRACKed.
            Some(rel) => rel.send(reply, now),
            None => Some(reply),
        };
        if let Some(response) = reply {
            self.outputs.push_back(Output::Respond { key, response });
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
        if self.caller.invite.is_some() {
            // We terminate rtcp-mux ourselves: accept it toward the caller whenever it offered
            // it, whatever the far side chose.
            answer.rtcp_mux = self.caller_mux;
            let body = match &self.caller_offer {
                Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                None => self.sdp.write(Side::Caller, &answer),
            };
            self.answer_caller(now, body);
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
            Event::Ack { request, .. } => self.on_ack(now, &request),
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
        // RFC 3261 8.2 (483, 416, 420, 415, 406) in dialogs too; CANCEL passes.
        if let Err(refusal) = voxgate_sip::validate::request(&request) {
            let mut response = response_for(&request, refusal.code(), None);
            response.headers.extend(refusal.headers());
            self.outputs.push_back(Output::Respond { key, response });
            return;
        }
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
                Method::PRack if self.caller.leg.as_ref().is_some_and(|l| l.owns(&request)) => {
                    self.on_prack(now, key, &request);
                }
                Method::Update if self.caller.leg.as_ref().is_some_and(|l| l.owns(&request)) => {
                    if self.leg(Side::Backend).is_some() {
                        self.relay_request(now, side, key, request);
                    } else {
                        // No early dialog with the far side yet to carry it (RFC 3311 5.1).
                        let mut reply = response_for(&request, 500, None);
                        reply.headers.push(Header::RetryAfter("1".into()));
                        self.outputs.push_back(Output::Respond {
                            key,
                            response: reply,
                        });
                    }
                }
                // A second INVITE of the same call on another branch: a loop or a fork.
                Method::Invite => self.outputs.push_back(answered(482)),
                _ => self.outputs.push_back(answered(481)),
            }
            return;
        }
        let Some(leg) = self.leg(side).filter(|l| l.owns(&request)) else {
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
            Method::Invite | Method::Info | Method::Update if self.phase == Phase::Up => {
                self.relay_request(now, side, key, request);
            }
            // UPDATE in the early dialogs (RFC 3311): both exist, or the request could not
            // have reached us on this one.
            Method::Update if self.phase == Phase::Calling && self.caller.leg.is_some() => {
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
            Method::Invite | Method::Info | Method::Update => {
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

    /// A PRACK of the caller for one of our reliable provisionals (RFC 3262 3).
    fn on_prack(&mut self, now: Instant, key: TransactionKey, request: &rsip::Request) {
        let acked = match (self.caller_rel.as_mut(), reliable::rack(request)) {
            (Some(rel), Some((rseq, _))) => rel.prack(rseq, now),
            _ => (false, None),
        };
        let code = if acked.0 { 200 } else { 481 };
        if let Some(leg) = &self.caller.leg {
            let reply = leg.dialog.response(request, code, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
        }
        if let (Some(next), Some((invite_key, _))) = (acked.1, &self.caller.invite) {
            self.outputs.push_back(Output::Respond {
                key: invite_key.clone(),
                response: next,
            });
        }
    }

    /// An ACK for a 2xx of ours: a held ACK of the other side goes out with the answer it
    /// carries (late offer).
    fn on_ack(&mut self, now: Instant, request: &rsip::Request) {
        let call_id = message::call_id(request).unwrap_or_default();
        let Some(side) = self.side_of(call_id) else {
            return;
        };
        let cseq = message::cseq(request).map(|(n, _)| n);
        let held = self
            .held_ack
            .as_ref()
            .is_some_and(|h| h.to == side.other() && Some(h.from_cseq) == cseq);
        if !held {
            return;
        }
        let Some(held) = self.held_ack.take() else {
            return;
        };
        let answer = parse_sdp(&request.body).filter(|a| a.port != 0 && !a.is_secure());
        if let Some(answer) = &answer {
            self.set_media(side, peer_media(answer));
        }
        let body = answer
            .as_ref()
            .map(|answer| self.sdp.write_answer(held.to, answer, &held.offer));
        let mut rng = SmallRng::from_rng(&mut self.rng);
        if let Some(leg) = self.leg_mut(held.to) {
            let mut ack = leg.dialog.ack(&mut rng, held.cseq);
            if let Some(body) = body {
                message::set_body(&mut ack, body.into_bytes(), Some("application/sdp"));
            }
            leg.ack = Some(ack.clone());
            let hop = leg.hop();
            self.outputs.push_back(Output::Stateless {
                to: hop,
                message: ack,
            });
        }
        if answer.is_none() {
            // An offer left unanswered fails the session (RFC 3264 5).
            self.end(now, EndCause::BadSdp, None, None, None);
            return;
        }
        if side == Side::Caller && self.caller_offer.is_none() {
            // The first exchange of a late-offer call: media flows from now on.
            self.outputs.push_back(Output::Media(MediaCommand::Arm));
        }
    }

    fn on_response(&mut self, now: Instant, key: &TransactionKey, response: rsip::Response) {
        // A CANCEL shares its INVITE's branch (RFC 3261 9.1): its answer says nothing about the
        // INVITE, whose own final answer follows.
        if key.method() == "CANCEL" {
            return;
        }
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
        if let Some(side) = self.refreshing_side(branch) {
            self.on_refresh_response(now, side, &response);
            return;
        }
        if let Some(index) = self.relayed.iter().position(|r| r.branch == branch) {
            if response.status_code.code() >= 200 {
                let relayed = self.relayed.remove(index);
                self.relayed_answered(now, relayed, response);
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
        } else if self.refreshing_side(branch).is_some() {
            self.end(now, EndCause::SessionExpired, None, None, None);
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

    /// Relays a re-INVITE, UPDATE or INFO from `from` to the other side. An offer in it is
    /// rewritten and re-points `from`'s media (restored if the other side refuses); an
    /// offerless re-INVITE is relayed offerless (the offer comes back in the 2xx, the answer in
    /// the ACK); an UPDATE without an offer is a session refresh, answered here.
    fn relay_request(
        &mut self,
        now: Instant,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
    ) {
        let to = from.other();
        let refresh = request.method == Method::Update && request.body.is_empty();
        if self.leg(to).is_none() && !refresh {
            self.answer_locally(from, key, request);
            return;
        }
        let method = request.method;
        let carries_offer = matches!(method, Method::Invite | Method::Update);
        let respond = |session: &mut Self, code: u16, extra: Vec<Header>| {
            if let Some(leg) = session.leg(from) {
                let mut reply = leg.dialog.response(&request, code, None);
                reply.headers.extend(extra);
                session.outputs.push_back(Output::Respond {
                    key: key.clone(),
                    response: reply,
                });
            }
        };
        if method == Method::Update && request.body.is_empty() {
            // A session refresh (RFC 4028 9): answered here, for this leg only.
            let extra = self.refreshed(from, now);
            respond(self, 200, extra);
            return;
        }
        let offer_in_flight = self.held_ack.is_some()
            || self
                .relayed
                .iter()
                .any(|r| matches!(r.request.method, Method::Invite | Method::Update));
        if carries_offer && offer_in_flight {
            // Glare (RFC 3261 14.1, RFC 3311 5.2): one offer at a time across the session.
            respond(self, 491, Vec::new());
            return;
        }
        let (body, content_type, restore, offer) = if carries_offer && !request.body.is_empty() {
            let Some(offer) = parse_sdp(&request.body).filter(|o| !o.is_secure()) else {
                let refusal = warning("no usable SDP offer");
                respond(self, 488, vec![refusal]);
                return;
            };
            let restore = self.media[from.index()];
            self.set_media(from, peer_media(&offer));
            let body = self.sdp.write(to, &offer);
            let content_type = Some("application/sdp".to_owned());
            (Some(body.into_bytes()), content_type, restore, Some(offer))
        } else if carries_offer {
            (None, None, None, None)
        } else {
            let body = (!request.body.is_empty()).then(|| request.body.clone());
            let content_type = dialog::header_value(&request.headers, "Content-Type");
            (body, content_type, None, None)
        };
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.leg_mut(to) else {
            respond(self, 481, Vec::new());
            return;
        };
        let mut out = leg.dialog.request(&mut rng, method, None);
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

    /// A refresh of `side`'s session succeeded at `now`; the `Session-Expires` (and `Require`)
    /// its answer carries, if that leg has a timer.
    fn refreshed(&mut self, side: Side, now: Instant) -> Vec<Header> {
        let Some(timer) = self.timers[side.index()].as_mut() else {
            return Vec::new();
        };
        timer.refreshed(now);
        let we_are_uac = side == Side::Backend;
        let mut extra = vec![Header::Other(
            "Session-Expires".into(),
            timer.header(we_are_uac),
        )];
        if !we_are_uac && self.caller_timer.is_some_and(|(_, _, require)| require) {
            extra.push(Header::Require("timer".into()));
        }
        extra
    }

    /// An in-dialog request toward a side without SIP (a WebRTC client): INFO is taken, a
    /// re-INVITE is answered with what this node carries (the media bridge decides whether it
    /// can follow a new offer).
    fn answer_locally(&mut self, from: Side, key: TransactionKey, request: rsip::Request) {
        let Some(leg) = self.leg(from) else { return };
        if !matches!(request.method, Method::Invite | Method::Update) {
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
    fn relayed_answered(&mut self, now: Instant, relayed: Relayed, response: rsip::Response) {
        let code = response.status_code.code();
        if code / 100 != 2 {
            self.relayed_failed(relayed, map_failure(code));
            return;
        }
        let to = relayed.from.other();
        let method = relayed.request.method;
        if !matches!(method, Method::Invite | Method::Update) {
            self.respond_relayed(&relayed, 200, None);
            return;
        }
        // A successful re-INVITE or UPDATE refreshes both legs' sessions.
        self.refreshed(to, now);
        let extra = self.refreshed(relayed.from, now);
        let cseq = message::cseq(&response).map_or(1, |(n, _)| n);
        let sdp = parse_sdp(&response.body).filter(|sdp| !sdp.is_secure());
        if method == Method::Invite && relayed.offer.is_none() {
            // An offerless re-INVITE: `to` offered in its 2xx; `from`'s ACK brings the answer.
            let Some(offer) = sdp else {
                self.ack_relayed(to, cseq);
                self.relayed_failed(relayed, 488);
                return;
            };
            self.set_media(to, peer_media(&offer));
            let body = self.sdp.write(relayed.from, &offer);
            let from_cseq = message::cseq(&relayed.request).map_or(1, |(n, _)| n);
            self.held_ack = Some(HeldAck {
                to,
                cseq,
                from_cseq,
                offer,
            });
            self.respond_relayed_with(&relayed, 200, Some(body), extra);
            return;
        }
        if method == Method::Invite {
            self.ack_relayed(to, cseq);
        }
        match (sdp, &relayed.offer) {
            (Some(answer), Some(offer)) => {
                self.set_media(to, peer_media(&answer));
                let body = self.sdp.write_answer(relayed.from, &answer, offer);
                self.respond_relayed_with(&relayed, 200, Some(body), extra);
            }
            // A refresh without an offer needs no answer either.
            (None, None) => self.respond_relayed_with(&relayed, 200, None, extra),
            _ => {
                if let Some(previous) = relayed.restore {
                    self.set_media(relayed.from, previous);
                }
                self.respond_relayed(&relayed, 488, None);
            }
        }
    }

    /// ACKs the 2xx (CSeq `cseq`) of a re-INVITE we sent `to`.
    fn ack_relayed(&mut self, to: Side, cseq: u32) {
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
        self.respond_relayed_with(relayed, code, sdp, Vec::new());
    }

    fn respond_relayed_with(
        &mut self,
        relayed: &Relayed,
        code: u16,
        sdp: Option<String>,
        extra: Vec<Header>,
    ) {
        if let Some(leg) = self.leg(relayed.from) {
            let mut reply = leg.dialog.response(&relayed.request, code, sdp);
            reply.headers.extend(extra);
            self.outputs.push_back(Output::Respond {
                key: relayed.key.clone(),
                response: reply,
            });
        }
    }

    // ---- timers of the legs ----

    /// Sends a reliable provisional again if it is due (RFC 3262 3).
    fn retransmit_reliable(&mut self, now: Instant) {
        let due = self.caller_rel.as_mut().and_then(|rel| rel.due(now));
        if let (Some(response), Some((key, _))) = (due, &self.caller.invite) {
            self.outputs.push_back(Output::Respond {
                key: key.clone(),
                response,
            });
        }
    }

    /// Acts on `side`'s session timer at `now`: our refresh goes out, or a session whose
    /// refresh did not come (or failed) ends, both legs hung up (RFC 4028 10).
    fn session_timer_due(&mut self, side: Side, now: Instant) {
        if self.phase != Phase::Up {
            return;
        }
        let Some(timer) = &self.timers[side.index()] else {
            return;
        };
        if timer.deadline().is_none_or(|d| d > now) {
            return;
        }
        if timer.refresher == Refresher::Peer || timer.refreshing.is_some() || now >= timer.expiry()
        {
            self.end(now, EndCause::SessionExpired, None, None, None);
            return;
        }
        let header = timer.header(true);
        let use_update = self.updates[side.index()];
        let body = self.sdp.last[side.index()].clone();
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.leg_mut(side) else {
            return;
        };
        let mut refresh = if use_update {
            leg.dialog.request(&mut rng, Method::Update, None)
        } else {
            // Not known to take UPDATE: a re-INVITE with the SDP it has (RFC 4028 9).
            leg.dialog.request(&mut rng, Method::Invite, body)
        };
        refresh
            .headers
            .push(Header::Other("Session-Expires".into(), header));
        refresh.headers.push(Header::Supported(SUPPORTED.into()));
        let hop = leg.hop();
        let branch = message::top_branch(&refresh).unwrap_or_default();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: refresh,
        });
        if let Some(timer) = self.timers[side.index()].as_mut() {
            timer.refreshing = Some(branch);
        }
    }

    /// The answer to a refresh of ours on `side`.
    fn on_refresh_response(&mut self, now: Instant, side: Side, response: &rsip::Response) {
        let code = response.status_code.code();
        if code < 200 {
            return;
        }
        if code / 100 == 2 && dialog::is_invite_response(response) {
            let cseq = message::cseq(response).map_or(1, |(n, _)| n);
            self.ack_relayed(side, cseq);
        }
        match code {
            200..=299 => {
                self.refreshed(side, now);
            }
            // RFC 4028 10: a refresh that timed out or found no dialog ends the session.
            408 | 481 => self.end(now, EndCause::SessionExpired, None, None, None),
            _ => {
                if let Some(timer) = self.timers[side.index()].as_mut() {
                    if code == 422
                        && let Some(min_se) = timer::min_se(&response.headers)
                    {
                        timer.interval = timer.interval.max(Duration::from_secs(min_se));
                    }
                    timer.refreshing = None;
                    let retry = Duration::from_secs(10).min(timer.interval / 4);
                    timer.retry_at = Some(now + retry);
                }
            }
        }
    }

    /// The side whose refresh of ours has `branch`, if any.
    fn refreshing_side(&self, branch: &str) -> Option<Side> {
        [Side::Caller, Side::Backend].into_iter().find(|side| {
            self.timers[side.index()]
                .as_ref()
                .and_then(|t| t.refreshing.as_deref())
                == Some(branch)
        })
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
        if let Some(held) = self.held_ack.take() {
            // The 2xx we held the ACK of is ACKed (without the answer that never came) so
            // that the BYE below finds a confirmed dialog.
            self.ack_relayed(held.to, held.cseq);
        }
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

    /// The SIP leg of `side`: the far leg once answered, or its early dialog while it rings.
    fn leg(&self, side: Side) -> Option<&SipLeg> {
        match side {
            Side::Caller => self.caller.leg.as_ref(),
            Side::Backend => self.far.as_ref().map(|(l, _)| l).or_else(|| {
                self.attempt
                    .as_ref()
                    .map(|a| &a.leg)
                    .filter(|l| l.dialog.remote_tag.is_some())
            }),
        }
    }

    fn leg_mut(&mut self, side: Side) -> Option<&mut SipLeg> {
        match side {
            Side::Caller => self.caller.leg.as_mut(),
            Side::Backend => match self.far.as_mut() {
                Some((leg, _)) => Some(leg),
                None => self
                    .attempt
                    .as_mut()
                    .map(|a| &mut a.leg)
                    .filter(|l| l.dialog.remote_tag.is_some()),
            },
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

#[cfg(test)]
mod tests {
    #[test]
    fn supported_matches_what_the_validator_accepts() {
        let ours: Vec<&str> = super::SUPPORTED.split(", ").collect();
        assert_eq!(ours, voxgate_sip::validate::SUPPORTED_EXTENSIONS);
    }
}
