//! SIP sessions on the RTP relay: an inbound call (a trunk or softphone calling in, or a Backend
//! calling out through a trunk) and an originated call (`POST /v1/calls`). Each is one engine
//! [`Session`] driven here: this task only carries its inputs and outputs, the relay follows its
//! media commands, and the node slot, the relay's ports and the session's table entry are
//! released the moment it reports its end.
//!
//! Topology hiding: each leg is a dialog of its own (own Call-ID, tags, Via, Contact), and both
//! SDPs point at this node, so neither side sees the other's addresses.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use voxgate_cluster::{BackendLease, SessionSlot};
use voxgate_core::RegionId;
use voxgate_endpoint::Route;
use voxgate_media::dtmf::{DtmfGenerator, EventStream};
use voxgate_session::{
    CallerSpec, Dialled, End, EndCause, IdentityPolicy, Inbound, Input, MediaCommand, Output,
    Progress, Session, TransferMode,
};
use voxgate_sip::sdp::CodecKind;
use voxgate_sip::{Event, TransactionKey, Transport};

use crate::control::{self, DtmfRefusal, LegView, MediaView, SessionCommand, SessionView};
use crate::driver::{Destination, SessionDriver};
use crate::gateway::{Gateway, SessionInfo};
use crate::metrics;
use crate::outbound::{self, CallRequest, Outcome, Stage};
use crate::records::{self, Draft, EndedBy, Ending, SessionKind};
use crate::relay::{Relay, RelayAlarm, RelaySockets, Side};
use crate::transfer;

/// How long a record waits for its relay's statistics before it is written without them.
const STATS_WAIT: Duration = Duration::from_secs(2);

/// A new call's INVITE as the dispatcher received it, with its dialog already routed to
/// `events` (so that a CANCEL right behind it finds the call).
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
    /// The session's event channel, its dialog's route already pointing at it.
    pub events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    /// The route of the INVITE's Call-ID.
    pub route: Route,
    /// When the dispatcher took the INVITE.
    pub arrived: Instant,
    /// A trunk's (or softphone's) call in, or a Backend's call out.
    pub kind: SessionKind,
    /// The trunk, by name: the one the call came from (in), or goes through (out).
    pub trunk: Option<String>,
    /// What of the INVITE crosses to the far side (the trunk's identity policy).
    pub identity: IdentityPolicy,
}

/// Runs one inbound call from its INVITE to its end. `slot` is this call's share of the node
/// cap.
pub async fn run(
    gateway: Arc<Gateway>,
    slot: SessionSlot,
    caller: Caller,
    region: RegionId,
    destination: Destination,
) {
    let id = gateway.new_session_id();
    let mut draft = Draft::new(
        &gateway.records,
        caller.kind,
        Some(id),
        &region,
        caller.arrived,
    );
    draft.caller_invite(&caller.invite);
    draft.trunk(caller.trunk.clone());
    let sockets = match RelaySockets::bind(&gateway.ports, gateway.config.media.bind_ip) {
        Ok(sockets) => sockets,
        Err(err) => {
            tracing::warn!(%err, "no media ports for a new call");
            metrics::session_rejected("media_ports");
            let ending = Ending {
                cause: "media_ports",
                by: EndedBy::Node,
                code: None,
                caller_code: Some(503),
            };
            gateway
                .records
                .submit(draft.finish(ending, Instant::now(), None));
            let mut refusal = voxgate_sip::message::response_for(&caller.invite, 503, None);
            refusal.headers.push(gateway.retry_after_header());
            gateway.endpoint.respond(caller.key, refusal);
            return;
        }
    };
    let ports = [sockets.port(Side::Caller), sockets.port(Side::Backend)];
    let relay = Relay::start(sockets, gateway.config.media.timeout);
    let caller_call_id = voxgate_sip::message::call_id(&caller.invite)
        .unwrap_or_default()
        .to_owned();
    let mut config = SessionDriver::config(&gateway, id, ports);
    // A Backend's own call out through a trunk transfers nobody; a trunk's caller as it says.
    let trunk = match &destination {
        Destination::Backend { .. } => caller.trunk.clone(),
        Destination::Trunk { .. } => None,
    };
    config.transfer = match &destination {
        Destination::Backend { .. } => transfer::mode(&gateway, trunk.as_deref()),
        Destination::Trunk { .. } => TransferMode::Off,
    };
    config.identity = caller.identity;
    // A Backend's call out answers its trunk's challenges.
    config.trunk_credentials = match &destination {
        Destination::Trunk { .. } => caller
            .trunk
            .as_ref()
            .and_then(|name| gateway.trunk_credentials.get(name).cloned()),
        Destination::Backend { .. } => None,
    };
    let spec = CallerSpec::Inbound(Inbound {
        key: caller.key,
        source: caller.source,
        transport: caller.transport,
        invite: caller.invite,
    });
    let session = Session::new(config, spec, Instant::now().into_std());
    let (commands, command_rx) = control::channel();
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id,
            backend_call_id: None,
            peer: None,
            region,
            ports: (ports[0], ports[1]),
            kind: caller.kind,
            trunk: caller.trunk.clone(),
            commands,
        },
    );
    let driver = SessionDriver::new(
        gateway.endpoint.clone(),
        gateway.picker.clone(),
        id,
        session,
        destination,
        caller.events,
        vec![caller.route],
    );
    SipSession::new(gateway, driver, relay, slot, None, trunk, draft, command_rx)
        .run()
        .await;
}

/// Runs one originated call (`POST /v1/calls`): dials `request.to` through its trunk, and once
/// the number answers, bridges it to the Backend of `lease` (failing over to others of the
/// region unless the operator pinned it). `progress` hears every step and the outcome.
pub async fn originate(
    gateway: Arc<Gateway>,
    slot: SessionSlot,
    lease: BackendLease,
    request: CallRequest,
    progress: outbound::Progress,
) {
    let Some(trunk) = request.trunk.outbound else {
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
    let ports = [sockets.port(Side::Caller), sockets.port(Side::Backend)];
    let relay = Relay::start(sockets, gateway.config.media.timeout);
    let id = gateway.new_session_id();
    progress.session(id);
    let mut draft = Draft::new(
        &gateway.records,
        SessionKind::Originated,
        Some(id),
        &request.region,
        Instant::now(),
    );
    draft.caller(None, Some(request.from.clone()), Some(request.to.clone()));
    draft.trunk(Some(request.trunk.name.clone()));
    let mut config = SessionDriver::config(&gateway, id, ports);
    if progress.pinned() {
        // An operator's chosen Backend is that Backend or none.
        config.max_attempts = 1;
    }
    config.transfer = transfer::mode(&gateway, Some(&request.trunk.name));
    config.trunk_credentials = gateway.trunk_credentials.get(&request.trunk.name).cloned();
    let trunk_name = request.trunk.name.clone();
    // Lets the Backend match the call to the API request that originated it.
    config
        .far_headers
        .push(("X-Voxgate-Call".into(), progress.id().into()));
    // The carrier sees its own domain when the trunk names one.
    let host = request
        .trunk
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| trunk.to_string());
    let spec = CallerSpec::Dialled(Dialled {
        address: trunk,
        from: request.from.clone(),
        to: request.to.clone(),
        host,
        ring_timeout: gateway.config.outbound.ring_timeout,
    });
    let session = Session::new(config, spec, Instant::now().into_std());
    let (commands, command_rx) = control::channel();
    gateway.add_session(
        id,
        SessionInfo {
            caller_call_id: String::new(),
            backend_call_id: None,
            peer: None,
            region: request.region.clone(),
            ports: (ports[0], ports[1]),
            kind: SessionKind::Originated,
            trunk: Some(trunk_name.clone()),
            commands,
        },
    );
    let destination = Destination::Backend {
        region: request.region,
        first: Some(lease),
    };
    let driver = SessionDriver::new(
        gateway.endpoint.clone(),
        gateway.picker.clone(),
        id,
        session,
        destination,
        mpsc::channel(voxgate_endpoint::DIALOG_QUEUE),
        Vec::new(),
    );
    SipSession::new(
        gateway,
        driver,
        relay,
        slot,
        Some(progress),
        Some(trunk_name),
        draft,
        command_rx,
    )
    .run()
    .await;
}

/// A SIP session's task: the engine's driver and what the session holds until its end.
struct SipSession {
    gateway: Arc<Gateway>,
    driver: SessionDriver,
    relay: Option<Relay>,
    slot: Option<SessionSlot>,
    progress: Option<outbound::Progress>,
    hang_up: Option<Arc<Notify>>,
    started: Instant,
    /// The trunk the caller came through (or was dialled on): transfers may go out on it.
    trunk: Option<String>,
    /// The call record, until the end.
    draft: Option<Draft>,
    /// Operator commands (`/v1/sessions/{id}`).
    commands: mpsc::Receiver<SessionCommand>,
    /// What an operator sees: `calling`, `ringing`, `connected`, ...
    state: &'static str,
    /// The codec both legs carry, once answered.
    codec: Option<String>,
    /// The telephone-event (payload type, clock rate) both legs carry, once answered.
    event: Option<(u8, u32)>,
    /// RFC 4733 events toward the caller, on an SSRC of their own, made on first use.
    dtmf: Option<DtmfTrain>,
}

/// The DTMF stream this node sends toward a caller: its own SSRC (the relay forwards the
/// Backend's RTP untouched, so continuing the Backend's sequence numbers would mean rewriting
/// every later packet), timestamps that run on with the wall clock from a random origin.
struct DtmfTrain {
    generator: DtmfGenerator,
    stream: EventStream,
    origin: Instant,
    base: u32,
    /// When the digits queued so far have been sent.
    busy_until: Instant,
}

impl SipSession {
    #[allow(clippy::too_many_arguments)] // two call sites, each passing what it built
    fn new(
        gateway: Arc<Gateway>,
        driver: SessionDriver,
        relay: Relay,
        slot: SessionSlot,
        progress: Option<outbound::Progress>,
        trunk: Option<String>,
        draft: Draft,
        commands: mpsc::Receiver<SessionCommand>,
    ) -> Self {
        let hang_up = progress.as_ref().map(outbound::Progress::hang_up_signal);
        let state = if progress.is_some() {
            "dialing"
        } else {
            "calling"
        };
        Self {
            gateway,
            driver,
            relay: Some(relay),
            slot: Some(slot),
            progress,
            hang_up,
            started: Instant::now(),
            trunk,
            draft: Some(draft),
            commands,
            state,
            codec: None,
            event: None,
            dtmf: None,
        }
    }

    /// Carries the session until it is finished (ended, and its wound-down INVITEs seen out).
    async fn run(mut self) {
        let gateway = self.gateway.clone();
        loop {
            while let Some(output) = self.driver.poll() {
                self.on_output(output);
            }
            if self.driver.session.is_finished() {
                self.driver.close();
                while let Some(output) = self.driver.poll() {
                    self.on_output(output);
                }
                break;
            }
            let live = self.driver.session.ended().is_none();
            let deadline = self.driver.deadline();
            tokio::select! {
                // Never `None`: the driver holds a sender of its own queue.
                Some(event) = self.driver.next_event() => self.driver.handle(Input::Sip(event)),
                alarm = alarm(&mut self.relay), if live => match alarm {
                    RelayAlarm::Silent(side) => {
                        tracing::debug!(session = %self.driver.id, ?side, "media timeout: ending the call");
                        self.driver.handle(Input::MediaTimeout(side));
                    }
                    RelayAlarm::Lost => {
                        tracing::warn!(session = %self.driver.id, "media relay lost: ending the call");
                        self.driver.handle(Input::MediaLost);
                    }
                },
                () = signalled(self.hang_up.as_deref()), if live => self.driver.handle(Input::HangUp),
                Some(command) = self.commands.recv() => self.on_command(command, live),
                () = gateway.hang_up_requested(), if live => self.driver.handle(Input::Shutdown),
                () = sleep_until(deadline) => self.driver.handle_timeout(),
            }
        }
    }

    /// Carries out an operator's command (refused once the session is ending).
    fn on_command(&mut self, command: SessionCommand, live: bool) {
        match command {
            SessionCommand::View { reply } => self.view(reply),
            command if !live => control::refuse(command),
            SessionCommand::HangUp => self.driver.handle(Input::HangUp),
            SessionCommand::Transfer { to, reply } => {
                let _ = reply.send(self.driver.session.transfer(to));
            }
            SessionCommand::Dtmf { digits, reply } => {
                let _ = reply.send(self.dtmf(&digits));
            }
        }
    }

    /// Queues `digits` toward the caller as RFC 4733 events at the caller leg's event payload
    /// type and clock, after any digits still being sent.
    fn dtmf(&mut self, digits: &str) -> Result<(), DtmfRefusal> {
        if self.state != "connected" {
            return Err(DtmfRefusal::NotConnected);
        }
        if transfer::dtmf_by_info(&self.gateway, self.trunk.as_deref()) {
            // One INFO per digit, in order, in the caller's dialog (the de facto
            // application/dtmf-relay body: the digit and its duration in ms).
            for digit in digits.chars() {
                let body = format!("Signal={digit}\r\nDuration=160\r\n").into_bytes();
                self.driver
                    .session
                    .info_to_caller("application/dtmf-relay", body)
                    .map_err(|_| DtmfRefusal::Unavailable)?;
            }
            return Ok(());
        }
        let ((payload_type, clock_rate), Some(relay)) = (
            self.event.ok_or(DtmfRefusal::Unavailable)?,
            self.relay.as_ref(),
        ) else {
            return Err(DtmfRefusal::Unavailable);
        };
        let now = Instant::now();
        let train = self.dtmf.get_or_insert_with(|| {
            let mut rng = self.gateway.call_rng();
            let stream = EventStream {
                payload_type,
                clock_rate,
                ssrc: rng.random(),
            };
            DtmfTrain {
                generator: DtmfGenerator::new(stream, rng.random(), 0),
                stream,
                origin: now,
                base: rng.random(),
                busy_until: now,
            }
        });
        let start = train.busy_until.max(now);
        let elapsed = start.duration_since(train.origin).as_micros();
        let units = elapsed * u128::from(clock_rate) / 1_000_000;
        // The timestamp field wraps, so only the low 32 bits of the clock count.
        #[allow(clippy::cast_possible_truncation)]
        let timestamp = train.base.wrapping_add(units as u32);
        train.generator = DtmfGenerator::new(train.stream, train.generator.sequence(), timestamp);
        let packets = train
            .generator
            .digits(digits)
            .map_err(|_| DtmfRefusal::Unavailable)?;
        let last = packets.last().map_or(Duration::ZERO, |p| p.offset);
        train.busy_until = start + last + DtmfGenerator::GAP;
        let injector = relay.injector();
        tokio::spawn(async move {
            for packet in packets {
                tokio::time::sleep_until(start + packet.offset).await;
                injector.send(Side::Caller, packet.packet);
            }
        });
        Ok(())
    }

    /// Answers `reply` with the session as it is now, with the relay's counters (fetched off
    /// this task: the worker answers within a wake-up).
    fn view(&self, reply: oneshot::Sender<SessionView>) {
        let info = self.gateway.session(self.driver.id);
        let caller_call_id = info
            .as_ref()
            .map(|i| i.caller_call_id.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| self.driver.first_dialog().map(str::to_owned));
        let mut view = SessionView {
            state: self.state,
            age_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            caller: LegView {
                call_id: caller_call_id,
                codec: self.codec.clone(),
                media: None,
            },
            backend: LegView {
                call_id: info.and_then(|i| i.backend_call_id),
                codec: self.codec.clone(),
                media: None,
            },
        };
        let Some(relay) = &self.relay else {
            let _ = reply.send(view);
            return;
        };
        let stats = relay.snapshot();
        tokio::spawn(async move {
            if let Ok(Ok([caller, backend])) = tokio::time::timeout(STATS_WAIT, stats).await {
                view.caller.media = Some(MediaView::from(&caller));
                view.backend.media = Some(MediaView::from(&backend));
            }
            let _ = reply.send(view);
        });
    }

    fn on_output(&mut self, output: Output) {
        let id = self.driver.id;
        if let Output::Progress(progress) = &output {
            self.state = control::state_after(progress, self.state);
        }
        if let (Output::Progress(progress), Some(draft)) = (&output, self.draft.as_mut()) {
            draft.progress(progress, Instant::now());
        }
        match output {
            Output::Media(MediaCommand::Peer(side, media)) => {
                if let Some(relay) = &self.relay {
                    relay.set_peer(side, media);
                }
            }
            Output::Media(MediaCommand::Arm) => {
                if let Some(relay) = &self.relay {
                    relay.arm();
                }
            }
            Output::Progress(Progress::Calling {
                backend,
                address,
                call_id,
            }) => {
                let peer = backend
                    .as_ref()
                    .map_or_else(|| address.to_string(), ToString::to_string);
                self.gateway.set_session_peer(id, &call_id, peer);
                if let (Some(progress), Some(backend)) = (&self.progress, &backend) {
                    progress.backend(backend);
                }
            }
            Output::Progress(Progress::Bridging) => {
                if let Some(progress) = &self.progress {
                    progress.stage(Stage::Bridging);
                }
            }
            Output::Progress(Progress::Connected) => {
                metrics::session_started();
                metrics::setup_time(self.started.elapsed());
                if let Some(progress) = &self.progress {
                    progress.stage(Stage::Connected);
                }
            }
            Output::Transfer { to } => {
                let target = transfer::target(&self.gateway, &to, self.trunk.as_deref());
                self.driver.handle(Input::TransferTarget(target));
            }
            Output::Progress(Progress::Transferring { to }) => {
                tracing::debug!(session = %id, %to, "transferring the caller");
            }
            Output::Progress(Progress::Transferred { to, code }) => {
                let outcome = transfer::outcome(code);
                metrics::transfer_ended(outcome);
                tracing::info!(session = %id, %to, code, "transfer ended");
                if let Some(draft) = self.draft.as_mut() {
                    draft.transfer(to, outcome.to_owned());
                }
            }
            Output::Answered(answer) => {
                // The relay carries one codec end to end: the far side's choice, on both legs.
                let codec = records::first_audio(&answer.codecs);
                self.codec = codec.map(control::codec_name);
                self.event = codec.and_then(|audio| {
                    answer
                        .codecs
                        .iter()
                        .filter(|c| c.kind == CodecKind::TelephoneEvent)
                        .find(|c| c.clock_rate == audio.clock_rate)
                        .or_else(|| answer.telephone_event())
                        .map(|c| (c.payload_type, c.clock_rate))
                });
                if let Some(draft) = self.draft.as_mut() {
                    draft.codec(Side::Caller, codec);
                    draft.codec(Side::Backend, codec);
                }
            }
            Output::Ended(end) => self.ended(end),
            _ => {}
        }
    }

    /// Counts the end and releases the slot, the relay's ports and the table entry.
    fn ended(&mut self, end: End) {
        let id = self.driver.id;
        self.state = "ending";
        match self.progress.take() {
            Some(progress) => {
                let (outcome, code, cause) = outcome(end);
                if end.caller_up {
                    metrics::session_ended(end.cause.as_str());
                }
                progress.finish(outcome, code, cause);
            }
            None => match end.cause {
                // The caller's own offer was unusable: refused before it was a session.
                EndCause::BadSdp if !end.far_called => metrics::session_rejected("bad_sdp"),
                EndCause::NoBackend => {
                    metrics::session_rejected("no_backend");
                    metrics::session_ended(end.cause.as_str());
                }
                cause => metrics::session_ended(cause.as_str()),
            },
        }
        self.gateway.remove_session(id);
        let stats = self.relay.take().map(Relay::stop);
        self.slot = None;
        if let Some(mut draft) = self.draft.take() {
            // A dialled number's dialog is the first this session opened.
            draft.caller_call_id_if_unset(self.driver.first_dialog());
            let gateway = self.gateway.clone();
            let ended = Instant::now();
            // The relay's worker hands its statistics back within a wake-up; the record waits
            // for them off this task.
            tokio::spawn(async move {
                let stats = match stats {
                    Some(rx) => tokio::time::timeout(STATS_WAIT, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                let record = draft.finish(end.into(), ended, stats.as_ref());
                gateway.records.submit(record);
            });
        }
    }
}

/// An originated call's outcome, the trunk's code and the end cause of a bridged call.
fn outcome(end: End) -> (Outcome, Option<u16>, Option<&'static str>) {
    let cause = end.cause;
    if !end.caller_up {
        let outcome = match (cause, end.code) {
            (EndCause::Rejected, Some(486 | 600)) => Outcome::Busy,
            (EndCause::Rejected, Some(408 | 480 | 487)) | (EndCause::RingTimeout, _) => {
                Outcome::NoAnswer
            }
            (EndCause::Shutdown, _) => Outcome::Shutdown,
            (EndCause::HungUp, _) => Outcome::Cancelled,
            _ => Outcome::Failed,
        };
        let code = (cause == EndCause::Rejected).then_some(end.code).flatten();
        return (outcome, code, None);
    }
    if cause == EndCause::BadSdp && !end.far_called {
        // The number answered without media this node can carry; it was hung up.
        return (Outcome::Failed, Some(200), Some("answer_without_sdp"));
    }
    let outcome = if end.connected {
        Outcome::Completed
    } else {
        match cause {
            EndCause::Shutdown => Outcome::Shutdown,
            EndCause::HungUp => Outcome::Cancelled,
            EndCause::NoBackend | EndCause::Rejected | EndCause::BadSdp => Outcome::NoBackend,
            _ => Outcome::Failed,
        }
    };
    (outcome, None, Some(cause.as_str()))
}

/// The relay's next alarm; pending forever once the relay is gone.
async fn alarm(relay: &mut Option<Relay>) -> RelayAlarm {
    match relay {
        Some(relay) => relay.alarm().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `signal` is notified; never without one.
async fn signalled(signal: Option<&Notify>) {
    match signal {
        Some(signal) => signal.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(cause: EndCause, code: Option<u16>, caller_up: bool, connected: bool) -> End {
        End {
            cause,
            code,
            caller_up,
            connected,
            far_called: connected || cause == EndCause::NoBackend,
            by: None,
            caller_code: None,
        }
    }

    #[test]
    fn originated_outcomes() {
        let cases = [
            (
                end(EndCause::Rejected, Some(486), false, false),
                Outcome::Busy,
            ),
            (
                end(EndCause::Rejected, Some(480), false, false),
                Outcome::NoAnswer,
            ),
            (
                end(EndCause::RingTimeout, None, false, false),
                Outcome::NoAnswer,
            ),
            (
                end(EndCause::Rejected, Some(404), false, false),
                Outcome::Failed,
            ),
            (end(EndCause::Silent, None, false, false), Outcome::Failed),
            (
                end(EndCause::HungUp, None, false, false),
                Outcome::Cancelled,
            ),
            (
                end(EndCause::NoBackend, None, true, false),
                Outcome::NoBackend,
            ),
            (end(EndCause::HungUp, None, true, true), Outcome::Completed),
            (
                end(EndCause::Shutdown, None, true, false),
                Outcome::Shutdown,
            ),
        ];
        for (end, expected) in cases {
            assert_eq!(outcome(end).0, expected, "{end:?}");
        }
        assert_eq!(
            outcome(end(EndCause::Rejected, Some(486), false, false)).1,
            Some(486)
        );
    }
}
