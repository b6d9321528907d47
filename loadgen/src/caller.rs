//! `voxgate-loadgen call`: a SIP UAC that places calls at a rate, holds them with G.711 RTP and
//! measures setup time, media round trip, loss and jitter.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use voxgate_sip::Event;
use voxgate_sip::sdp::{AudioSdp, Codec, CodecKind};

use crate::media::{MediaEngine, StreamResult};
use crate::occupancy::{Span, SpanKind};
use crate::probe::G711;
use crate::progress::Progress;
use crate::report::{
    CallCounts, Limits, Percentiles, Report, RtpCounts, Settings, SipCounts, ratio,
};
use voxgate_endpoint::{DialogEvents, Endpoint};
use voxgate_sip::dialog::{self, Dialog};
use voxgate_sip::message::response_for;

/// How long to keep listening for echoes after the last packet was sent.
const ECHO_DRAIN: Duration = Duration::from_millis(300);
/// How long a BYE may take before the call counts as failed.
const BYE_TIMEOUT: Duration = Duration::from_secs(32);

/// What `call` is asked to do.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Where INVITEs go.
    pub target: SocketAddr,
    /// User part of the Request-URI.
    pub user: String,
    /// Local SIP address (port 0: any).
    pub bind: SocketAddr,
    /// Calls started per second.
    pub rate: f64,
    /// Most calls up at once.
    pub concurrency: u64,
    /// Calls to place.
    pub total: u64,
    /// How long each answered call is held with media.
    pub hold: Duration,
    /// Give up (CANCEL) when no final response arrives in this time.
    pub answer_timeout: Duration,
    /// G.711 flavour offered first.
    pub codec: G711,
    /// Seed for Call-IDs, tags, SSRCs.
    pub seed: u64,
    /// Limits that decide the exit code.
    pub limits: Limits,
    /// No progress line.
    pub quiet: bool,
    /// End an answered call as "media stopped" when no echo arrived for this long (None: never).
    pub media_timeout: Option<Duration>,
}

/// Why an answered call ended before its hold time because the far side ended it.
pub const ENDED_BY_FAR_SIDE: &str = "ended by the far side";
/// Why an answered call ended before its hold time because its echo stopped
/// ([`CallPlan::media_timeout`]).
pub const MEDIA_STOPPED: &str = "media stopped";
/// Why a call waiting for its answer was given up by [`CallContext::abandon_unanswered`].
pub const ABANDONED: &str = "abandoned: the target went away";

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    started: AtomicU64,
    /// Calls in progress.
    pub active: AtomicU64,
    peak_active: AtomicU64,
    /// Calls ended.
    pub finished: AtomicU64,
    /// Calls answered with a 2xx.
    pub answered: AtomicU64,
    /// Calls ended by a final non-2xx.
    pub rejected: AtomicU64,
    /// Calls timed out or failed.
    pub failed: AtomicU64,
    first_start_us: AtomicU64,
    last_start_us: AtomicU64,
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, held, and ended by our BYE.
    Completed,
    /// A final non-2xx to the INVITE.
    Rejected(u16),
    /// No final response in time.
    TimedOut,
    /// Anything else, with the reason.
    Failed(&'static str),
}

/// What one call measured. Times are since the run's epoch.
#[derive(Debug)]
pub struct CallRecord {
    /// How it ended.
    pub outcome: Outcome,
    /// Whether a 2xx came.
    pub answered: bool,
    /// INVITE sent to 2xx received.
    pub setup: Option<Duration>,
    /// When the INVITE was sent.
    pub started_at: Duration,
    /// When the 2xx came.
    pub answered_at: Option<Duration>,
    /// When the last echo of its media came.
    pub last_echo_at: Option<Duration>,
    /// When it stopped sending media (its hold was up, or it ended early).
    pub media_end_at: Option<Duration>,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// Echoes received.
    pub rtp_received: u64,
    /// RFC 3550 jitter of the echo.
    pub jitter_seconds: Option<f64>,
    /// When this side sent its BYE.
    pub bye_sent_at: Option<Duration>,
}

impl CallRecord {
    /// The time it was up as its caller saw it (see [`crate::occupancy`](mod@crate::occupancy)): from the 2xx to our
    /// BYE when it completed, else to its last sign of life.
    pub fn span(&self) -> Option<Span> {
        let up = self.answered_at?;
        let down = match (&self.outcome, self.bye_sent_at) {
            (Outcome::Completed, Some(bye)) => bye,
            _ => self.last_echo_at.unwrap_or(up).max(up),
        };
        Some(Span::since_epoch(SpanKind::Call, up, down))
    }
}

/// What every call of a run shares: the plan, the SIP endpoint, the media engine, the counters.
pub struct CallContext {
    /// The plan (`call` holds every call for its `hold`; `soak` draws a hold per call).
    pub plan: CallPlan,
    endpoint: Endpoint,
    /// The shared media engine.
    pub media: MediaEngine,
    /// The run's time origin.
    pub epoch: Instant,
    /// Live counters.
    pub live: Live,
    abandon: tokio::sync::watch::Sender<bool>,
}

impl CallContext {
    /// Binds the SIP endpoint and the media engine for `plan`; the epoch is now.
    pub async fn start(plan: CallPlan) -> anyhow::Result<Arc<Self>> {
        let local_ip = local_ip_towards(plan.bind, plan.target).await?;
        let bind = SocketAddr::new(local_ip, plan.bind.port());
        let (endpoint, mut strays) = Endpoint::bind(bind, Default::default()).await?;
        // Requests that match no live call (a late BYE, OPTIONS) get an answer, not silence.
        let stray_endpoint = endpoint.clone();
        tokio::spawn(async move {
            while let Some(event) = strays.recv().await {
                if let Event::Request { key, request, .. } = event {
                    let code = match request.method {
                        rsip::Method::Options => 200,
                        _ => 481,
                    };
                    stray_endpoint.respond(key, response_for(&request, code, None));
                }
            }
        });
        let epoch = Instant::now();
        Ok(Arc::new(CallContext {
            plan,
            endpoint,
            media: MediaEngine::start(local_ip, epoch)?,
            epoch,
            live: Live::default(),
            abandon: tokio::sync::watch::channel(false).0,
        }))
    }

    /// Gives up every call still waiting for its final response (now and later), as
    /// `Failed(ABANDONED)`: the target is known to be gone, so waiting for Timer B is pointless.
    pub fn abandon_unanswered(&self) {
        self.abandon.send_replace(true);
    }

    /// SIP datagrams sent, received and malformed so far.
    pub fn sip_counts(&self) -> SipCounts {
        let counters = self.endpoint.counters();
        SipCounts {
            sent: counters.sent.load(Ordering::Relaxed),
            received: counters.received.load(Ordering::Relaxed),
            malformed: counters.malformed.load(Ordering::Relaxed),
        }
    }

    /// Calls started per second between the first and the last INVITE.
    pub fn achieved_rate(&self) -> f64 {
        achieved_rate(&self.live)
    }

    /// Most calls up at once so far.
    pub fn peak_active(&self) -> u64 {
        self.live.peak_active.load(Ordering::Relaxed)
    }
}

/// Runs the plan and returns its report (already judged against the plan's limits).
pub async fn run(plan: CallPlan) -> anyhow::Result<Report> {
    let context = CallContext::start(plan.clone()).await?;
    let (records_tx, mut records) = mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let launcher = tokio::spawn(launch(context.clone(), records_tx, stop.clone()));

    let progress = Progress::new(plan.total, plan.quiet);
    let mut totals = Totals::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut interrupted = false;
    loop {
        tokio::select! {
            record = records.recv() => match record {
                Some(record) => totals.add(record),
                None => break,
            },
            _ = tick.tick() => {
                let line = progress_line(&context, &totals);
                progress.update(context.epoch.elapsed(), context.live.finished.load(Ordering::Relaxed), &line);
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                stop.notify_one();
                progress.update(context.epoch.elapsed(), context.live.finished.load(Ordering::Relaxed),
                    "interrupted: no new calls; waiting for active calls to end (Ctrl-C again to abort)");
            }
            _ = tokio::signal::ctrl_c(), if interrupted => anyhow::bail!("aborted"),
        }
    }
    launcher.await.context("launcher task")?;
    progress.finish();

    let elapsed = context.epoch.elapsed();
    let mut report = totals.into_report(&plan, elapsed);
    let media = context.media.counters();
    report.rtp.foreign = media.foreign.load(Ordering::Relaxed);
    report.rtp.send_errors = media.send_errors.load(Ordering::Relaxed);
    report.media_rtt_ms = Percentiles::from_micros(&context.media.rtt_histogram());
    report.calls.achieved_rate = context.achieved_rate();
    report.calls.peak_concurrency = context.peak_active();
    report.sip = context.sip_counts();
    report.judge(plan.limits);
    Ok(report)
}

/// Calls started per second between the first and the last INVITE.
fn achieved_rate(live: &Live) -> f64 {
    let started = live.started.load(Ordering::Relaxed);
    let first = live.first_start_us.load(Ordering::Relaxed);
    let last = live.last_start_us.load(Ordering::Relaxed);
    if started < 2 || last <= first {
        return 0.0;
    }
    (started - 1) as f64 / ((last - first) as f64 / 1e6)
}

async fn launch(
    context: Arc<CallContext>,
    records: mpsc::UnboundedSender<CallRecord>,
    stop: Arc<tokio::sync::Notify>,
) {
    let plan = &context.plan;
    let (rate, concurrency, total) = (plan.rate, plan.concurrency as usize, plan.total);
    crate::pace::launch(rate, concurrency, total, stop, |index| {
        let context = context.clone();
        let records = records.clone();
        async move {
            let record = place_call(&context, index, context.plan.hold).await;
            context.live.finished.fetch_add(1, Ordering::Relaxed);
            let _ = records.send(record);
        }
    })
    .await;
}

/// Places call number `index` (which seeds its Call-ID, tags and SSRC), holds it for `hold` once
/// answered, and returns what it measured. `finished` is left to the caller.
pub async fn place_call(context: &CallContext, index: u64, hold: Duration) -> CallRecord {
    let live = &context.live;
    let started_at = context.epoch.elapsed();
    let since_epoch = u64::try_from(context.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
    if live.started.fetch_add(1, Ordering::Relaxed) == 0 {
        live.first_start_us.store(since_epoch, Ordering::Relaxed);
    }
    live.last_start_us.fetch_max(since_epoch, Ordering::Relaxed);
    let active = live.active.fetch_add(1, Ordering::Relaxed) + 1;
    live.peak_active.fetch_max(active, Ordering::Relaxed);
    let mut call = Call::new(context, index, hold);
    let outcome = call.run().await;
    live.active.fetch_sub(1, Ordering::Relaxed);
    match &outcome {
        Outcome::Rejected(_) => live.rejected.fetch_add(1, Ordering::Relaxed),
        Outcome::Completed => 0,
        Outcome::TimedOut | Outcome::Failed(_) => live.failed.fetch_add(1, Ordering::Relaxed),
    };
    CallRecord {
        outcome,
        answered: call.setup.is_some(),
        setup: call.setup,
        started_at,
        answered_at: call.setup.map(|setup| started_at + setup),
        last_echo_at: call.media.last_echo_at,
        media_end_at: call.media_end_at,
        rtp_sent: call.media.sent,
        rtp_received: call.media.received,
        jitter_seconds: call.media.jitter_seconds,
        bye_sent_at: call.bye_sent_at,
    }
}

/// One call from INVITE to the answer of its BYE.
struct Call<'a> {
    context: &'a CallContext,
    rng: SmallRng,
    hold: Duration,
    setup: Option<Duration>,
    media: StreamResult,
    media_end_at: Option<Duration>,
    bye_sent_at: Option<Duration>,
}

impl<'a> Call<'a> {
    fn new(context: &'a CallContext, index: u64, hold: Duration) -> Self {
        Self {
            context,
            rng: SmallRng::seed_from_u64(
                context.plan.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            hold,
            setup: None,
            media: StreamResult::default(),
            media_end_at: None,
            bye_sent_at: None,
        }
    }

    async fn run(&mut self) -> Outcome {
        let plan = &self.context.plan;
        let endpoint = &self.context.endpoint;
        let rtp_addr = self.context.media.local_addr();
        let request_uri = format!("sip:{}@{}", plan.user, plan.target);
        let local_uri = format!("sip:loadgen@{}", endpoint.local_addr());
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            endpoint.local_addr(),
            local_uri,
            request_uri,
            crate::USER_AGENT,
        );
        let codecs = match plan.codec {
            G711::Pcmu => vec![Codec::pcmu(), Codec::pcma()],
            G711::Pcma => vec![Codec::pcma(), Codec::pcmu()],
        };
        let mut codecs = codecs;
        codecs.push(Codec::telephone_event(101));
        let offer = AudioSdp::offer(
            rtp_addr.ip(),
            rtp_addr.port(),
            codecs,
            self.rng.random::<u32>().into(),
        );
        let invite = dialog.invite(&mut self.rng, offer.to_string());
        let mut events = endpoint.register(&dialog.call_id);
        let sent_at = Instant::now();
        endpoint.request(plan.target, invite.clone());

        let answer = match self.await_answer(&mut events, &invite, sent_at).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        self.setup = Some(sent_at.elapsed());
        self.context.live.answered.fetch_add(1, Ordering::Relaxed);
        dialog.confirm(&answer);
        let next_hop = dialog.next_hop().unwrap_or(plan.target);
        let ack = dialog.ack(&mut self.rng, 1);
        endpoint.stateless(next_hop, ack.clone());

        let media = answer_media(&answer);
        let outcome = match media {
            Some((remote, codec)) => self.hold(remote, codec, &mut events, &ack, next_hop).await,
            None => Some(Outcome::Failed("no usable SDP answer")),
        };
        if let Some(outcome) = outcome {
            if outcome != Outcome::Failed(ENDED_BY_FAR_SIDE) {
                // Still up on the far side: hang up politely even when the call failed.
                let bye = dialog.bye(&mut self.rng);
                self.bye_sent_at = Some(self.context.epoch.elapsed());
                endpoint.request(next_hop, bye);
            }
            return outcome;
        }
        let bye = dialog.bye(&mut self.rng);
        self.bye_sent_at = Some(self.context.epoch.elapsed());
        endpoint.request(next_hop, bye);
        self.await_bye_answer(&mut events, &ack, next_hop).await
    }

    /// Waits for the final response to the INVITE; `Err` is the call's outcome when not 2xx.
    async fn await_answer(
        &mut self,
        events: &mut DialogEvents,
        invite: &rsip::Request,
        sent_at: Instant,
    ) -> Result<rsip::Response, Outcome> {
        let endpoint = &self.context.endpoint;
        let deadline = sent_at + self.context.plan.answer_timeout;
        let mut provisional = false;
        let mut abandon = self.context.abandon.subscribe();
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = tokio::time::sleep_until(deadline) => {
                    if provisional {
                        endpoint.request(self.context.plan.target, dialog::cancel(invite));
                    }
                    return Err(Outcome::TimedOut);
                }
                _ = abandon.wait_for(|abandon| *abandon) => return Err(Outcome::Failed(ABANDONED)),
            };
            match event {
                Some(Event::Response { response, .. }) => {
                    if !dialog::is_invite_response(&response) {
                        continue;
                    }
                    let code = response.status_code.code();
                    match code {
                        100..=199 => provisional = true,
                        200..=299 => return Ok(response),
                        _ => return Err(Outcome::Rejected(code)),
                    }
                }
                Some(Event::Timeout { .. }) => return Err(Outcome::TimedOut),
                Some(Event::Request { key, request, .. }) => {
                    endpoint.respond(key, response_for(&request, 481, None));
                }
                Some(_) => {}
                None => return Err(Outcome::Failed("SIP endpoint stopped")),
            }
        }
    }

    /// Sends the probe stream for the hold time and collects its echo. `Some` ends the call early.
    async fn hold(
        &mut self,
        remote: SocketAddr,
        codec: G711,
        events: &mut DialogEvents,
        ack: &rsip::Request,
        next_hop: SocketAddr,
    ) -> Option<Outcome> {
        let context = self.context;
        let rng = &mut self.rng;
        let (sequence, timestamp) = (rng.random(), rng.random());
        let stream = context
            .media
            .open(|| rng.random(), sequence, timestamp, remote, codec);
        stream.start();
        let media_since = context.epoch.elapsed();
        let hold_end = Instant::now() + self.hold;
        let mut drain_end: Option<Instant> = None;
        let mut check = tokio::time::interval(Duration::from_millis(10));
        let media_timeout = context.plan.media_timeout;
        // Checked a few times per timeout; never ticks when there is no timeout.
        let mut media_check = tokio::time::interval(
            media_timeout.map_or(Duration::from_secs(3600), |timeout| timeout / 4),
        );
        let outcome = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Response { response, .. }) if dialog::is_invite_response(&response)
                        && response.status_code.code() / 100 == 2 => {
                        // A retransmitted 2xx: our ACK was lost.
                        context.endpoint.stateless(next_hop, ack.clone());
                    }
                    Some(Event::Request { key, request, .. }) => {
                        let bye = request.method == rsip::Method::Bye;
                        let code = if bye || request.method == rsip::Method::Invite { 200 } else { 405 };
                        context.endpoint.respond(key, response_for(&request, code, None));
                        if bye {
                            break Some(Outcome::Failed(ENDED_BY_FAR_SIDE));
                        }
                    }
                    Some(_) => {}
                    None => break Some(Outcome::Failed("SIP endpoint stopped")),
                },
                () = tokio::time::sleep_until(hold_end), if drain_end.is_none() => {
                    stream.stop();
                    self.media_end_at = Some(context.epoch.elapsed());
                    drain_end = Some(Instant::now() + ECHO_DRAIN);
                }
                _ = check.tick(), if drain_end.is_some() => {
                    let (sent, received) = stream.progress();
                    if received >= sent || drain_end.is_some_and(|end| Instant::now() >= end) {
                        break None;
                    }
                }
                _ = media_check.tick(), if media_timeout.is_some() && drain_end.is_none() => {
                    let heard = stream.last_echo_at().unwrap_or_default().max(media_since);
                    if media_timeout.is_some_and(|timeout| context.epoch.elapsed() > heard + timeout) {
                        break Some(Outcome::Failed(MEDIA_STOPPED));
                    }
                }
            }
        };
        self.media = stream.close();
        self.media_end_at
            .get_or_insert_with(|| context.epoch.elapsed());
        outcome
    }

    async fn await_bye_answer(
        &mut self,
        events: &mut DialogEvents,
        ack: &rsip::Request,
        next_hop: SocketAddr,
    ) -> Outcome {
        let deadline = Instant::now() + BYE_TIMEOUT;
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = tokio::time::sleep_until(deadline) => return Outcome::Failed("BYE not answered"),
            };
            match event {
                Some(Event::Response { response, .. }) => {
                    let code = response.status_code.code();
                    if dialog::is_invite_response(&response) {
                        if code / 100 == 2 {
                            self.context.endpoint.stateless(next_hop, ack.clone());
                        }
                        continue;
                    }
                    match code {
                        100..=199 => {}
                        200..=299 | 481 => return Outcome::Completed,
                        _ => return Outcome::Failed("BYE rejected"),
                    }
                }
                Some(Event::Timeout { .. }) => return Outcome::Failed("BYE timed out"),
                Some(Event::Request { key, request, .. }) => {
                    // The far side's BYE crossed ours: both agree the call is over.
                    let bye = request.method == rsip::Method::Bye;
                    self.context.endpoint.respond(
                        key,
                        response_for(&request, if bye { 200 } else { 481 }, None),
                    );
                    if bye {
                        return Outcome::Completed;
                    }
                }
                Some(_) => {}
                None => return Outcome::Failed("SIP endpoint stopped"),
            }
        }
    }
}

/// Aggregates call records into the report.
pub struct Totals {
    /// Call outcomes.
    pub calls: CallCounts,
    /// Setup times, microseconds.
    pub setup_us: Histogram<u64>,
    /// Media counters (loss ratio and jitter mean filled by [`Totals::finish_rtp`]).
    pub rtp: RtpCounts,
    jitter_sum: f64,
    jitter_calls: u64,
}

impl Totals {
    /// No calls yet.
    pub fn new() -> Self {
        Self {
            calls: CallCounts::default(),
            setup_us: new_histogram(),
            rtp: RtpCounts::default(),
            jitter_sum: 0.0,
            jitter_calls: 0,
        }
    }

    /// Counts one call.
    pub fn add(&mut self, record: CallRecord) {
        let calls = &mut self.calls;
        calls.attempted += 1;
        if record.answered {
            calls.answered += 1;
        }
        match record.outcome {
            Outcome::Completed => calls.completed += 1,
            Outcome::Rejected(code) => *calls.rejected.entry(code).or_default() += 1,
            Outcome::TimedOut => calls.timed_out += 1,
            Outcome::Failed(reason) => {
                calls.failed += 1;
                *calls.failure_reasons.entry(reason.to_owned()).or_default() += 1;
            }
        }
        if let Some(setup) = record.setup {
            let _ = self
                .setup_us
                .record(u64::try_from(setup.as_micros()).unwrap_or(u64::MAX));
        }
        self.rtp.sent += record.rtp_sent;
        self.rtp.received += record.rtp_received;
        self.rtp.lost += record.rtp_sent.saturating_sub(record.rtp_received);
        if let Some(jitter) = record.jitter_seconds {
            let ms = jitter * 1000.0;
            self.jitter_sum += ms;
            self.jitter_calls += 1;
            self.rtp.jitter_max_ms = self.rtp.jitter_max_ms.max(ms);
        }
    }

    /// Fills the RTP loss ratio and mean jitter from the sums.
    pub fn finish_rtp(&mut self) {
        self.rtp.loss_ratio = ratio(self.rtp.lost, self.rtp.sent);
        if self.jitter_calls > 0 {
            self.rtp.jitter_mean_ms = self.jitter_sum / self.jitter_calls as f64;
        }
    }

    fn into_report(mut self, plan: &CallPlan, elapsed: Duration) -> Report {
        self.finish_rtp();
        Report {
            tool: format!("voxgate-loadgen {}", env!("CARGO_PKG_VERSION")),
            target: plan.target.to_string(),
            duration_seconds: elapsed.as_secs_f64(),
            settings: Settings {
                rate: plan.rate,
                concurrency: plan.concurrency,
                total: plan.total,
                hold_seconds: plan.hold.as_secs_f64(),
                codec: format!("{:?}", plan.codec).to_uppercase(),
                seed: plan.seed,
            },
            calls: self.calls,
            setup_ms: Percentiles::from_micros(&self.setup_us),
            media_rtt_ms: Percentiles::default(),
            rtp: self.rtp,
            sip: SipCounts::default(),
            verdict: Default::default(),
        }
    }
}

fn progress_line(context: &CallContext, totals: &Totals) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let live = &context.live;
    let media = context.media.counters();
    let setup_p50 = if totals.setup_us.is_empty() {
        0.0
    } else {
        totals.setup_us.value_at_quantile(0.5) as f64 / 1000.0
    };
    format!(
        "active {} answered {} rejected {} failed {} | setup p50 {:.1} ms | rtp tx {} rx {}",
        load(&live.active),
        load(&live.answered),
        load(&live.rejected),
        load(&live.failed),
        setup_p50,
        load(&media.sent),
        load(&media.received),
    )
}

fn new_histogram() -> Histogram<u64> {
    // 1 us to 1 hour at 3 significant digits; auto-resize covers anything beyond.
    let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    histogram.auto(true);
    histogram
}

/// The remote RTP address and G.711 codec of a 2xx's SDP answer.
fn answer_media(response: &rsip::Response) -> Option<(SocketAddr, G711)> {
    let text = std::str::from_utf8(&response.body).ok()?;
    let sdp = AudioSdp::parse(text).ok()?;
    let codec = sdp.codecs.iter().find_map(|c| match c.kind {
        CodecKind::Pcmu => Some(G711::Pcmu),
        CodecKind::Pcma => Some(G711::Pcma),
        _ => None,
    })?;
    if sdp.port == 0 {
        return None;
    }
    Some((SocketAddr::new(sdp.connection, sdp.port), codec))
}

/// The local address the kernel would use to reach `target` from `bind`, so Via, Contact and SDP
/// carry a routable address even when bound to 0.0.0.0.
pub async fn local_ip_towards(bind: SocketAddr, target: SocketAddr) -> anyhow::Result<IpAddr> {
    if !bind.ip().is_unspecified() {
        return Ok(bind.ip());
    }
    let probe = UdpSocket::bind(SocketAddr::new(bind.ip(), 0)).await?;
    probe
        .connect(target)
        .await
        .with_context(|| format!("no route to {target}"))?;
    Ok(probe.local_addr()?.ip())
}
