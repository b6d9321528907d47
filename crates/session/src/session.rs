//! [`Session`]: the state machine of one B2BUA session.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_core::NodeId;
use voxgate_sip::dialog;
use voxgate_sip::message::{self, response_for};
use voxgate_sip::sdp::AudioSdp;
use voxgate_sip::{Event, TransactionKey};

use crate::attempt::{Attempt, WIND_DOWN};
use crate::cause::{End, EndCause};
use crate::io::{CallerSpec, Input, MediaCommand, Output};
use crate::leg::SipLeg;
use crate::media::{PeerMedia, SdpWriter, Side};
use crate::reliable::ReliableProvisionals;
use crate::timer::{LegTimer, Refresher};
use crate::transfer::{Transfer, TransferMode};

/// Methods a session answers in a dialog, for `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY";

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
    /// How a Backend's REFER transfers the caller.
    pub transfer: TransferMode,
    /// What a trunk's digest challenge (401/407) to our INVITE is answered with: the far leg's
    /// for a Backend's call out, the dialled number's for an originated call.
    pub trunk_credentials: Option<crate::io::TrunkCredentials>,
    /// What of an inbound caller's INVITE crosses to the far INVITE (identity, trunk headers).
    pub identity: crate::identity::IdentityPolicy,
    /// Seed of the session's tags, branches and Call-IDs.
    pub seed: u64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
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
pub(crate) struct Caller<L> {
    /// Its SIP leg (`None` for a WebRTC client, and for a number not yet answered).
    pub(crate) leg: Option<SipLeg>,
    /// An inbound caller's INVITE while it awaits our final answer.
    pub(crate) invite: Option<(TransactionKey, rsip::Request)>,
    /// A dialled number's INVITE while it rings.
    pub(crate) dialling: Option<Attempt<L>>,
    /// How long a dialled number may ring.
    pub(crate) dial_ring: Duration,
    /// A WebRTC client.
    pub(crate) webrtc: bool,
    /// A number we dial.
    pub(crate) dialled: bool,
    pub(crate) up: bool,
    /// The From and To users the far side sees.
    pub(crate) from_user: String,
    pub(crate) to_user: String,
    /// The host the caller dialled (kept for a trunk).
    pub(crate) request_host: String,
    pub(crate) max_forwards: Option<u32>,
}

/// An in-dialog request relayed from one side to the other, awaiting the far answer.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub(crate) from: Side,
    pub(crate) key: TransactionKey,
    pub(crate) request: rsip::Request,
    /// The branch of our request on the other side.
    pub(crate) branch: String,
    pub(crate) since: Instant,
    /// The media of `from` before a re-INVITE re-pointed it, restored if it fails.
    pub(crate) restore: Option<PeerMedia>,
    /// A re-INVITE's offer, whose every section the answer answers.
    pub(crate) offer: Option<AudioSdp>,
    /// What we sent the other side (CANCELled if it is an INVITE we give up on).
    pub(crate) out: rsip::Request,
    /// Its requester's leg was replaced by a transfer: the answer is ACKed if it must be, and
    /// nobody is answered.
    pub(crate) orphan: bool,
}

/// A 2xx to an offerless INVITE, answered with an offer whose answer comes in the other side's
/// ACK: our ACK to `to` waits for it (RFC 3264 late offer, passed through).
#[derive(Debug)]
pub(crate) struct HeldAck {
    /// The side we owe the ACK.
    pub(crate) to: Side,
    /// CSeq of our INVITE on `to`.
    pub(crate) cseq: u32,
    /// CSeq of the other side's INVITE, whose ACK carries the answer.
    pub(crate) from_cseq: u32,
    /// The offer `to` made in its 2xx.
    pub(crate) offer: AudioSdp,
}

/// One B2BUA session; `L` is the Backend lease type (dropped to release).
#[derive(Debug)]
pub struct Session<L> {
    pub(crate) config: SessionConfig,
    pub(crate) rng: SmallRng,
    pub(crate) sdp: SdpWriter,
    pub(crate) phase: Phase,
    pub(crate) caller: Caller<L>,
    /// What the far side is offered.
    pub(crate) offer: Option<AudioSdp>,
    /// The caller's rtcp-mux choice, kept in our answer.
    pub(crate) caller_mux: bool,
    /// An inbound caller's offer, whose every section our answer answers.
    pub(crate) caller_offer: Option<AudioSdp>,
    pub(crate) attempt: Option<Attempt<L>>,
    /// The far leg once it answered, with its lease.
    pub(crate) far: Option<(SipLeg, Option<L>)>,
    /// The far side's SDP when it answered (or offered, late offer).
    pub(crate) far_sdp: Option<AudioSdp>,
    /// A transfer of the caller under way.
    pub(crate) transfer: Option<Transfer<L>>,
    pub(crate) tried: Vec<NodeId>,
    pub(crate) attempts: u32,
    pub(crate) winding: Vec<Attempt<L>>,
    pub(crate) relayed: Vec<Relayed>,
    pub(crate) media: [Option<PeerMedia>; 2],
    /// The caller required reliable provisionals (RFC 3262).
    pub(crate) caller_rel: Option<ReliableProvisionals>,
    /// The caller's session timer once answered: interval, refresher, `Require: timer`.
    pub(crate) caller_timer: Option<(Duration, Refresher, bool)>,
    /// Session timers (RFC 4028) per side.
    pub(crate) timers: [Option<LegTimer>; 2],
    /// Each side allows UPDATE (its refreshes use it rather than re-INVITE).
    pub(crate) updates: [bool; 2],
    /// The caller sent no offer: the far side's offer comes in its 2xx.
    pub(crate) late: bool,
    pub(crate) held_ack: Option<HeldAck>,
    /// A far re-INVITE answered here for a caller without SIP, awaiting the bridge's word.
    pub(crate) reoffer: Option<(TransactionKey, rsip::Request, AudioSdp)>,
    /// The inbound caller's INVITE transaction once answered (Timer L names it).
    pub(crate) caller_invite_key: Option<TransactionKey>,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) end: Option<End>,
    /// [`crate::Progress::Ringing`] was reported.
    pub(crate) ringing: bool,
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
                dialled: false,
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
            far_sdp: None,
            transfer: None,
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
            ringing: false,
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
            Input::TransferTarget(target) => self.on_transfer_target(now, target),
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
            Input::MediaTimeout(side) => {
                // While the caller waits for a transfer target, the far side may be silent.
                let transferring = side == Side::Backend && self.transfer.is_some();
                if self.phase == Phase::Up && !transferring {
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

    /// An operator transfers the caller to `to` (a `sip:` or `tel:` URI) at `now`, as a
    /// Backend's REFER would but without NOTIFYs; `Err` says why it cannot (not connected, a
    /// transfer already under way).
    pub fn transfer(&mut self, to: String) -> Result<(), &'static str> {
        self.transfer_by_operator(to)
    }

    /// Sends the caller an INFO in its dialog carrying `body` of `content_type` (DTMF as
    /// `application/dtmf-relay` where the trunk wants it so); its answer needs nothing. `Err` says
    /// why not: the session is not connected, or its caller has no SIP dialog.
    pub fn info_to_caller(
        &mut self,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), &'static str> {
        if self.phase != Phase::Up {
            return Err("the session is not connected");
        }
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.caller.leg.as_mut() else {
            return Err("the caller has no SIP dialog");
        };
        let mut info = leg.dialog.request(&mut rng, Method::Info, None);
        message::set_body(&mut info, body, Some(content_type));
        let hop = leg.hop();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: info,
        });
        Ok(())
    }

    /// Acts on every deadline up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.retransmit_reliable(now);
        self.transfer_due(now);
        for side in [Side::Caller, Side::Backend] {
            self.session_timer_due(side, now);
        }
        // Wound-down INVITEs that never finished are forgotten (and their leases released).
        self.winding
            .retain(|a| a.wind_down_deadline().is_none_or(|d| d > now));
        let stale: Vec<usize> = (0..self.relayed.len())
            .filter(|&i| self.relayed[i].since + WIND_DOWN <= now)
            .collect();
        for index in stale.into_iter().rev() {
            let relayed = self.relayed.remove(index);
            if relayed.out.method == Method::Invite {
                let to = relayed.from.other();
                if let Some(leg) = self.leg(to) {
                    let cancel = dialog::cancel(&relayed.out);
                    let hop = leg.hop();
                    self.outputs.push_back(Output::Request {
                        to: hop,
                        request: cancel,
                    });
                }
            }
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
                let Some(mut attempt) = self.attempt.take() else {
                    return;
                };
                if let Some(backend) = attempt.backend.clone() {
                    let until = now + self.config.silent_cooldown;
                    self.outputs.push_back(Output::CoolDown { backend, until });
                }
                self.attempted(attempt.backend.clone(), None);
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
            if let Some(deadline) = self.transfer_deadline() {
                consider(deadline);
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
    pub(crate) fn side_of(&self, call_id: &str) -> Option<Side> {
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
        if request.method == Method::Cancel {
            // What it would cancel was answered already: no effect (RFC 3261 9.2).
            self.outputs.push_back(answered(200));
            return;
        }
        if self.phase == Phase::Ended {
            // The session is over: its dialogs are gone for new requests.
            self.outputs.push_back(answered(481));
            return;
        }
        let Some(leg) = self.leg(side).filter(|l| l.owns(&request)) else {
            // Same Call-ID, other tags (a stray or a forged request), or no dialog yet.
            self.outputs.push_back(answered(481));
            return;
        };
        match request.method {
            Method::Bye if side == Side::Backend && self.transfer.is_some() => {
                // The transferor leaves before the target answers: the caller waits for it.
                let reply = leg.dialog.response(&request, 200, None);
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
                self.transferor_left();
            }
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
            Method::Invite | Method::Info | Method::Update
                if self.phase == Phase::Up && self.far.is_none() && !self.caller.webrtc =>
            {
                // The transferor left and the target is not up yet: nobody to ask.
                let mut reply = leg.dialog.response(&request, 500, None);
                reply.headers.push(Header::RetryAfter("1".into()));
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            Method::Invite | Method::Info | Method::Update | Method::Notify
                if self.phase == Phase::Up =>
            {
                self.relay_request(now, side, key, request);
            }
            Method::Refer if self.phase == Phase::Up => self.on_refer(now, side, key, request),
            // UPDATE in the early dialogs (RFC 3311): both exist, or the request could not
            // have reached us on this one.
            Method::Update if self.phase == Phase::Calling && self.caller.leg.is_some() => {
                self.relay_request(now, side, key, request);
            }
            // A PRACK crossing our 2xx (held for it, or sent after the give-up).
            Method::PRack if side == Side::Caller => self.on_prack(now, key, &request),
            Method::Options => {
                let reply = leg.dialog.response(&request, 200, None);
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
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
        if self.is_transfer_branch(branch) {
            self.on_transfer_response(now, response);
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
                if leg.dialog.call_id != call_id || acked != cseq {
                    continue;
                }
                if message::to_tag(&response) == leg.dialog.remote_tag {
                    self.outputs.push_back(Output::Stateless {
                        to: leg.hop(),
                        message: ack.clone(),
                    });
                    continue;
                }
                // A 2xx from another fork of our INVITE: ACKed and hung up (RFC 3261 13.2.2.4).
                let mut fork = leg.dialog.clone();
                fork.confirm(&response);
                let mut rng = SmallRng::from_rng(&mut self.rng);
                let hop = fork.next_hop().unwrap_or(leg.address);
                let ack = fork.ack(&mut rng, cseq.unwrap_or(1));
                let bye = fork.bye(&mut rng);
                self.outputs.push_back(Output::Stateless {
                    to: hop,
                    message: ack,
                });
                self.outputs.push_back(Output::Request {
                    to: hop,
                    request: bye,
                });
            }
        }
    }

    fn on_timeout(&mut self, now: Instant, key: &TransactionKey) {
        let branch = key.branch();
        if self.attempt.as_ref().is_some_and(|a| a.branch == branch) {
            if let Some(attempt) = self.attempt.take() {
                self.attempted(attempt.backend, Some(408));
            }
            self.pick(now);
        } else if self.is_transfer_branch(branch) {
            let attempt = self.transfer.as_mut().and_then(|t| t.attempt.take());
            self.attempted(attempt.and_then(|a| a.backend), Some(408));
            self.transfer_failed(now, 408);
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

    // ---- the end ----

    /// Ends the session with `cause`: an unanswered inbound caller gets `refusal` (else 500),
    /// every leg that is up and did not hang up itself (`gone`) gets a BYE, far INVITEs in
    /// flight are cancelled and followed to their end, relayed requests are answered 487.
    pub(crate) fn end(
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
            if Some(relayed.from) != gone && !relayed.orphan {
                self.respond_relayed(&relayed, 487, None);
            }
        }
        // Far INVITEs still out are cancelled (once provisional) and followed to their end.
        if let Some(attempt) = &self.attempt {
            self.attempted(attempt.backend.clone(), None);
        }
        let transfer = self.transfer.take().and_then(|t| t.attempt);
        if let Some(attempt) = &transfer {
            self.attempted(attempt.backend.clone(), None);
        }
        let pending = [self.attempt.take(), self.caller.dialling.take(), transfer];
        for attempt in pending.into_iter().flatten() {
            self.wind_down(attempt, now);
        }
        let mut caller_code = if caller_up && !self.caller.webrtc {
            Some(200)
        } else if self.caller.dialled && cause == EndCause::Rejected {
            // A dialled number's refusal (or its INVITE's timeout, 408).
            code
        } else {
            None
        };
        if let Some((key, invite)) = self.caller.invite.take() {
            let (status, extra) = refusal.unwrap_or((500, Vec::new()));
            caller_code = Some(status);
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
            far_called: self.attempts > 0,
            by: gone,
            caller_code,
        };
        self.end = Some(end);
        self.outputs.push_back(Output::Ended(end));
    }

    pub(crate) fn bye(&mut self, side: Side) {
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
    pub(crate) fn leg(&self, side: Side) -> Option<&SipLeg> {
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

    pub(crate) fn leg_mut(&mut self, side: Side) -> Option<&mut SipLeg> {
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

    pub(crate) fn set_media(&mut self, side: Side, media: PeerMedia) {
        self.media[side.index()] = Some(media);
        self.outputs
            .push_back(Output::Media(MediaCommand::Peer(side, media)));
    }

    pub(crate) fn retry_after(&self) -> Header {
        Header::RetryAfter(self.config.retry_after.as_secs().max(1).to_string().into())
    }
}

/// A failure code as the other side gets it: a 503 is never passed on (RFC 3261 16.7); it is
/// this node's to give, with its own Retry-After. Redirects would reveal the far side's
/// contacts.
pub(crate) fn map_failure(code: u16) -> u16 {
    match code {
        503 => 500,
        300..=399 => 480,
        other => other,
    }
}

/// Seconds of a response's Retry-After header.
pub(crate) fn retry_after(response: &rsip::Response) -> Option<Duration> {
    let value = dialog::header_value(&response.headers, "Retry-After")?;
    let secs: u64 = value.split([';', '(', ' ']).next()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A Warning header (RFC 3261 20.43) with our agent name.
pub(crate) fn warning(text: &str) -> Header {
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
