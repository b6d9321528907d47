//! `voxgate-loadgen soak`: calls with churn against a Proxy for a long run, its `/metrics` read
//! every second, an optional fault in the middle, and a verdict on the invariants that must hold.
//!
//! The offered load is meant to exceed the Proxy's cap, so 503s are expected and counted, not
//! judged. What is judged: the cap is never exceeded, no answered call is dropped other than by
//! the declared fault, the session gauge returns to 0, RTP loss and RSS growth stay in bounds.
//! With `--whip-target`, a share of the arrivals are WebRTC sessions run by `whip`'s client,
//! judged like calls: a 503 to their `POST` is a refusal, a connected session lost before its
//! hold time a drop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::caller::{
    self, CallContext, CallPlan, CallRecord, ENDED_BY_FAR_SIDE, MEDIA_STOPPED, Outcome, Totals,
};
use crate::occupancy::{self, Occupancy, Span};
use crate::progress::Progress;
use crate::report::{Percentiles, Verdict, ratio};
use crate::scrape::{self, ProxyProbe, ProxySample};
use crate::soak_report::{
    CallersSide, FaultKind, FaultReport, GaugeBelow, PhaseCounts, ProxyEnd, ProxySummary,
    RssSummary, SoakCalls, SoakReport, SoakSessions, SoakSettings, SoakWebrtc,
};
use crate::whip::{self, MediaTotals, SessionRecord, WhipContext, WhipPlan};

/// How often the Proxy is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the Proxy's process is checked for an exit (when its pid is known).
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Failed scrapes in a row that mean the Proxy is gone (after a drain, fewer: it is expected).
const LOST_AFTER_FAILURES: u64 = 3;
const GONE_AFTER_DRAIN_FAILURES: u64 = 2;
/// The longest warm-up before the RSS baseline is taken.
const MAX_WARMUP: Duration = Duration::from_secs(60);
/// A call dropped after the Backend kill is put down to it when its media was last heard no later
/// than this after the signal (calls on the surviving Backend keep hearing theirs).
const FAULT_SLACK: Duration = Duration::from_secs(1);
/// An echo silent this long before the call stopped sending was cut (the last echo of a healthy
/// stream comes a round trip after its last packet, so only after the stream stopped).
const ECHO_CUT: Duration = Duration::from_millis(100);
/// Calls started this long after the fault's signal count as "after the fault": the time for the
/// signal to act (the Proxy to start draining) is not the Proxy's to answer for.
const FAULT_SETTLE: Duration = Duration::from_millis(250);
/// Pause between readings while waiting for the Proxy to settle at the end.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// What `soak` is asked to do.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Target, rate, concurrency, codec, seed, media timeout; `total` and `hold` are unused.
    pub call: CallPlan,
    /// The Proxy's `/metrics` URL.
    pub metrics: String,
    /// How long calls are placed for.
    pub duration: Duration,
    /// Shortest hold.
    pub hold_min: Duration,
    /// Longest hold.
    pub hold_max: Duration,
    /// A fault in the middle.
    pub fault: Option<Fault>,
    /// The Proxy's process, for RSS and its exit (the drain pid when not given).
    pub proxy_pid: Option<u32>,
    /// How long the Proxy may take to settle after the last call.
    pub grace: Duration,
    /// Limits judged at the end.
    pub limits: SoakLimits,
    /// WebRTC sessions mixed with the calls.
    pub webrtc: Option<WebrtcMix>,
    /// Where to write the sessions' up spans, for `voxgate-loadgen occupancy` to merge with other
    /// processes' (see [`crate::occupancy`](mod@crate::occupancy)).
    pub up_log: Option<PathBuf>,
}

impl SoakPlan {
    /// The RSS baseline is taken after the first minute or the first 10 % of the run, whichever
    /// is shorter.
    pub fn warmup(&self) -> Duration {
        (self.duration / 10).min(MAX_WARMUP)
    }

    fn proxy_pid(&self) -> Option<u32> {
        self.proxy_pid.or(match self.fault {
            Some(Fault {
                kind: FaultKind::Drain,
                pid,
                ..
            }) => Some(pid),
            _ => None,
        })
    }
}

/// WebRTC sessions in a soak: a share of its arrivals, with the holds the calls draw.
#[derive(Debug, Clone)]
pub struct WebrtcMix {
    /// How each session runs: target, token, bind, tone, setup and media timeouts, seed
    /// (`concurrency`, `total`, `rate` and `hold` are unused).
    pub session: WhipPlan,
    /// The fraction of arrivals that are WebRTC sessions.
    pub share: f64,
}

/// What an arrival became.
enum Record {
    Call(CallRecord),
    Session(SessionRecord),
}

/// A signal sent at `at` into the run.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// SIGTERM to the Proxy or SIGKILL to a Backend.
    pub kind: FaultKind,
    /// When, since the start.
    pub at: Duration,
    /// To whom.
    pub pid: u32,
}

/// The tunable limits of the verdict.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoakLimits {
    /// Most RTP lost / sent over answered calls.
    pub max_loss: Option<f64>,
    /// Most RSS growth from the warm-up to the end, as a fraction.
    pub max_rss_growth: Option<f64>,
}

/// Runs the soak and returns its judged report.
pub async fn run(plan: SoakPlan) -> anyhow::Result<SoakReport> {
    let proxy_pid = plan.proxy_pid();
    let probe = ProxyProbe::new(&plan.metrics, proxy_pid).await?;
    // A soak that cannot see the Proxy would judge nothing: refuse to start.
    let baseline = probe
        .sample(Duration::ZERO)
        .await
        .with_context(|| format!("cannot read --metrics {}", plan.metrics))?;
    let context = CallContext::start(plan.call.clone()).await?;
    let epoch = context.epoch;
    let epoch_monotonic = occupancy::monotonic_at(epoch)?;
    let webrtc = match &plan.webrtc {
        Some(mix) => Some(
            WhipContext::start(mix.session.clone(), epoch)
                .await
                .with_context(|| format!("--whip-target {}", mix.session.target))?,
        ),
        None => None,
    };

    let (records_tx, mut records) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let launcher = tokio::spawn(launch(
        context.clone(),
        webrtc.clone(),
        plan.clone(),
        records_tx,
        stop_rx,
    ));
    let (samples_tx, mut samples_rx) = mpsc::unbounded_channel();
    let sampler = tokio::spawn(sample_loop(probe.clone(), epoch, samples_tx));

    let progress = Progress::timed(plan.duration.as_secs(), plan.call.quiet);
    let mut tally = Tally::new(plan.webrtc.as_ref());
    let mut proxy = ProxyView::default();
    proxy.record(Some(baseline));
    let mut fault = plan.fault.map(FaultState::new);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut exit_check = tokio::time::interval(EXIT_CHECK_EVERY);
    exit_check.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut interrupted = false;
    loop {
        let fault_due = fault
            .as_ref()
            .filter(|f| !f.tried)
            .map(|f| epoch + f.fault.at);
        let drained = fault.as_ref().is_some_and(FaultState::drained);
        tokio::select! {
            record = records.recv() => {
                let fired = fault.as_ref().and_then(FaultState::fired);
                match record {
                    Some(Record::Call(record)) => tally.add(record, fired),
                    Some(Record::Session(record)) => tally.add_session(record, fired),
                    None => break,
                }
            }
            Some(sample) = samples_rx.recv() => {
                proxy.record(sample);
                let allowed = if drained { GONE_AFTER_DRAIN_FAILURES } else { LOST_AFTER_FAILURES };
                if proxy.failures_in_a_row >= allowed {
                    proxy.gone(epoch.elapsed(), drained, &context, &stop);
                }
            }
            () = tokio::time::sleep_until(fault_due.unwrap_or(epoch)), if fault_due.is_some() => {
                if let Some(fault) = &mut fault {
                    fault.fire(epoch.elapsed());
                }
            }
            _ = exit_check.tick(), if proxy.end.is_none() && proxy_pid.is_some() => {
                if proxy_pid.is_some_and(scrape::process_exited) {
                    proxy.gone(epoch.elapsed(), drained, &context, &stop);
                }
            }
            _ = tick.tick() => {
                let elapsed = epoch.elapsed();
                progress.update(elapsed, elapsed.as_secs().min(plan.duration.as_secs()),
                    &progress_line(&context, webrtc.as_deref(), &proxy));
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                stop.send_replace(true);
                progress.update(epoch.elapsed(), epoch.elapsed().as_secs(),
                    "interrupted: no new calls; waiting for active calls to end (Ctrl-C again to abort)");
            }
            _ = tokio::signal::ctrl_c(), if interrupted => anyhow::bail!("aborted"),
        }
    }
    launcher.await.context("launcher task")?;
    sampler.abort();
    while let Ok(sample) = samples_rx.try_recv() {
        proxy.record(sample);
    }
    let drained = fault.as_ref().is_some_and(FaultState::drained);
    progress.update(
        epoch.elapsed(),
        plan.duration.as_secs(),
        "calls ended; waiting for the Proxy to settle",
    );
    settle(&plan, &probe, epoch, drained, &mut proxy).await;
    progress.finish();

    let after = std::mem::take(&mut tally.after_fault);
    let webrtc_after = tally
        .webrtc
        .as_mut()
        .map(|webrtc| std::mem::take(&mut webrtc.after_fault));
    let mut occupancy = std::mem::take(&mut tally.occupancy);
    let answered = tally.up_answered;
    let mut report = tally.into_report(&plan, &context, webrtc.as_deref(), epoch.elapsed());
    report.callers = callers_side(&mut occupancy, answered, &proxy.samples);
    if let Some(path) = &plan.up_log {
        occupancy.write_log(path, epoch_monotonic)?;
        report.callers.up_log = Some(path.display().to_string());
    }
    report.proxy = proxy.summary(plan.warmup());
    report.fault = fault.map(|f| f.report(after, webrtc_after));
    report.verdict = judge(&report);
    Ok(report)
}

/// Places calls, and WebRTC sessions for `--whip-share` of the arrivals, with Poisson arrivals
/// until the duration is up or `stop` is set.
async fn launch(
    context: Arc<CallContext>,
    webrtc: Option<Arc<WhipContext>>,
    plan: SoakPlan,
    records: mpsc::UnboundedSender<Record>,
    mut stop: watch::Receiver<bool>,
) {
    // Arrivals and holds draw from their own stream, so the per-call seeds stay those of `call`.
    let mut rng = SmallRng::seed_from_u64(plan.call.seed.rotate_left(29) ^ 0x50AC_0000_0000_0001);
    let permits = Arc::new(Semaphore::new(plan.call.concurrency as usize));
    let end = context.epoch + plan.duration;
    let mut next = context.epoch;
    for index in 0u64.. {
        next += arrival_gap(&mut rng, plan.call.rate);
        if next >= end {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        if Instant::now() >= end {
            break;
        }
        let hold = if plan.hold_max > plan.hold_min {
            rng.random_range(plan.hold_min..=plan.hold_max)
        } else {
            plan.hold_min
        };
        // Drawn only when sessions are mixed in, so a SIP-only run's seed repeats older runs.
        let session = match (&webrtc, &plan.webrtc) {
            (Some(webrtc), Some(mix)) if rng.random::<f64>() < mix.share => Some(webrtc.clone()),
            _ => None,
        };
        let context = context.clone();
        let records = records.clone();
        tokio::spawn(async move {
            let record = match session {
                Some(webrtc) => Record::Session(webrtc.run_session(index, hold).await),
                None => {
                    let record = caller::place_call(&context, index, hold).await;
                    context.live.finished.fetch_add(1, Ordering::Relaxed);
                    Record::Call(record)
                }
            };
            drop(permit);
            let _ = records.send(record);
        });
    }
}

/// The time to the next Poisson arrival at `rate` per second (exponentially distributed).
fn arrival_gap(rng: &mut SmallRng, rate: f64) -> Duration {
    let uniform: f64 = rng.random();
    Duration::from_secs_f64(-(1.0 - uniform).ln() / rate)
}

/// Reads the Proxy every second; a failed read is sent as `None`.
async fn sample_loop(
    probe: ProxyProbe,
    epoch: Instant,
    samples: mpsc::UnboundedSender<Option<ProxySample>>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sample = probe
            .sample(epoch.elapsed())
            .await
            .map(|sample| ProxySample {
                read_by: epoch.elapsed(),
                ..sample
            });
        if let Err(err) = &sample {
            tracing::debug!(%err, "cannot read the Proxy's metrics");
        }
        if samples.send(sample.ok()).is_err() {
            return;
        }
    }
}

/// After the last call: a Proxy still up must get back to 0 sessions within the grace period; a
/// drained one must exit within it.
async fn settle(
    plan: &SoakPlan,
    probe: &ProxyProbe,
    epoch: Instant,
    drained: bool,
    proxy: &mut ProxyView,
) {
    if proxy.end.is_some() {
        return;
    }
    let deadline = Instant::now() + plan.grace;
    loop {
        let exited = probe.pid().is_some_and(scrape::process_exited);
        let sample = if exited {
            None
        } else {
            probe.sample(epoch.elapsed()).await.ok()
        };
        match sample {
            Some(sample) => {
                let active = sample.sessions_active;
                proxy.record(Some(sample));
                if !drained {
                    proxy.active_at_end = active;
                    if active == Some(0.0) {
                        return;
                    }
                }
            }
            // A drained Proxy closes its listener when it exits.
            None if drained || exited => {
                proxy.end = Some(if drained {
                    ProxyEnd::ExitedAfterDrain
                } else {
                    ProxyEnd::Lost
                });
                proxy.exited_at = Some(epoch.elapsed());
                return;
            }
            None => proxy.record(None),
        }
        if Instant::now() >= deadline {
            if drained {
                proxy.end = Some(ProxyEnd::DrainedButRunning);
            }
            return;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The Proxy as seen so far.
#[derive(Debug, Default)]
struct ProxyView {
    samples: Vec<ProxySample>,
    failed: u64,
    failures_in_a_row: u64,
    /// Set once the Proxy is gone or judged at the end; `None` while it runs.
    end: Option<ProxyEnd>,
    exited_at: Option<Duration>,
    active_at_end: Option<f64>,
}

impl ProxyView {
    fn record(&mut self, sample: Option<ProxySample>) {
        match sample {
            Some(sample) => {
                self.failures_in_a_row = 0;
                self.samples.push(sample);
            }
            None => {
                self.failed += 1;
                self.failures_in_a_row += 1;
            }
        }
    }

    /// The Proxy went away: no new calls, and calls waiting for an answer are given up.
    fn gone(
        &mut self,
        at: Duration,
        drained: bool,
        context: &CallContext,
        stop: &watch::Sender<bool>,
    ) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(if drained {
            ProxyEnd::ExitedAfterDrain
        } else {
            ProxyEnd::Lost
        });
        self.exited_at = Some(at);
        stop.send_replace(true);
        context.abandon_unanswered();
    }

    fn summary(&self, warmup: Duration) -> ProxySummary {
        let mut summary = summarize(&self.samples, warmup);
        summary.failed_samples = self.failed;
        summary.end = self.end.unwrap_or(ProxyEnd::Running);
        summary.exited_at_seconds = self.exited_at.map(|at| at.as_secs_f64());
        summary.active_at_end = match summary.end {
            ProxyEnd::Running => self.active_at_end,
            _ => None,
        };
        summary
    }
}

/// The fault and what became of it.
#[derive(Debug)]
struct FaultState {
    fault: Fault,
    tried: bool,
    fired_at: Option<Duration>,
    error: Option<String>,
}

impl FaultState {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            tried: false,
            fired_at: None,
            error: None,
        }
    }

    fn fire(&mut self, now: Duration) {
        self.tried = true;
        let signal = match self.fault.kind {
            FaultKind::Drain => nix::sys::signal::Signal::SIGTERM,
            FaultKind::KillBackend => nix::sys::signal::Signal::SIGKILL,
        };
        let pid = i32::try_from(self.fault.pid).unwrap_or(i32::MAX);
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => {
                tracing::info!(pid, ?signal, "fault injected");
                self.fired_at = Some(now);
            }
            Err(err) => {
                tracing::warn!(pid, ?signal, %err, "cannot inject the fault");
                self.error = Some(format!("{signal} to pid {pid}: {err}"));
            }
        }
    }

    fn fired(&self) -> Option<(FaultKind, Duration)> {
        self.fired_at.map(|at| (self.fault.kind, at))
    }

    fn drained(&self) -> bool {
        self.fault.kind == FaultKind::Drain && self.fired_at.is_some()
    }

    fn report(self, after: PhaseCounts, webrtc_after: Option<PhaseCounts>) -> FaultReport {
        FaultReport {
            kind: self.fault.kind,
            pid: self.fault.pid,
            at_seconds: self.fault.at.as_secs_f64(),
            fired_at_seconds: self.fired_at.map(|at| at.as_secs_f64()),
            error: self.error,
            calls_started_after: after,
            webrtc_sessions_started_after: webrtc_after,
        }
    }
}

/// Call records summed up, the ones lost to the fault apart.
struct Tally {
    /// Every answered call's and session's span, as its caller saw it.
    occupancy: Occupancy,
    /// Calls and sessions answered.
    up_answered: u64,
    totals: Totals,
    dropped: u64,
    dropped_by_fault: u64,
    after_fault: PhaseCounts,
    webrtc: Option<SessionTally>,
}

/// WebRTC session records summed up.
struct SessionTally {
    sessions: SoakSessions,
    media: MediaTotals,
    after_fault: PhaseCounts,
}

impl Tally {
    fn new(webrtc: Option<&WebrtcMix>) -> Self {
        Self {
            occupancy: Occupancy::new(),
            up_answered: 0,
            totals: Totals::new(),
            dropped: 0,
            dropped_by_fault: 0,
            after_fault: PhaseCounts::default(),
            webrtc: webrtc.map(|mix| SessionTally {
                sessions: SoakSessions::default(),
                media: MediaTotals::new(mix.session.tone_hz),
                after_fault: PhaseCounts::default(),
            }),
        }
    }

    /// Counts one WebRTC session; `fired` is the fault's kind and signal time once sent.
    fn add_session(&mut self, record: SessionRecord, fired: Option<(FaultKind, Duration)>) {
        self.up(record.span());
        let Some(webrtc) = &mut self.webrtc else {
            return;
        };
        let answered = record.post_status == Some(201);
        let refused = record.post_status.filter(|_| !answered);
        if let Some((_, at)) = fired
            && record.started_at >= at + FAULT_SETTLE
        {
            let after = &mut webrtc.after_fault;
            after.attempted += 1;
            after.answered += u64::from(answered);
            match (&refused, &record.failure) {
                (Some(_), _) => after.rejected += 1,
                (None, None) => after.completed += 1,
                (None, Some(_)) => after.failed += 1,
            }
        }
        let sessions = &mut webrtc.sessions;
        sessions.attempted += 1;
        if let Some(status) = refused {
            *sessions.refused.entry(status).or_default() += 1;
            return;
        }
        sessions.answered += u64::from(answered);
        sessions.connected += u64::from(record.connected);
        if session_lost_to_fault(&record, fired) {
            sessions.dropped_by_fault += 1;
            return;
        }
        webrtc.media.add(&record);
        sessions.dropped += u64::from(is_session_drop(&record));
        if let Some(reason) = record.failure {
            sessions.failed += 1;
            *sessions.failure_reasons.entry(reason).or_default() += 1;
        } else {
            sessions.completed += 1;
        }
    }

    /// Counts one call; `fired` is the fault's kind and signal time once sent.
    fn add(&mut self, record: CallRecord, fired: Option<(FaultKind, Duration)>) {
        self.up(record.span());
        if let Some((_, at)) = fired
            && record.started_at >= at + FAULT_SETTLE
        {
            let after = &mut self.after_fault;
            after.attempted += 1;
            after.answered += u64::from(record.answered);
            match record.outcome {
                Outcome::Completed => after.completed += 1,
                Outcome::Rejected(_) => after.rejected += 1,
                Outcome::TimedOut | Outcome::Failed(_) => after.failed += 1,
            }
        }
        if lost_to_fault(&record, fired) {
            // Answered, then lost with its Backend: neither a failure nor media loss, whether it
            // noticed before its hold time (dropped) or not (completed with its echo cut).
            self.dropped_by_fault += 1;
            let calls = &mut self.totals.calls;
            calls.attempted += 1;
            calls.answered += 1;
            if let Some(setup) = record.setup {
                let _ = self
                    .totals
                    .setup_us
                    .record(u64::try_from(setup.as_micros()).unwrap_or(u64::MAX));
            }
            return;
        }
        if is_drop(&record) {
            self.dropped += 1;
        }
        self.totals.add(record);
    }

    fn up(&mut self, span: Option<Span>) {
        if let Some(span) = span {
            self.up_answered += 1;
            self.occupancy.add(span);
        }
    }

    fn into_report(
        mut self,
        plan: &SoakPlan,
        context: &CallContext,
        webrtc: Option<&WhipContext>,
        elapsed: Duration,
    ) -> SoakReport {
        let webrtc = self.webrtc.zip(plan.webrtc.as_ref()).map(|(tally, mix)| {
            let media = tally.media.finish();
            SoakWebrtc {
                target: mix.session.target.clone(),
                share: mix.share,
                sessions: SoakSessions {
                    peak_concurrency: webrtc.map(WhipContext::peak_active).unwrap_or_default(),
                    ..tally.sessions
                },
                setup_ms: media.setup_ms,
                media_rtt_ms: media.media_rtt_ms,
                rtp: media.rtp,
                tone: media.tone,
            }
        });
        self.totals.finish_rtp();
        let counts = self.totals.calls;
        let mut rtp = self.totals.rtp;
        let media = context.media.counters();
        rtp.foreign = media.foreign.load(Ordering::Relaxed);
        rtp.send_errors = media.send_errors.load(Ordering::Relaxed);
        SoakReport {
            tool: format!("voxgate-loadgen {}", env!("CARGO_PKG_VERSION")),
            target: plan.call.target.to_string(),
            duration_seconds: elapsed.as_secs_f64(),
            settings: SoakSettings {
                metrics: plan.metrics.clone(),
                duration_seconds: plan.duration.as_secs_f64(),
                rate: plan.call.rate,
                hold_min_seconds: plan.hold_min.as_secs_f64(),
                hold_max_seconds: plan.hold_max.as_secs_f64(),
                concurrency: plan.call.concurrency,
                media_timeout_seconds: plan.call.media_timeout.unwrap_or_default().as_secs_f64(),
                grace_seconds: plan.grace.as_secs_f64(),
                warmup_seconds: plan.warmup().as_secs_f64(),
                max_loss: plan.limits.max_loss,
                max_rss_growth: plan.limits.max_rss_growth,
                codec: format!("{:?}", plan.call.codec).to_uppercase(),
                proxy_pid: plan.proxy_pid(),
                seed: plan.call.seed,
            },
            calls: SoakCalls {
                attempted: counts.attempted,
                answered: counts.answered,
                completed: counts.completed,
                rejected: counts.rejected,
                timed_out: counts.timed_out,
                failed: counts.failed,
                failure_reasons: counts.failure_reasons,
                dropped: self.dropped,
                dropped_by_fault: self.dropped_by_fault,
                achieved_rate: context.achieved_rate(),
                peak_concurrency: context.peak_active(),
            },
            setup_ms: Percentiles::from_micros(&self.totals.setup_us),
            media_rtt_ms: Percentiles::from_micros(&context.media.rtt_histogram()),
            rtp,
            sip: context.sip_counts(),
            webrtc,
            callers: CallersSide::default(),
            proxy: ProxySummary::default(),
            fault: None,
            verdict: Verdict::default(),
        }
    }
}

/// The cap from the callers' side: the most sessions they had up at once against the highest
/// limit read, and every reading of `voxgate_sessions_active` against the fewest sessions they had
/// up while it was taken (each of those held a slot, so the gauge cannot read less).
fn callers_side(occupancy: &mut Occupancy, answered: u64, samples: &[ProxySample]) -> CallersSide {
    let peak = occupancy.peak();
    let nanos = |at: Duration| u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
    let below: Vec<GaugeBelow> = samples
        .iter()
        .filter_map(|sample| {
            let gauge = sample.sessions_active?;
            let callers = occupancy.lowest_between(nanos(sample.at), nanos(sample.read_by));
            (callers as f64 > gauge).then_some(GaugeBelow {
                at_seconds: sample.at.as_secs_f64(),
                gauge,
                callers,
            })
        })
        .collect();
    CallersSide {
        answered,
        peak_up: peak.count,
        peak_up_at_seconds: (peak.count > 0).then(|| Duration::from_nanos(peak.at).as_secs_f64()),
        cap: samples
            .iter()
            .filter_map(|sample| sample.sessions_limit)
            .reduce(f64::max),
        gauge_below_samples: below.len() as u64,
        gauge_below_first: below.first().copied(),
        up_log: None,
    }
}

/// An answered call ended before its hold time: by the far side, or its media stopped.
fn is_drop(record: &CallRecord) -> bool {
    record.answered
        && matches!(record.outcome, Outcome::Failed(reason) if reason == ENDED_BY_FAR_SIDE || reason == MEDIA_STOPPED)
}

/// An answered call whose echo went silent before it stopped sending: its far side stopped
/// answering its media, though the call may have reached its hold time before noticing.
fn echo_cut(record: &CallRecord) -> bool {
    let heard = record.last_echo_at.max(record.answered_at);
    match (heard, record.media_end_at) {
        (Some(heard), Some(end)) => record.answered && heard + ECHO_CUT < end,
        _ => false,
    }
}

/// A call lost with the killed Backend: dropped, or its echo cut, and its media last heard (or
/// the call answered) by the kill, give or take [`FAULT_SLACK`]. A drain loses nothing: its
/// calls must run to their end.
fn lost_to_fault(record: &CallRecord, fired: Option<(FaultKind, Duration)>) -> bool {
    let Some((FaultKind::KillBackend, at)) = fired else {
        return false;
    };
    let heard = record.last_echo_at.max(record.answered_at);
    (is_drop(record) || echo_cut(record)) && heard.is_some_and(|heard| heard <= at + FAULT_SLACK)
}

/// A connected WebRTC session lost before its hold time: its connection failed, or its audio
/// stopped for `--media-timeout`.
fn is_session_drop(record: &SessionRecord) -> bool {
    record.connected
        && matches!(
            record.failure.as_deref(),
            Some(whip::CONNECTION_LOST | whip::AUDIO_STOPPED)
        )
}

/// [`lost_to_fault`] for a WebRTC session: dropped, or its audio cut, and last heard (or
/// connected) by the Backend kill, give or take [`FAULT_SLACK`].
fn session_lost_to_fault(record: &SessionRecord, fired: Option<(FaultKind, Duration)>) -> bool {
    let Some((FaultKind::KillBackend, at)) = fired else {
        return false;
    };
    let heard = record.last_audio_at.max(record.connected_at);
    let cut = match (heard, record.media_end_at) {
        (Some(heard), Some(end)) => record.connected && heard + ECHO_CUT < end,
        _ => false,
    };
    (is_session_drop(record) || cut) && heard.is_some_and(|heard| heard <= at + FAULT_SLACK)
}

fn progress_line(context: &CallContext, webrtc: Option<&WhipContext>, proxy: &ProxyView) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let live = &context.live;
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v}"));
    let last = proxy.samples.last();
    let state = match proxy.end {
        Some(ProxyEnd::ExitedAfterDrain) => " (exited after drain)",
        Some(ProxyEnd::Lost) => " (lost)",
        _ if last
            .and_then(|s| s.drain_remaining)
            .is_some_and(|d| d > 0.0) =>
        {
            " (draining)"
        }
        _ => "",
    };
    let webrtc = webrtc.map_or_else(String::new, |webrtc| {
        format!(" | webrtc active {}", webrtc.active())
    });
    format!(
        "active {} answered {} rejected {} failed {}{webrtc} | proxy {}/{}{state}",
        load(&live.active),
        load(&live.answered),
        load(&live.rejected),
        load(&live.failed),
        number(last.and_then(|s| s.sessions_active)),
        number(last.and_then(|s| s.sessions_limit)),
    )
}

/// Sums up the Proxy's samples (in time order). The RSS baseline is the first reading at or
/// after `warmup`; counters are reported as their growth over the samples.
pub fn summarize(samples: &[ProxySample], warmup: Duration) -> ProxySummary {
    let max = |f: fn(&ProxySample) -> Option<f64>| samples.iter().filter_map(f).reduce(f64::max);
    let exceeded: Vec<&ProxySample> = samples
        .iter()
        .filter(|s| matches!((s.sessions_active, s.sessions_limit), (Some(a), Some(l)) if a > l))
        .collect();
    let (first, last) = (samples.first(), samples.last());
    let rejected_by_reason = last
        .map(|last| {
            last.rejected
                .iter()
                .map(|(reason, &count)| {
                    let before = first
                        .and_then(|f| f.rejected.get(reason))
                        .copied()
                        .unwrap_or(0.0);
                    (reason.clone(), count - before)
                })
                .filter(|&(_, grown)| grown > 0.0)
                .collect()
        })
        .unwrap_or_default();
    let rtp_packets = last
        .and_then(|l| l.rtp_packets)
        .map(|end| end - first.and_then(|f| f.rtp_packets).unwrap_or(0.0));

    let with_rss = || samples.iter().filter(|s| s.rss_bytes.is_some());
    let warmup_bytes = with_rss()
        .find(|s| s.at >= warmup)
        .and_then(|s| s.rss_bytes);
    let end_bytes = with_rss().next_back().and_then(|s| s.rss_bytes);
    let growth = match (warmup_bytes, end_bytes) {
        (Some(warmup), Some(end)) if warmup > 0 => Some(end as f64 / warmup as f64 - 1.0),
        _ => None,
    };
    ProxySummary {
        samples: samples.len() as u64,
        max_active: max(|s| s.sessions_active),
        limit: samples.iter().rev().find_map(|s| s.sessions_limit),
        max_drain_remaining: max(|s| s.drain_remaining),
        cap_exceeded_samples: exceeded.len() as u64,
        cap_first_exceeded_at_seconds: exceeded.first().map(|s| s.at.as_secs_f64()),
        rejected_by_reason,
        rtp_packets,
        rss: RssSummary {
            source: with_rss()
                .next_back()
                .map(|s| s.rss_source)
                .unwrap_or_default(),
            warmup_bytes,
            end_bytes,
            max_bytes: with_rss().filter_map(|s| s.rss_bytes).max(),
            growth,
        },
        ..ProxySummary::default()
    }
}

/// The invariants a soak checks, each broken one named.
pub fn judge(report: &SoakReport) -> Verdict {
    let mut violations = Vec::new();
    let proxy = &report.proxy;
    let settings = &report.settings;
    if proxy.samples == 0 {
        violations.push(
            "no /metrics sample could be read: the cap and the session counter were not checked"
                .to_owned(),
        );
    }
    let callers = &report.callers;
    if let Some(cap) = callers.cap
        && callers.peak_up as f64 > cap
    {
        violations.push(format!(
            "cap exceeded on the callers' side: {} sessions answered and up at once at {:.1} s \
             (cap {cap})",
            callers.peak_up,
            callers.peak_up_at_seconds.unwrap_or_default()
        ));
    }
    if let Some(first) = callers.gauge_below_first {
        violations.push(format!(
            "voxgate_sessions_active under-counts: it read {} at {:.1} s while the callers had {} \
             sessions up all through the reading ({} reading(s))",
            first.gauge, first.at_seconds, first.callers, callers.gauge_below_samples
        ));
    }
    if proxy.cap_exceeded_samples > 0 {
        violations.push(format!(
            "cap exceeded: voxgate_sessions_active above voxgate_sessions_limit in {} sample(s), \
             first at {:.1} s (max active {}, limit {})",
            proxy.cap_exceeded_samples,
            proxy.cap_first_exceeded_at_seconds.unwrap_or_default(),
            proxy.max_active.unwrap_or_default(),
            proxy.limit.unwrap_or_default()
        ));
    }
    if report.calls.dropped > 0 {
        let reasons: Vec<String> = [ENDED_BY_FAR_SIDE, MEDIA_STOPPED]
            .iter()
            .filter_map(|&reason| {
                let count = report.calls.failure_reasons.get(reason)?;
                Some(format!("{reason}: {count}"))
            })
            .collect();
        violations.push(format!(
            "{} answered call(s) dropped before their hold time ({})",
            report.calls.dropped,
            reasons.join(", ")
        ));
    }
    if let Some(webrtc) = &report.webrtc
        && webrtc.sessions.dropped > 0
    {
        let reasons: Vec<String> = [whip::CONNECTION_LOST, whip::AUDIO_STOPPED]
            .iter()
            .filter_map(|&reason| {
                let count = webrtc.sessions.failure_reasons.get(reason)?;
                Some(format!("{reason}: {count}"))
            })
            .collect();
        violations.push(format!(
            "{} connected WebRTC session(s) dropped before their hold time ({})",
            webrtc.sessions.dropped,
            reasons.join(", ")
        ));
    }
    match proxy.end {
        ProxyEnd::Running => match proxy.active_at_end {
            Some(0.0) => {}
            Some(active) => violations.push(format!(
                "voxgate_sessions_active is {active}, not 0, {:.0} s after the last call ended \
                 (counter leak)",
                settings.grace_seconds
            )),
            None => violations.push(
                "voxgate_sessions_active unknown after the last call ended (no /metrics reading)"
                    .to_owned(),
            ),
        },
        ProxyEnd::ExitedAfterDrain => {}
        ProxyEnd::DrainedButRunning => violations.push(format!(
            "the Proxy was drained but still up {:.0} s after its last call ended",
            settings.grace_seconds
        )),
        ProxyEnd::Lost => violations.push(format!(
            "the Proxy went away at {:.1} s without a declared drain",
            proxy.exited_at_seconds.unwrap_or_default()
        )),
    }
    if let Some(max) = settings.max_loss {
        match &report.webrtc {
            None if report.rtp.loss_ratio > max => violations.push(format!(
                "RTP loss {:.6} ({} of {}) exceeds --max-loss {max}",
                report.rtp.loss_ratio, report.rtp.lost, report.rtp.sent
            )),
            None => {}
            Some(webrtc) => {
                // The echo of a WebRTC session is renumbered by the gateway: its loss is counted
                // in the received sequence numbers, out of received + lost.
                let r = &webrtc.rtp;
                let expected = r.received + r.lost;
                let lost = report.rtp.lost + r.lost;
                let sent = report.rtp.sent + expected;
                let loss = ratio(lost, sent);
                if loss > max {
                    violations.push(format!(
                        "RTP loss {loss:.6} ({lost} of {sent}: calls {} of {}, WebRTC {} of \
                         {expected}) exceeds --max-loss {max}",
                        report.rtp.lost, report.rtp.sent, r.lost
                    ));
                }
            }
        }
    }
    if let (Some(max), Some(growth)) = (settings.max_rss_growth, proxy.rss.growth)
        && growth > max
    {
        let mib = |b: Option<u64>| b.unwrap_or_default() as f64 / (1024.0 * 1024.0);
        violations.push(format!(
            "RSS grew {:.1} % from {:.1} MiB after the warm-up to {:.1} MiB at the end, above \
             --max-rss-growth {max}",
            growth * 100.0,
            mib(proxy.rss.warmup_bytes),
            mib(proxy.rss.end_bytes)
        ));
    }
    if let Some(error) = report.fault.as_ref().and_then(|f| f.error.as_ref()) {
        violations.push(format!("the fault could not be injected: {error}"));
    }
    Verdict {
        passed: violations.is_empty(),
        violations,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{RtpCounts, SipCounts};
    use crate::scrape::RssSource;

    const MIB: u64 = 1024 * 1024;

    fn sample(at_secs: u64, active: f64, limit: f64, rss_mib: u64) -> ProxySample {
        ProxySample {
            at: Duration::from_secs(at_secs),
            read_by: Duration::from_secs(at_secs) + Duration::from_millis(2),
            sessions_active: Some(active),
            sessions_limit: Some(limit),
            drain_remaining: Some(0.0),
            rtp_packets: Some(at_secs as f64 * 100.0),
            rejected: BTreeMap::from([("capacity".to_owned(), at_secs as f64)]),
            rss_bytes: Some(rss_mib * MIB),
            rss_source: RssSource::Proc,
        }
    }

    /// A 20 s run at a cap of 10: ramp, full, back to 0 at the end, flat RSS.
    fn healthy_samples() -> Vec<ProxySample> {
        (0..=20)
            .map(|t| {
                let active = match t {
                    0 => 0.0,
                    1 => 6.0,
                    20 => 0.0,
                    _ => 10.0,
                };
                sample(t, active, 10.0, 50)
            })
            .collect()
    }

    fn report_of(samples: &[ProxySample], end: ProxyEnd) -> SoakReport {
        let mut proxy = summarize(samples, Duration::from_secs(2));
        proxy.end = end;
        proxy.active_at_end = match end {
            ProxyEnd::Running => samples.last().and_then(|s| s.sessions_active),
            _ => None,
        };
        SoakReport {
            tool: "voxgate-loadgen 0".into(),
            target: "127.0.0.1:5060".into(),
            duration_seconds: 21.0,
            settings: SoakSettings {
                metrics: "http://127.0.0.1:9090/metrics".into(),
                duration_seconds: 20.0,
                rate: 8.0,
                hold_min_seconds: 1.0,
                hold_max_seconds: 3.0,
                concurrency: 1000,
                media_timeout_seconds: 2.0,
                grace_seconds: 10.0,
                warmup_seconds: 2.0,
                max_loss: Some(0.001),
                max_rss_growth: Some(0.10),
                codec: "PCMU".into(),
                proxy_pid: Some(1),
                seed: 7,
            },
            calls: SoakCalls {
                attempted: 160,
                answered: 100,
                completed: 100,
                rejected: BTreeMap::from([(503, 60)]),
                ..SoakCalls::default()
            },
            setup_ms: Percentiles::default(),
            media_rtt_ms: Percentiles::default(),
            rtp: RtpCounts {
                sent: 10_000,
                received: 10_000,
                ..RtpCounts::default()
            },
            sip: SipCounts::default(),
            webrtc: None,
            callers: CallersSide::default(),
            proxy,
            fault: None,
            verdict: Verdict::default(),
        }
    }

    fn violations(report: &SoakReport) -> Vec<String> {
        judge(report).violations
    }

    #[test]
    fn healthy_run_passes_and_sums_up_the_samples() {
        let mut report = report_of(&healthy_samples(), ProxyEnd::Running);
        report.verdict = judge(&report);
        assert!(report.verdict.passed, "{:?}", report.verdict.violations);
        let proxy = &report.proxy;
        assert_eq!(proxy.samples, 21);
        assert_eq!(proxy.max_active, Some(10.0));
        assert_eq!(proxy.limit, Some(10.0));
        assert_eq!(proxy.cap_exceeded_samples, 0);
        assert_eq!(proxy.rejected_by_reason["capacity"], 20.0);
        assert_eq!(proxy.rtp_packets, Some(2000.0));
        assert_eq!(proxy.rss.warmup_bytes, Some(50 * MIB));
        assert_eq!(proxy.rss.growth, Some(0.0));
        assert!(report.to_string().contains("verdict   PASS"));
    }

    #[test]
    fn cap_exceeded_in_any_sample_is_a_violation() {
        let mut samples = healthy_samples();
        samples[7].sessions_active = Some(11.0);
        samples[9].sessions_active = Some(12.0);
        let report = report_of(&samples, ProxyEnd::Running);
        assert_eq!(report.proxy.cap_exceeded_samples, 2);
        assert_eq!(report.proxy.cap_first_exceeded_at_seconds, Some(7.0));
        let found = violations(&report);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("cap exceeded"), "{found:?}");
        assert!(found[0].contains("first at 7.0 s"), "{found:?}");
        assert!(found[0].contains("max active 12"), "{found:?}");
    }

    #[test]
    fn sessions_not_back_to_zero_is_a_leak_unless_the_proxy_exited_after_a_drain() {
        let mut samples = healthy_samples();
        samples[20].sessions_active = Some(2.0);
        let found = violations(&report_of(&samples, ProxyEnd::Running));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("counter leak"), "{found:?}");
        assert!(found[0].contains("is 2"), "{found:?}");

        assert!(violations(&report_of(&samples, ProxyEnd::ExitedAfterDrain)).is_empty());
        let still_up = violations(&report_of(&samples, ProxyEnd::DrainedButRunning));
        assert!(still_up[0].contains("drained but still up"), "{still_up:?}");
        let lost = violations(&report_of(&samples, ProxyEnd::Lost));
        assert!(lost[0].contains("without a declared drain"), "{lost:?}");
    }

    #[test]
    fn rss_growth_is_measured_from_the_warm_up() {
        let mut samples = healthy_samples();
        // Before the warm-up the RSS is still climbing: not the baseline.
        samples[0].rss_bytes = Some(10 * MIB);
        samples[1].rss_bytes = Some(30 * MIB);
        samples[20].rss_bytes = Some(54 * MIB);
        let report = report_of(&samples, ProxyEnd::Running);
        assert_eq!(report.proxy.rss.warmup_bytes, Some(50 * MIB));
        assert_eq!(report.proxy.rss.max_bytes, Some(54 * MIB));
        assert!(violations(&report).is_empty(), "8 % is within 10 %");

        samples[20].rss_bytes = Some(56 * MIB);
        let found = violations(&report_of(&samples, ProxyEnd::Running));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("RSS grew 12.0 %"), "{found:?}");

        // Not measured: nothing to judge.
        for s in &mut samples {
            s.rss_bytes = None;
        }
        let report = report_of(&samples, ProxyEnd::Running);
        assert_eq!(report.proxy.rss.growth, None);
        assert!(violations(&report).is_empty());
    }

    #[test]
    fn loss_drops_and_missing_samples_are_violations() {
        let mut report = report_of(&healthy_samples(), ProxyEnd::Running);
        report.rtp.lost = 20;
        report.rtp.loss_ratio = 0.002;
        report.calls.dropped = 3;
        report.calls.failed = 3;
        report.calls.failure_reasons = BTreeMap::from([
            (ENDED_BY_FAR_SIDE.to_owned(), 1),
            (MEDIA_STOPPED.to_owned(), 2),
        ]);
        let found = violations(&report);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("3 answered call(s) dropped"), "{found:?}");
        assert!(found[0].contains("media stopped: 2"), "{found:?}");
        assert!(found[1].starts_with("RTP loss 0.002000"), "{found:?}");

        let empty = report_of(&[], ProxyEnd::Running);
        let found = violations(&empty);
        assert!(found[0].starts_with("no /metrics sample"), "{found:?}");
        assert!(found[1].contains("unknown"), "{found:?}");
    }

    /// An answered call that sent media until 13 s.
    fn record(outcome: Outcome, answered_at: u64, last_echo_ms: Option<u64>) -> CallRecord {
        CallRecord {
            outcome,
            answered: true,
            setup: Some(Duration::from_millis(5)),
            started_at: Duration::from_secs(answered_at),
            answered_at: Some(Duration::from_secs(answered_at)),
            last_echo_at: last_echo_ms.map(Duration::from_millis),
            media_end_at: Some(Duration::from_secs(13)),
            rtp_sent: 100,
            rtp_received: 50,
            jitter_seconds: None,
            bye_sent_at: Some(Duration::from_secs(13)),
        }
    }

    #[test]
    fn a_call_is_up_to_our_bye_or_else_to_its_last_sign_of_life() {
        let span = |record: CallRecord| {
            let span = record.span().unwrap();
            (span.up / 1_000_000, span.down / 1_000_000)
        };
        assert_eq!(
            span(record(Outcome::Completed, 8, Some(12_900))),
            (8_000, 13_000)
        );
        // Ended by the far side: the Proxy may free the slot before we read its BYE.
        let far = || Outcome::Failed(ENDED_BY_FAR_SIDE);
        assert_eq!(span(record(far(), 8, Some(11_000))), (8_000, 11_000));
        assert_eq!(span(record(far(), 8, None)), (8_000, 8_000));
        let refused = CallRecord {
            answered: false,
            answered_at: None,
            ..record(Outcome::Rejected(503), 8, None)
        };
        assert_eq!(refused.span(), None);
    }

    /// `(up, down)` spans in seconds.
    fn occupancy_of(spans: &[(u64, u64)]) -> Occupancy {
        let mut occupancy = Occupancy::new();
        for &(up, down) in spans {
            occupancy.add(Span::since_epoch(
                crate::occupancy::SpanKind::Call,
                Duration::from_secs(up),
                Duration::from_secs(down),
            ));
        }
        occupancy
    }

    #[test]
    fn more_sessions_up_at_once_than_the_cap_is_a_violation_whatever_the_gauge_says() {
        // The gauge never shows more than 10; the callers had 11 up from 5 s to 6 s.
        let samples = healthy_samples();
        let mut spans: Vec<(u64, u64)> = (0..10).map(|_| (2, 19)).collect();
        spans.push((5, 6));
        let mut report = report_of(&samples, ProxyEnd::Running);
        report.callers = callers_side(&mut occupancy_of(&spans), 11, &samples);
        assert_eq!(report.callers.peak_up, 11);
        assert_eq!(report.callers.peak_up_at_seconds, Some(5.0));
        assert_eq!(report.proxy.cap_exceeded_samples, 0);
        let found = violations(&report);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("cap exceeded on the callers' side: 11 sessions"),
            "{found:?}"
        );
        // At 5 s the gauge read 10 while 11 were up all through the reading.
        assert!(
            found[1].contains("under-counts: it read 10 at 5.0 s"),
            "{found:?}"
        );

        // At the cap, the same gauge is right.
        report.callers = callers_side(&mut occupancy_of(&spans[..10]), 10, &samples);
        assert_eq!(violations(&report), Vec::<String>::new());
    }

    #[test]
    fn a_gauge_below_the_callers_is_a_violation_only_for_the_whole_reading() {
        let mut samples = healthy_samples();
        samples[7].sessions_active = Some(3.0);
        let mut report = report_of(&samples, ProxyEnd::Running);
        // Four up from 2 s to 19 s: the reading at 7 s (3) is below them all through.
        report.callers = callers_side(&mut occupancy_of(&[(2, 19); 4]), 4, &samples);
        assert_eq!(report.callers.gauge_below_samples, 1);
        // One of them went down during the reading: the gauge may have read after it.
        let mut spans = vec![(2, 19); 3];
        spans.push((2, 7));
        report.callers = callers_side(&mut occupancy_of(&spans), 4, &samples);
        assert_eq!(report.callers.gauge_below_samples, 0);
    }

    #[test]
    fn only_calls_silenced_by_the_backend_kill_are_put_down_to_it() {
        let kill = Some((FaultKind::KillBackend, Duration::from_secs(10)));
        let stopped = || Outcome::Failed(MEDIA_STOPPED);
        // Its echo stopped at the kill: lost with its Backend.
        assert!(lost_to_fault(&record(stopped(), 8, Some(10_010)), kill));
        // Answered just before the kill, never heard: the same.
        assert!(lost_to_fault(&record(stopped(), 10, None), kill));
        // Still heard well after the kill: on a live Backend, a real drop.
        assert!(!lost_to_fault(&record(stopped(), 8, Some(12_500)), kill));
        // Reached its hold time before noticing, but its echo stopped at the kill: lost too.
        assert!(lost_to_fault(
            &record(Outcome::Completed, 8, Some(10_010)),
            kill
        ));
        // Heard to its end (the last echo a round trip after the last packet): not lost.
        assert!(!lost_to_fault(
            &record(Outcome::Completed, 8, Some(13_010)),
            kill
        ));
        // A drain loses nothing.
        let drain = Some((FaultKind::Drain, Duration::from_secs(10)));
        assert!(!lost_to_fault(&record(stopped(), 8, Some(10_010)), drain));

        let mut tally = Tally::new(None);
        tally.add(record(stopped(), 8, Some(10_010)), kill);
        tally.add(record(stopped(), 8, Some(12_500)), kill);
        tally.add(record(Outcome::Completed, 11, Some(13_000)), kill);
        assert_eq!(tally.dropped_by_fault, 1);
        assert_eq!(tally.dropped, 1);
        assert_eq!(tally.totals.calls.attempted, 3);
        assert_eq!(tally.totals.calls.answered, 3);
        assert_eq!(tally.totals.calls.failed, 1);
        // The fault's call carries no media into the loss figure.
        assert_eq!(tally.totals.rtp.sent, 200);
        assert_eq!(tally.after_fault.attempted, 1);
        assert_eq!(tally.after_fault.completed, 1);
    }

    /// A WebRTC session answered 201 at `at` s and connected 100 ms later.
    fn session(failure: Option<&str>, at: u64, last_audio_ms: Option<u64>) -> SessionRecord {
        let mut record = SessionRecord::default();
        record.failure = failure.map(str::to_owned);
        record.post_status = Some(201);
        record.connected = true;
        record.started_at = Duration::from_secs(at);
        record.connected_at = Some(Duration::from_secs(at) + Duration::from_millis(100));
        record.last_audio_at = last_audio_ms.map(Duration::from_millis);
        record.media_end_at = Some(Duration::from_secs(13));
        record.sent = 100;
        record.received = 100;
        record
    }

    fn webrtc_mix() -> WebrtcMix {
        WebrtcMix {
            session: WhipPlan {
                target: "http://127.0.0.1:8088/whip".into(),
                token: None,
                bind: std::net::Ipv4Addr::LOCALHOST.into(),
                concurrency: 1,
                total: 1,
                rate: 1.0,
                hold: Duration::from_secs(1),
                tone_hz: 1000.0,
                telephone_event: true,
                setup_timeout: Duration::from_secs(10),
                seed: 1,
                quiet: true,
                media_timeout: Some(Duration::from_secs(2)),
            },
            share: 0.3,
        }
    }

    #[test]
    fn webrtc_refusals_are_counted_and_drops_are_violations_unless_lost_to_the_kill() {
        let kill = Some((FaultKind::KillBackend, Duration::from_secs(10)));
        let mut tally = Tally::new(Some(&webrtc_mix()));
        let mut refused = SessionRecord::default();
        refused.failure = Some("POST answered 503".into());
        refused.post_status = Some(503);
        tally.add_session(refused, None);
        tally.add_session(session(None, 1, Some(12_990)), None);
        // Connection lost with its audio last heard at the kill: the fault's.
        tally.add_session(session(Some(whip::CONNECTION_LOST), 8, Some(10_010)), kill);
        // Audio stopped while other sessions still heard theirs: a real drop.
        tally.add_session(session(Some(whip::AUDIO_STOPPED), 8, Some(12_500)), kill);
        // Connected but the tone was not found: a failure, not a drop.
        tally.add_session(session(Some("tone not found"), 11, Some(12_990)), kill);
        let webrtc = tally.webrtc.as_ref().unwrap();
        let s = &webrtc.sessions;
        assert_eq!(s.attempted, 5);
        assert_eq!(s.refused, BTreeMap::from([(503, 1)]));
        assert_eq!((s.answered, s.connected, s.completed), (4, 4, 1));
        assert_eq!((s.failed, s.dropped, s.dropped_by_fault), (2, 1, 1));
        assert_eq!(webrtc.after_fault.attempted, 1);
        assert_eq!(webrtc.after_fault.failed, 1);

        let mut report = report_of(&healthy_samples(), ProxyEnd::Running);
        report.webrtc = Some(SoakWebrtc {
            sessions: s.clone(),
            ..SoakWebrtc::default()
        });
        let found = violations(&report);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("1 connected WebRTC session(s) dropped"),
            "{found:?}"
        );
        assert!(found[0].contains("audio stopped during the hold: 1"));
    }

    #[test]
    fn webrtc_loss_counts_in_the_loss_check() {
        let mut report = report_of(&healthy_samples(), ProxyEnd::Running);
        report.webrtc = Some(SoakWebrtc::default());
        assert!(violations(&report).is_empty());
        // Calls lose nothing; WebRTC 40 of 2000: 40 of 12 000 in all, above 0.001.
        let rtp = &mut report.webrtc.as_mut().unwrap().rtp;
        rtp.received = 1960;
        rtp.lost = 40;
        let found = violations(&report);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("RTP loss 0.003333 (40 of 12000"),
            "{found:?}"
        );
        assert!(found[0].contains("WebRTC 40 of 2000"), "{found:?}");
    }

    #[test]
    fn arrivals_are_poisson_at_the_rate_and_seeded() {
        let mut rng = SmallRng::seed_from_u64(42);
        let n = 20_000;
        let total: Duration = (0..n).map(|_| arrival_gap(&mut rng, 8.0)).sum();
        let mean = total.as_secs_f64() / f64::from(n);
        assert!((mean - 0.125).abs() < 0.005, "mean gap {mean}");
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            arrival_gap(&mut rng, 8.0)
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
