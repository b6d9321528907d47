//! One B2BUA call: the caller's leg (we are its UAS), the Backend's leg (we are its UAC), the
//! media relay between them, and everything that ends the call.
//!
//! Topology hiding: each leg is a dialog of its own (own Call-ID, tags, Via, Contact), and both
//! SDPs point at this node, so neither side sees the other's addresses. The session slot, the
//! Backend lease and the relay's port leases are owned here; whatever path ends the task drops
//! them, which is what releases them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rsip::Header;
use tokio::sync::Notify;
use tokio::time::Instant;
use voxgate_cluster::{BackendLease, SessionSlot, Trunk};
use voxgate_core::{NodeId, RegionId, SessionId};
use voxgate_endpoint::DialogEvents;
use voxgate_sip::dialog::{self, Dialog, uri_user};
use voxgate_sip::message::{new_tag, response_for};
use voxgate_sip::sdp::{AudioSdp, Codec, CodecKind, Direction};
use voxgate_sip::{Event, TransactionKey, Transport};

use crate::gateway::{Gateway, SessionInfo, USER_AGENT};
use crate::metrics;
use crate::outbound::{CallRequest, Outcome, Progress, Stage};
use crate::relay::{PeerMedia, Relay, RelaySockets, Side};

/// Where a new call goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Inbound: the least-loaded Backend of `region` (or its spillover regions).
    Backend {
        /// The caller's region.
        region: RegionId,
    },
    /// Outbound: a Backend's call to the outside, through this trunk.
    Trunk(Trunk),
}

/// Cooldown of a Backend that answered 503 without Retry-After.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// Why a call ended, as the `cause` label of `voxgate_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndCause {
    CallerBye,
    BackendBye,
    Cancelled,
    Rejected,
    MediaTimeout,
    AckTimeout,
    NoBackend,
    Shutdown,
    /// `DELETE /v1/calls/{id}` on an originated call.
    HungUp,
}

impl EndCause {
    fn as_str(self) -> &'static str {
        match self {
            EndCause::CallerBye => "caller_bye",
            EndCause::BackendBye => "backend_bye",
            EndCause::Cancelled => "cancelled",
            EndCause::Rejected => "rejected",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::AckTimeout => "ack_timeout",
            EndCause::NoBackend => "no_backend",
            EndCause::Shutdown => "shutdown",
            EndCause::HungUp => "hung_up",
        }
    }
}

/// The caller's side: its dialog, and its INVITE transaction while that waits for an answer.
///
/// In an originated call (`POST /v1/calls`) the "caller" is the number we dialled: we are its UAC,
/// it answered before the Backend was called, and there is no INVITE of its own to answer.
struct CallerLeg {
    /// The caller's INVITE and its server transaction; `None` for an originated leg.
    inbound: Option<(TransactionKey, rsip::Request)>,
    dialog: Dialog,
    events: DialogEvents,
    /// Where requests to the caller go when its Contact is not a literal address, and always
    /// over TCP (the connection it called on).
    source: SocketAddr,
    transport: Transport,
    answered: bool,
    /// Our ACK of an originated leg's 2xx, sent again if the 2xx is retransmitted.
    ack: Option<rsip::Request>,
    /// The From and To users the Backend sees: the calling and the called party.
    from_user: String,
    to_user: String,
    /// The Request-URI the caller dialled (an outbound call keeps its host).
    request_uri: String,
    max_forwards: Option<u32>,
}

impl CallerLeg {
    /// A final response to the caller's INVITE, with `extra` headers (nothing for an originated
    /// leg, which has no INVITE of its own).
    fn respond(&self, gateway: &Gateway, code: u16, extra: Vec<Header>) {
        if let Some((key, invite)) = &self.inbound {
            let mut response = self.dialog.response(invite, code, None);
            response.headers.extend(extra);
            gateway.endpoint.respond(key.clone(), response);
        }
    }
}

/// A new call's INVITE as the dispatcher received it.
#[derive(Debug)]
pub struct Caller {
    /// Its server transaction.
    pub key: TransactionKey,
    /// Where it came from (a TCP connection's peer for TCP).
    pub source: SocketAddr,
    /// The transport it came on.
    pub transport: Transport,
    /// The INVITE.
    pub invite: rsip::Request,
}

/// The Backend's side, once an INVITE to it was answered.
struct BackendLeg {
    dialog: Dialog,
    events: DialogEvents,
    /// Its address, for requests when the Contact is not a literal address.
    address: SocketAddr,
    ack: rsip::Request,
    _lease: Option<BackendLease>,
}

/// An INVITE sent to one Backend (or trunk), waiting for its final answer.
pub(crate) struct Attempt {
    pub(crate) dialog: Dialog,
    pub(crate) events: DialogEvents,
    pub(crate) invite: rsip::Request,
    pub(crate) address: SocketAddr,
    pub(crate) backend: Option<NodeId>,
    pub(crate) lease: Option<BackendLease>,
    pub(crate) provisional: bool,
}

impl Attempt {
    /// Confirms the dialog with its 2xx `response` and ACKs it; returns the ACK (sent again if
    /// the 2xx is retransmitted).
    pub(crate) fn acknowledge(
        &mut self,
        gateway: &Gateway,
        response: &rsip::Response,
        rng: &mut SmallRng,
    ) -> rsip::Request {
        self.dialog.confirm(response);
        let invite_cseq = voxgate_sip::message::cseq(&self.invite).map_or(1, |(n, _)| n);
        let ack = self.dialog.ack(rng, invite_cseq);
        let next_hop = self.dialog.next_hop().unwrap_or(self.address);
        gateway.endpoint.stateless(next_hop, ack.clone());
        ack
    }
}

/// The outcome of one attempt.
pub(crate) enum AttemptResult {
    Answered(rsip::Response),
    /// This Backend failed (5xx, 408, timeout); another may be tried.
    Next,
    /// This Backend did not answer within the INVITE timeout; another may be tried, and a late
    /// answer from this one must be cleaned up.
    Silent,
    /// A final non-2xx the caller gets (already mapped).
    Reject(u16),
    /// The caller cancelled; it has been answered.
    Cancelled,
    /// The API hung an originated call up; its leg has been hung up.
    HungUp,
}

struct Call {
    gateway: Arc<Gateway>,
    id: SessionId,
    rng: SmallRng,
    caller: CallerLeg,
    /// The caller's media offer (for an originated call, the dialled party's answer).
    offer: AudioSdp,
    relay: Relay,
    ports: (u16, u16),
    /// `o=` session version per side (caller, Backend), raised on every SDP we send.
    sdp_versions: [u64; 2],
    started: Instant,
    /// An originated call's link to its `POST /v1/calls` record (its pinned Backend, its
    /// hang-up signal).
    progress: Option<Progress>,
}

/// Runs one call from its INVITE to its end. `slot` is this call's share of the node cap.
pub async fn run(
    gateway: Arc<Gateway>,
    slot: SessionSlot,
    caller: Caller,
    destination: Destination,
) {
    let Caller {
        key,
        source,
        transport,
        invite,
    } = caller;
    let started = Instant::now();
    let mut rng = gateway.call_rng();
    let local_tag = new_tag(&mut rng);
    let mut caller_dialog =
        Dialog::incoming(&invite, gateway.sip_addr, local_tag, "voxgate", USER_AGENT);
    if caller_dialog.next_hop().is_none() {
        caller_dialog.remote_target = format!("sip:{source}");
    }
    if transport == Transport::Tcp {
        caller_dialog.transport = "TCP";
    }
    let events = gateway.endpoint.register(&caller_dialog.call_id);
    let from_uri =
        dialog::name_addr_uri(&dialog::header_value(&invite.headers, "From").unwrap_or_default());
    let request_uri = invite.uri.to_string();
    let offer = parse_sdp(&invite.body);
    let caller = CallerLeg {
        from_user: uri_user(&from_uri).unwrap_or("anonymous").to_owned(),
        to_user: uri_user(&request_uri).unwrap_or("voxgate").to_owned(),
        request_uri,
        max_forwards: voxgate_sip::message::max_forwards(&invite),
        inbound: Some((key, invite)),
        dialog: caller_dialog,
        events,
        source,
        transport,
        answered: false,
        ack: None,
    };
    let reject = |code: u16, extra: Vec<Header>| caller.respond(&gateway, code, extra);

    let Some(offer) = offer else {
        // Offerless INVITEs (offer in the 200 OK) are not supported: the relay needs both ends.
        metrics::session_rejected("bad_sdp");
        reject(
            488,
            vec![warning("no usable SDP offer (audio RTP/AVP expected)")],
        );
        return;
    };
    let sockets = match RelaySockets::bind(&gateway.ports, gateway.config.media.bind_ip) {
        Ok(sockets) => sockets,
        Err(err) => {
            tracing::warn!(%err, "no media ports for a new call");
            metrics::session_rejected("media_ports");
            reject(503, vec![gateway.retry_after_header()]);
            return;
        }
    };
    let ports = (sockets.port(Side::Caller), sockets.port(Side::Backend));
    let relay = Relay::start(sockets, gateway.config.media.timeout);
    relay.set_peer(Side::Caller, peer_media(&offer));
    let id = gateway.new_session_id();
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id: caller.dialog.call_id.clone(),
            backend_call_id: None,
            peer: None,
            region: match &destination {
                Destination::Backend { region } => region.clone(),
                Destination::Trunk(trunk) => trunk.region.clone(),
            },
            ports,
        },
    );
    let mut call = Call {
        gateway: gateway.clone(),
        id,
        rng,
        caller,
        offer,
        relay,
        ports,
        sdp_versions: [1, 1],
        started,
        progress: None,
    };
    let (Ok(cause) | Err(cause)) = call.run(destination, None).await;
    call.ended(cause);
    drop(slot);
}

/// Runs one originated call (`POST /v1/calls`): dials `request.to` through its trunk, and once
/// the number answers, bridges it to the Backend of `lease` (failing over to others of the
/// region like an inbound call). `slot` is this call's share of the node cap; `progress` hears
/// every step and the outcome.
pub async fn originate(
    gateway: Arc<Gateway>,
    slot: SessionSlot,
    lease: BackendLease,
    request: CallRequest,
    progress: Progress,
) {
    let started = Instant::now();
    let Some(trunk_addr) = request.trunk.outbound else {
        progress.finish(Outcome::Failed, None, Some("trunk_has_no_outbound"));
        return;
    };
    let sockets = match RelaySockets::bind(&gateway.ports, gateway.config.media.bind_ip) {
        Ok(sockets) => sockets,
        Err(err) => {
            tracing::warn!(%err, "no media ports for an originated call");
            metrics::session_rejected("media_ports");
            progress.finish(Outcome::Failed, None, Some("media_ports"));
            return;
        }
    };
    let ports = (sockets.port(Side::Caller), sockets.port(Side::Backend));
    let relay = Relay::start(sockets, gateway.config.media.timeout);
    let id = gateway.new_session_id();
    progress.session(id);
    let mut rng = gateway.call_rng();
    let public_ip = gateway.config.media.public_ip;
    // The carrier sees its own domain when the trunk names one.
    let host = request
        .trunk
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| trunk_addr.to_string());
    let mut leg = Dialog::outgoing(
        &mut rng,
        gateway.sip_addr,
        format!("sip:{}@{public_ip}", request.from),
        format!("sip:{}@{host}", request.to),
        USER_AGENT,
    );
    leg.local_contact = format!("sip:voxgate@{}", gateway.sip_addr);
    let codecs = vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)];
    let offer = AudioSdp::offer(public_ip, ports.0, codecs, id.0);
    let invite = leg.invite(&mut rng, offer.to_string());
    let events = gateway.endpoint.register(&leg.call_id);
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id: leg.call_id.clone(),
            backend_call_id: None,
            peer: None,
            region: request.region.clone(),
            ports,
        },
    );
    gateway.endpoint.request(trunk_addr, invite.clone());
    let mut attempt = Attempt {
        dialog: leg,
        events,
        invite,
        address: trunk_addr,
        backend: None,
        lease: None,
        provisional: false,
    };
    let hang_up = progress.hang_up_signal();
    let response = match dial(&gateway, &mut attempt, &hang_up).await {
        Ok(response) => response,
        Err(outcome) => {
            let code = match outcome {
                Dialed::Refused(code) => Some(code),
                Dialed::Silent | Dialed::NoAnswer | Dialed::Shutdown | Dialed::HungUp => {
                    // Cancel the INVITE (once it is provisional) and clean up an answer that
                    // crosses the CANCEL.
                    if attempt.provisional {
                        gateway
                            .endpoint
                            .request(attempt.address, dialog::cancel(&attempt.invite));
                    }
                    tokio::spawn(wind_down(gateway.clone(), attempt, rng));
                    None
                }
            };
            gateway.remove_session(id);
            progress.finish(outcome.outcome(), code, None);
            return;
        }
    };
    let ack = attempt.acknowledge(&gateway, &response, &mut rng);
    let hop = attempt.dialog.next_hop().unwrap_or(trunk_addr);
    let caller = CallerLeg {
        inbound: None,
        dialog: attempt.dialog,
        events: attempt.events,
        source: trunk_addr,
        transport: Transport::Udp,
        answered: true,
        ack: Some(ack),
        // The Backend sees the dialled party calling the caller id, as for an inbound call.
        from_user: request.to.clone(),
        to_user: request.from.clone(),
        request_uri: format!("sip:{}@{host}", request.to),
        max_forwards: None,
    };
    let answer = parse_sdp(&response.body)
        .filter(|sdp| sdp.port != 0)
        .and_then(first_codec_only);
    let Some(answer) = answer else {
        let mut call_rng = rng;
        let mut caller = caller;
        let bye = caller.dialog.bye(&mut call_rng);
        gateway.endpoint.request(hop, bye);
        gateway.remove_session(id);
        progress.finish(Outcome::Failed, Some(200), Some("answer_without_sdp"));
        return;
    };
    relay.set_peer(Side::Caller, peer_media(&answer));
    progress.stage(Stage::Bridging);
    let mut call = Call {
        gateway: gateway.clone(),
        id,
        rng,
        caller,
        offer: answer,
        relay,
        ports,
        sdp_versions: [1, 1],
        started,
        progress: Some(progress),
    };
    let region = request.region.clone();
    let result = call.run(Destination::Backend { region }, Some(lease)).await;
    let (Ok(cause) | Err(cause)) = result;
    let outcome = match (result, cause) {
        (Ok(_), _) => Outcome::Completed,
        (Err(_), EndCause::Shutdown) => Outcome::Shutdown,
        (Err(_), EndCause::HungUp) => Outcome::Cancelled,
        (Err(_), EndCause::NoBackend | EndCause::Rejected) => Outcome::NoBackend,
        (Err(_), _) => Outcome::Failed,
    };
    if let Some(progress) = call.progress.take() {
        progress.finish(outcome, None, Some(cause.as_str()));
    }
    call.ended(cause);
    drop(slot);
}

/// `sdp` with only its first audio codec (and the telephone-event at that codec's clock), so that
/// the Backend, offered it, cannot pick a codec the other side will not send; `None` if it has no
/// audio codec.
fn first_codec_only(mut sdp: AudioSdp) -> Option<AudioSdp> {
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

/// Why dialling the trunk did not give an answered call.
#[derive(Debug, Clone, Copy)]
enum Dialed {
    /// A final non-2xx, or 408 from the transaction layer.
    Refused(u16),
    /// Not even a 100 Trying within `routing.invite_timeout`; a late answer is cleaned up.
    Silent,
    /// Still ringing at `outbound.ring_timeout`.
    NoAnswer,
    /// The node is going away.
    Shutdown,
    /// `DELETE /v1/calls/{id}` while ringing.
    HungUp,
}

impl Dialed {
    fn outcome(self) -> Outcome {
        match self {
            Dialed::Refused(486 | 600) => Outcome::Busy,
            Dialed::Refused(408 | 480 | 487) | Dialed::NoAnswer => Outcome::NoAnswer,
            Dialed::Refused(_) | Dialed::Silent => Outcome::Failed,
            Dialed::Shutdown => Outcome::Shutdown,
            Dialed::HungUp => Outcome::Cancelled,
        }
    }
}

/// Resolves when `signal` is notified; never without one.
async fn signalled(signal: Option<&Notify>) {
    match signal {
        Some(signal) => signal.notified().await,
        None => std::future::pending().await,
    }
}

/// Waits for the trunk's answer to an originated call's INVITE.
async fn dial(
    gateway: &Gateway,
    attempt: &mut Attempt,
    hang_up: &Notify,
) -> Result<rsip::Response, Dialed> {
    let now = Instant::now();
    let silent_deadline = now + gateway.config.routing.invite_timeout;
    let ring_deadline = now + gateway.config.outbound.ring_timeout;
    loop {
        tokio::select! {
            event = attempt.events.recv() => match event {
                Some(Event::Response { response, .. }) if dialog::is_invite_response(&response) => {
                    match response.status_code.code() {
                        100..=199 => attempt.provisional = true,
                        200..=299 => return Ok(response),
                        code => return Err(Dialed::Refused(code)),
                    }
                }
                Some(Event::Timeout { .. }) | None => return Err(Dialed::Refused(408)),
                Some(Event::Request { key, request, .. }) => {
                    gateway.endpoint.respond(key, response_for(&request, 481, None));
                }
                Some(_) => {}
            },
            () = tokio::time::sleep_until(silent_deadline), if !attempt.provisional => {
                return Err(Dialed::Silent);
            }
            () = tokio::time::sleep_until(ring_deadline) => return Err(Dialed::NoAnswer),
            () = gateway.hang_up_requested() => return Err(Dialed::Shutdown),
            () = hang_up.notified() => return Err(Dialed::HungUp),
        }
    }
}

impl Call {
    /// Counts the call's end and takes it out of the session tables.
    fn ended(self, cause: EndCause) {
        metrics::session_ended(cause.as_str());
        self.gateway.remove_session(self.id);
        tracing::debug!(session = %self.id, cause = cause.as_str(), "call ended");
    }

    /// Connects the call (to `first` if given, else as `destination` says) and carries it to its
    /// end; `Ok` once it was answered, with what ended it.
    async fn run(
        &mut self,
        destination: Destination,
        first: Option<BackendLease>,
    ) -> Result<EndCause, EndCause> {
        let (mut backend, answer) = self.connect(destination, first).await?;
        self.answer(answer);
        Ok(self.established(&mut backend).await)
    }

    /// Places the call on a Backend (`first`, then failing over) or the trunk: its leg and its
    /// SDP answer. On error the caller has been answered with the final response (an originated
    /// leg has been hung up).
    async fn connect(
        &mut self,
        destination: Destination,
        mut first: Option<BackendLease>,
    ) -> Result<(BackendLeg, AudioSdp), EndCause> {
        let gateway = self.gateway.clone();
        let mut tried: Vec<NodeId> = Vec::new();
        // An operator's chosen Backend is that Backend or none.
        let attempts = if self.progress.as_ref().is_some_and(Progress::pinned) {
            1
        } else {
            gateway.config.routing.max_attempts.max(1)
        };
        for round in 0..attempts {
            let (address, lease, backend) = match &destination {
                Destination::Backend { region } => {
                    let now = Instant::now().into_std();
                    let picked = first
                        .take()
                        .map_or_else(|| gateway.picker.pick(now, region, &tried), Ok);
                    match picked {
                        Ok(lease) => {
                            let id = lease.id().clone();
                            tried.push(id.clone());
                            (lease.address(), Some(lease), Some(id))
                        }
                        Err(_) => break,
                    }
                }
                Destination::Trunk(trunk) => match trunk.outbound {
                    Some(address) if round == 0 => (address, None, None),
                    _ => break,
                },
            };
            let mut attempt = self.start_attempt(address, lease, backend, &destination);
            match self.await_attempt(&mut attempt).await {
                AttemptResult::Answered(response) => return self.confirm(attempt, response),
                AttemptResult::Next => {
                    tracing::debug!(session = %self.id, %address, "backend failed; trying the next");
                }
                AttemptResult::Silent => {
                    tracing::debug!(session = %self.id, %address, "backend silent; trying the next");
                    give_up_silent(&gateway, attempt, self.call_rng());
                }
                AttemptResult::Reject(code) => {
                    self.reject(code, Vec::new());
                    return Err(EndCause::Rejected);
                }
                AttemptResult::Cancelled => {
                    tokio::spawn(wind_down(gateway.clone(), attempt, self.call_rng()));
                    return Err(EndCause::Cancelled);
                }
                AttemptResult::HungUp => {
                    tokio::spawn(wind_down(gateway.clone(), attempt, self.call_rng()));
                    return Err(EndCause::HungUp);
                }
            }
        }
        metrics::session_rejected("no_backend");
        self.reject(503, vec![gateway.retry_after_header()]);
        Err(EndCause::NoBackend)
    }

    fn start_attempt(
        &mut self,
        address: SocketAddr,
        lease: Option<BackendLease>,
        backend: Option<NodeId>,
        destination: &Destination,
    ) -> Attempt {
        let gateway = self.gateway.clone();
        let public_ip = gateway.config.media.public_ip;
        let from_user = self.caller.from_user.clone();
        let to_user = &self.caller.to_user;
        let to_uri = match destination {
            // Outbound: keep the dialled host, so the carrier sees its own domain.
            Destination::Trunk(_) => {
                let host = dialog::uri_host(&self.caller.request_uri)
                    .unwrap_or("invalid")
                    .to_owned();
                format!("sip:{to_user}@{host}")
            }
            Destination::Backend { .. } => format!("sip:{to_user}@{address}"),
        };
        let mut leg = Dialog::outgoing(
            &mut self.rng,
            gateway.sip_addr,
            format!("sip:{from_user}@{public_ip}"),
            to_uri,
            USER_AGENT,
        );
        leg.local_contact = format!("sip:voxgate@{}", gateway.sip_addr);
        let sdp = self.sdp_for(Side::Backend, &self.offer.clone());
        let mut invite = leg.invite(&mut self.rng, sdp);
        if let Some(max_forwards) = self.caller.max_forwards {
            invite
                .headers
                .retain(|h| !matches!(h, Header::MaxForwards(_)));
            invite.headers.push(Header::MaxForwards(
                max_forwards.saturating_sub(1).to_string().into(),
            ));
        }
        if let Some(progress) = &self.progress {
            // Lets the Backend match the call to the API request that originated it.
            invite
                .headers
                .push(Header::Other("X-Voxgate-Call".into(), progress.id().into()));
            if let Some(id) = &backend {
                progress.backend(id);
            }
        }
        let events = gateway.endpoint.register(&leg.call_id);
        let peer = backend
            .as_ref()
            .map_or_else(|| address.to_string(), |b| b.to_string());
        gateway.set_session_peer(self.id, &leg.call_id, peer);
        gateway.endpoint.request(address, invite.clone());
        Attempt {
            dialog: leg,
            events,
            invite,
            address,
            backend,
            lease,
            provisional: false,
        }
    }

    async fn await_attempt(&mut self, attempt: &mut Attempt) -> AttemptResult {
        let gateway = self.gateway.clone();
        let deadline = Instant::now() + gateway.config.routing.invite_timeout;
        let hang_up = self.progress.as_ref().map(Progress::hang_up_signal);
        loop {
            tokio::select! {
                () = signalled(hang_up.as_deref()) => {
                    if attempt.provisional {
                        gateway.endpoint.request(attempt.address, dialog::cancel(&attempt.invite));
                    }
                    self.bye_caller();
                    return AttemptResult::HungUp;
                }
                event = attempt.events.recv() => match event {
                    Some(Event::Response { response, .. }) if dialog::is_invite_response(&response) => {
                        let code = response.status_code.code();
                        if (101..=199).contains(&code) {
                            self.early_response(code, &response);
                        }
                        if let Some(result) = attempt_result(&gateway, attempt, response) {
                            return result;
                        }
                    }
                    Some(Event::Timeout { .. }) | None => return AttemptResult::Next,
                    Some(Event::Request { key, request, .. }) => {
                        gateway.endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(_) => {}
                },
                event = self.caller.events.recv() => match event {
                    Some(Event::Request { key, request, .. })
                        if request.method == rsip::Method::Bye
                            && self.caller.inbound.is_none()
                            && in_dialog(&request, &self.caller.dialog) =>
                    {
                        // The dialled party hung up while the Backend was being called.
                        gateway.endpoint.respond(key, self.caller.dialog.response(&request, 200, None));
                        self.caller.answered = false;
                        if attempt.provisional {
                            gateway.endpoint.request(attempt.address, dialog::cancel(&attempt.invite));
                        }
                        return AttemptResult::Cancelled;
                    }
                    Some(Event::Response { response, .. })
                        if dialog::is_invite_response(&response) && response.status_code.code() / 100 == 2 =>
                    {
                        // An originated leg's 2xx again while the Backend rings: our ACK was lost.
                        if let Some(ack) = self.caller.ack.clone() {
                            gateway.endpoint.stateless(self.caller_hop(), ack);
                        }
                    }
                    Some(Event::Request { key, request, .. }) => {
                        if request.method == rsip::Method::Cancel {
                            gateway.endpoint.respond(key, response_for(&request, 200, None));
                            self.reject(487, Vec::new());
                            if attempt.provisional {
                                gateway.endpoint.request(attempt.address, dialog::cancel(&attempt.invite));
                            }
                            return AttemptResult::Cancelled;
                        }
                        let code = if request.method == rsip::Method::Invite { 482 } else { 481 };
                        gateway.endpoint.respond(key, response_for(&request, code, None));
                    }
                    Some(_) => {}
                    None => return AttemptResult::Cancelled,
                },
                () = tokio::time::sleep_until(deadline), if !attempt.provisional => {
                    // Not even a 100 Trying: this Backend is not there (or too slow to count on).
                    return AttemptResult::Silent;
                }
                () = gateway.hang_up_requested() => {
                    // The node is going away (drain deadline, second signal): the call that is
                    // still ringing is cancelled on the Backend and refused to the caller.
                    if attempt.provisional {
                        gateway.endpoint.request(attempt.address, dialog::cancel(&attempt.invite));
                    }
                    self.reject(503, vec![gateway.retry_after_header()]);
                    return AttemptResult::Cancelled;
                }
            }
        }
    }

    /// Relays a 180/183 to the caller, with the early-media SDP rewritten when present (an
    /// originated leg, already answered, only gets the early media).
    fn early_response(&mut self, code: u16, response: &rsip::Response) {
        let sdp = parse_sdp(&response.body).map(|answer| {
            self.relay.set_peer(Side::Backend, peer_media(&answer));
            self.sdp_for(Side::Caller, &answer)
        });
        if let Some((key, invite)) = &self.caller.inbound {
            let reply = self.caller.dialog.response(invite, code, sdp);
            self.gateway.endpoint.respond(key.clone(), reply);
        }
    }

    /// ACKs the Backend's 2xx and sets up its side of the relay; returns its leg and SDP answer.
    fn confirm(
        &mut self,
        mut attempt: Attempt,
        response: rsip::Response,
    ) -> Result<(BackendLeg, AudioSdp), EndCause> {
        let ack = attempt.acknowledge(&self.gateway, &response, &mut self.rng);
        let mut leg = BackendLeg {
            dialog: attempt.dialog,
            events: attempt.events,
            address: attempt.address,
            ack,
            _lease: attempt.lease,
        };
        match parse_sdp(&response.body) {
            Some(answer) if answer.port != 0 => {
                self.relay.set_peer(Side::Backend, peer_media(&answer));
                Ok((leg, answer))
            }
            _ => {
                // Answered without usable media: hang the Backend up and tell the caller.
                self.bye(Side::Backend, &mut leg);
                self.reject(502, vec![warning("backend answered without usable SDP")]);
                Err(EndCause::Rejected)
            }
        }
    }

    /// Answers the caller with the Backend's SDP answer rewritten to this node (an originated
    /// leg answered already: the Backend took the media it answered with).
    fn answer(&mut self, mut sdp: AudioSdp) {
        // We terminate RTCP multiplexing ourselves: accept it on the caller's side whenever
        // the caller offered it, whatever the Backend chose.
        sdp.rtcp_mux = self.offer.rtcp_mux;
        let body = self.sdp_for(Side::Caller, &sdp);
        if let Some((key, invite)) = &self.caller.inbound {
            let ok = self.caller.dialog.response(invite, 200, Some(body));
            self.gateway.endpoint.respond(key.clone(), ok);
        }
        self.caller.answered = true;
        if let Some(progress) = &self.progress {
            progress.stage(Stage::Connected);
        }
        self.relay.arm();
        metrics::session_started();
        metrics::setup_time(self.started.elapsed());
    }

    /// The answered call, until one side ends it.
    async fn established(&mut self, backend: &mut BackendLeg) -> EndCause {
        let gateway = self.gateway.clone();
        let hang_up = self.progress.as_ref().map(Progress::hang_up_signal);
        loop {
            tokio::select! {
                () = signalled(hang_up.as_deref()) => {
                    tracing::info!(session = %self.id, "hung up through the API");
                    self.bye(Side::Caller, backend);
                    self.bye(Side::Backend, backend);
                    return EndCause::HungUp;
                }
                event = self.caller.events.recv() => match event {
                    Some(Event::Request { key, request, .. }) if !in_dialog(&request, &self.caller.dialog) => {
                        // Same Call-ID, other tags: not this dialog (a stray or a forged request).
                        gateway.endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(Event::Request { key, request, .. }) => match request.method {
                        rsip::Method::Bye => {
                            gateway.endpoint.respond(key, self.caller.dialog.response(&request, 200, None));
                            self.bye(Side::Backend, backend);
                            return EndCause::CallerBye;
                        }
                        rsip::Method::Invite => self.reinvite(Side::Caller, key, request, backend).await,
                        rsip::Method::Info => self.forward(Side::Caller, key, request, backend).await,
                        _ => gateway.endpoint.respond(key, answer_other(&self.caller.dialog, &request)),
                    },
                    Some(Event::Response { response, .. })
                        if dialog::is_invite_response(&response) && response.status_code.code() / 100 == 2 =>
                    {
                        // An originated leg's 2xx again: our ACK was lost.
                        if let Some(ack) = self.caller.ack.clone() {
                            gateway.endpoint.stateless(self.caller_hop(), ack);
                        }
                    }
                    Some(Event::AckTimeout { .. }) => {
                        self.bye(Side::Backend, backend);
                        self.bye(Side::Caller, backend);
                        return EndCause::AckTimeout;
                    }
                    Some(_) => {}
                    None => return EndCause::CallerBye,
                },
                event = backend.events.recv() => match event {
                    Some(Event::Request { key, request, .. }) if !in_dialog(&request, &backend.dialog) => {
                        gateway.endpoint.respond(key, response_for(&request, 481, None));
                    }
                    Some(Event::Request { key, request, .. }) => match request.method {
                        rsip::Method::Bye => {
                            gateway.endpoint.respond(key, backend.dialog.response(&request, 200, None));
                            self.bye(Side::Caller, backend);
                            return EndCause::BackendBye;
                        }
                        rsip::Method::Invite => self.reinvite(Side::Backend, key, request, backend).await,
                        rsip::Method::Info => self.forward(Side::Backend, key, request, backend).await,
                        _ => gateway.endpoint.respond(key, answer_other(&backend.dialog, &request)),
                    },
                    Some(Event::Response { response, .. })
                        if dialog::is_invite_response(&response) && response.status_code.code() / 100 == 2 =>
                    {
                        // A retransmitted 2xx: our ACK was lost.
                        let next_hop = backend.dialog.next_hop().unwrap_or(backend.address);
                        gateway.endpoint.stateless(next_hop, backend.ack.clone());
                    }
                    Some(_) => {}
                    None => return EndCause::BackendBye,
                },
                side = self.relay.silence() => {
                    tracing::info!(session = %self.id, ?side, "media timeout: ending the call");
                    self.bye(Side::Caller, backend);
                    self.bye(Side::Backend, backend);
                    return EndCause::MediaTimeout;
                }
                () = gateway.hang_up_requested() => {
                    tracing::info!(session = %self.id, "shutting down: ending the call");
                    self.bye(Side::Caller, backend);
                    self.bye(Side::Backend, backend);
                    return EndCause::Shutdown;
                }
            }
        }
    }

    /// Forwards a re-INVITE from `from` to the other side: SDP rewritten both ways, relay
    /// re-pointed, the answer mapped back. We ACK the far side's 2xx ourselves.
    async fn reinvite(
        &mut self,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
        backend: &mut BackendLeg,
    ) {
        let gateway = self.gateway.clone();
        let Some(offer) = parse_sdp(&request.body) else {
            let reply = self.dialog(from, backend).response(&request, 488, None);
            gateway.endpoint.respond(key, reply);
            return;
        };
        self.relay.set_peer(from, peer_media(&offer));
        let to = other(from);
        let sdp = self.sdp_for(to, &offer);
        let outcome = self
            .transact(to, rsip::Method::Invite, Some(sdp), backend)
            .await;
        let reply = match outcome {
            Some(response) if response.status_code.code() / 100 == 2 => {
                let cseq = voxgate_sip::message::cseq(&response).map_or(1, |(n, _)| n);
                let mut rng = self.call_rng();
                let (leg, hop) = self.leg_mut(to, backend);
                let ack = leg.ack(&mut rng, cseq);
                gateway.endpoint.stateless(hop, ack);
                match parse_sdp(&response.body) {
                    Some(answer) => {
                        self.relay.set_peer(to, peer_media(&answer));
                        let body = self.sdp_for(from, &answer);
                        self.dialog(from, backend)
                            .response(&request, 200, Some(body))
                    }
                    None => self.dialog(from, backend).response(&request, 488, None),
                }
            }
            Some(response) => {
                let code = map_failure(response.status_code.code());
                self.dialog(from, backend).response(&request, code, None)
            }
            None => self.dialog(from, backend).response(&request, 408, None),
        };
        gateway.endpoint.respond(key, reply);
    }

    /// Forwards a non-INVITE in-dialog request (INFO) and maps its final answer back.
    async fn forward(
        &mut self,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
        backend: &mut BackendLeg,
    ) {
        let body =
            (!request.body.is_empty()).then(|| String::from_utf8_lossy(&request.body).into_owned());
        let content_type = dialog::header_value(&request.headers, "Content-Type");
        let outcome = self
            .transact_with_type(other(from), request.method, body, content_type, backend)
            .await;
        let code = outcome.map_or(408, |r| map_failure(r.status_code.code()));
        let reply = self.dialog(from, backend).response(&request, code, None);
        self.gateway.endpoint.respond(key, reply);
    }

    /// Sends a request on side `to` and waits for its final response (None on timeout).
    async fn transact(
        &mut self,
        to: Side,
        method: rsip::Method,
        sdp: Option<String>,
        backend: &mut BackendLeg,
    ) -> Option<rsip::Response> {
        self.transact_with_type(to, method, sdp, Some("application/sdp".into()), backend)
            .await
    }

    async fn transact_with_type(
        &mut self,
        to: Side,
        method: rsip::Method,
        body: Option<String>,
        content_type: Option<String>,
        backend: &mut BackendLeg,
    ) -> Option<rsip::Response> {
        let mut rng = self.call_rng();
        let gateway = self.gateway.clone();
        let (leg, hop) = self.leg_mut(to, backend);
        let mut request = leg.request(&mut rng, method, None);
        if let Some(body) = body {
            let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
            voxgate_sip::message::set_body(&mut request, body.into_bytes(), Some(&content_type));
        }
        let cseq = voxgate_sip::message::cseq(&request).map(|(n, _)| n);
        gateway.endpoint.request(hop, request);
        let events = match to {
            Side::Caller => &mut self.caller.events,
            Side::Backend => &mut backend.events,
        };
        let deadline = Instant::now() + Duration::from_secs(32);
        loop {
            let event = tokio::select! {
                event = events.recv() => event?,
                () = tokio::time::sleep_until(deadline) => return None,
            };
            match event {
                Event::Response { response, .. }
                    if voxgate_sip::message::cseq(&response).map(|(n, _)| n) == cseq
                        && response.status_code.code() >= 200 =>
                {
                    return Some(response);
                }
                Event::Timeout { .. } => return None,
                // Requests crossing ours are answered so the peer does not retransmit them.
                Event::Request { key, request, .. } => {
                    let code = if request.method == rsip::Method::Invite {
                        491
                    } else {
                        200
                    };
                    gateway
                        .endpoint
                        .respond(key, response_for(&request, code, None));
                }
                _ => {}
            }
        }
    }

    /// Sends BYE on side `side` (not waiting: the transaction layer retransmits it).
    fn bye(&mut self, side: Side, backend: &mut BackendLeg) {
        if side == Side::Caller {
            return self.bye_caller();
        }
        let mut rng = self.call_rng();
        let gateway = self.gateway.clone();
        let (leg, hop) = self.leg_mut(side, backend);
        let bye = leg.bye(&mut rng);
        gateway.endpoint.request(hop, bye);
    }

    /// Sends BYE to the caller if it was answered.
    fn bye_caller(&mut self) {
        if !self.caller.answered {
            return;
        }
        self.caller.answered = false;
        let mut rng = self.call_rng();
        let hop = self.caller_hop();
        let bye = self.caller.dialog.bye(&mut rng);
        self.gateway.endpoint.request(hop, bye);
    }

    /// Where the caller's next request goes.
    fn caller_hop(&self) -> SocketAddr {
        // Over TCP, requests go back on the caller's connection (RFC 5923 style reuse): the
        // endpoint sends on an open connection to that address.
        match self.caller.transport {
            Transport::Tcp => self.caller.source,
            Transport::Udp => self.caller.dialog.next_hop().unwrap_or(self.caller.source),
        }
    }

    fn dialog<'a>(&'a self, side: Side, backend: &'a BackendLeg) -> &'a Dialog {
        match side {
            Side::Caller => &self.caller.dialog,
            Side::Backend => &backend.dialog,
        }
    }

    /// The dialog of `side` and where its next request goes.
    fn leg_mut<'a>(
        &'a mut self,
        side: Side,
        backend: &'a mut BackendLeg,
    ) -> (&'a mut Dialog, SocketAddr) {
        match side {
            Side::Caller => {
                let hop = self.caller_hop();
                (&mut self.caller.dialog, hop)
            }
            Side::Backend => {
                let hop = backend.dialog.next_hop().unwrap_or(backend.address);
                (&mut backend.dialog, hop)
            }
        }
    }

    fn call_rng(&mut self) -> SmallRng {
        use rand::SeedableRng;
        SmallRng::from_rng(&mut self.rng)
    }

    /// A final response to the caller's INVITE; an originated leg, answered already, is hung
    /// up instead.
    fn reject(&mut self, code: u16, extra: Vec<Header>) {
        if self.caller.inbound.is_some() {
            self.caller.respond(&self.gateway, code, extra);
        } else {
            self.bye_caller();
        }
    }

    /// `sdp` as this node presents it to `side`: our address and that side's relay port, our
    /// origin with a version raised each time.
    fn sdp_for(&mut self, side: Side, sdp: &AudioSdp) -> String {
        let index = match side {
            Side::Caller => 0,
            Side::Backend => 1,
        };
        self.sdp_versions[index] += 1;
        let public_ip = self.gateway.config.media.public_ip;
        let mut out = sdp.clone();
        out.origin = voxgate_sip::sdp::Origin {
            username: "voxgate".into(),
            session_id: self.id.0,
            session_version: self.sdp_versions[index],
            address: public_ip,
        };
        out.session_name = "voxgate".into();
        out.connection = public_ip;
        if out.port != 0 {
            out.port = match side {
                Side::Caller => self.ports.0,
                Side::Backend => self.ports.1,
            };
        }
        out.rtcp = None;
        out.to_string()
    }
}

/// What a response to an attempt's INVITE means: `None` for a provisional one (noted in
/// `attempt`), else the attempt's result. A 503 cools the Backend down for its Retry-After.
pub(crate) fn attempt_result(
    gateway: &Gateway,
    attempt: &mut Attempt,
    response: rsip::Response,
) -> Option<AttemptResult> {
    let code = response.status_code.code();
    Some(match code {
        100..=199 => {
            attempt.provisional = true;
            return None;
        }
        200..=299 => AttemptResult::Answered(response),
        503 => {
            let cooldown = retry_after(&response).unwrap_or(DEFAULT_COOLDOWN);
            if let Some(id) = &attempt.backend {
                let until = Instant::now().into_std() + cooldown;
                gateway.picker.cool_down(id, until);
            }
            AttemptResult::Next
        }
        408 | 500..=599 => AttemptResult::Next,
        // Redirects would reveal the Backend's contacts: the caller sees 480.
        300..=399 => AttemptResult::Reject(480),
        _ => AttemptResult::Reject(code),
    })
}

/// A Backend that sent not even a 100 Trying within the INVITE timeout is likely gone: hold it
/// out for a probe interval, so the next calls do not each wait on it before probing (three
/// misses) marks it down, and see its INVITE to an end in the background.
pub(crate) fn give_up_silent(gateway: &Arc<Gateway>, attempt: Attempt, rng: SmallRng) {
    if let Some(id) = &attempt.backend {
        let until = Instant::now().into_std() + gateway.config.health.interval;
        gateway.picker.cool_down(id, until);
    }
    tokio::spawn(wind_down(gateway.clone(), attempt, rng));
}

/// After the caller cancelled, or after the Backend stayed silent past the INVITE timeout: sees
/// the Backend's INVITE to its end. The CANCEL goes out once the
/// Backend has sent a provisional response (RFC 3261 9.1); a 2xx that crossed the CANCEL is
/// ACKed and hung up at once, so the Backend is not left holding a call nobody listens to.
pub(crate) async fn wind_down(gateway: Arc<Gateway>, mut attempt: Attempt, mut rng: SmallRng) {
    let deadline = Instant::now() + Duration::from_secs(32);
    let mut cancelled = attempt.provisional;
    loop {
        let event = tokio::select! {
            event = attempt.events.recv() => event,
            () = tokio::time::sleep_until(deadline) => return,
        };
        match event {
            Some(Event::Response { response, .. }) if dialog::is_invite_response(&response) => {
                match response.status_code.code() {
                    100..=199 if !cancelled => {
                        cancelled = true;
                        gateway
                            .endpoint
                            .request(attempt.address, dialog::cancel(&attempt.invite));
                    }
                    100..=199 => {}
                    200..=299 => {
                        attempt.acknowledge(&gateway, &response, &mut rng);
                        let hop = attempt.dialog.next_hop().unwrap_or(attempt.address);
                        gateway.endpoint.request(hop, attempt.dialog.bye(&mut rng));
                        return;
                    }
                    // The transaction layer ACKs the 487 (or any other final answer).
                    _ => return,
                }
            }
            Some(Event::Timeout { .. }) | None => return,
            Some(_) => {}
        }
    }
}

/// Whether an in-dialog request belongs to `dialog`: its From tag is the peer's and its To tag
/// ours (RFC 3261 12.2.2), not just the same Call-ID.
pub(crate) fn in_dialog(request: &rsip::Request, dialog: &Dialog) -> bool {
    voxgate_sip::message::to_tag(request).as_deref() == Some(dialog.local_tag.as_str())
        && voxgate_sip::message::from_tag(request) == dialog.remote_tag
}

/// The answer to an in-dialog request the B2BUA does not forward: OPTIONS 200, else 405 with
/// the methods it does handle.
pub(crate) fn answer_other(dialog: &Dialog, request: &rsip::Request) -> rsip::Response {
    if request.method == rsip::Method::Options {
        return dialog.response(request, 200, None);
    }
    let mut response = dialog.response(request, 405, None);
    response
        .headers
        .push(Header::Allow(crate::dispatch::ALLOW.into()));
    response
}

fn other(side: Side) -> Side {
    match side {
        Side::Caller => Side::Backend,
        Side::Backend => Side::Caller,
    }
}

/// A failure code as the other side gets it: a 503 is never passed on (RFC 3261 16.7); it is
/// this node's to give, with its own Retry-After.
fn map_failure(code: u16) -> u16 {
    match code {
        503 => 500,
        300..=399 => 480,
        other => other,
    }
}

/// The media a peer announced in `sdp`.
fn peer_media(sdp: &AudioSdp) -> PeerMedia {
    let rtp = SocketAddr::new(sdp.connection, sdp.port);
    let rtcp_port = sdp.rtcp.unwrap_or(sdp.port.saturating_add(1));
    PeerMedia {
        rtp,
        rtcp: SocketAddr::new(sdp.connection, rtcp_port),
        mux: sdp.rtcp_mux,
        sends: sdp.port != 0 && matches!(sdp.direction, Direction::SendRecv | Direction::SendOnly),
    }
}

pub(crate) fn parse_sdp(body: &[u8]) -> Option<AudioSdp> {
    let text = std::str::from_utf8(body).ok()?;
    AudioSdp::parse(text).ok()
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
