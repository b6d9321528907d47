//! `voxgate-loadgen whip`: WHIP clients that each offer Opus over WebRTC, send a tone for the
//! hold time, check that its echo comes back, and delete their session.
//!
//! Each session is a tokio task with its own UDP socket (its ICE host candidate) and a
//! [`ClientPeer`]: `POST` the offer, apply the `201`'s answer, drive ICE and DTLS until
//! connected, then send the [`ToneLoop`] every 20 ms while the [`EchoAnalyzer`] decodes what
//! comes back, and finally `DELETE` the `Location` and close the peer. Setup is timed from the
//! `POST`: to the `201`, to connected, to the first RTP packet back. Loss comes from the received
//! stream's sequence numbers (the gateway renumbers, so the echo cannot be matched to what was
//! sent packet by packet); the round trip and tone check come from the decoded audio
//! (`signal`).
//!
//! `soak` runs sessions through the same [`WhipContext`], each with the hold it drew, mixed with
//! its SIP calls.

mod http;
mod peer;
pub mod report;
mod signal;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use voxgate_media::StreamStats;

use crate::occupancy::{Span, SpanKind};
use crate::progress::Progress;
use crate::report::{Percentiles, ratio};
use http::WhipUrl;
use peer::{ClientPeer, OPUS_PT, PeerState};
use report::{
    SessionCounts, SetupTimes, ToneCounts, WhipReport, WhipRtpCounts, WhipSettings, WhipVerdict,
};
use signal::{EchoAnalyzer, FRAME, FRAME_TICKS, ToneLoop, ToneSummary};

/// Room reserved in the receive buffer before each datagram.
const DATAGRAM_ROOM: usize = 2048;
/// A session more than this late on its 20 ms schedule skips ahead instead of bursting.
const MAX_LATE: Duration = Duration::from_millis(100);

/// Why a connected session failed when its peer connection failed (or the server closed DTLS)
/// before its hold time.
pub const CONNECTION_LOST: &str = "connection lost during the hold";
/// Why a connected session failed when it heard no audio for [`WhipPlan::media_timeout`].
pub const AUDIO_STOPPED: &str = "audio stopped during the hold";

/// What `whip` is asked to do.
#[derive(Debug, Clone)]
pub struct WhipPlan {
    /// The WHIP endpoint, `http://HOST:PORT/PATH`.
    pub target: String,
    /// Bearer token for `Authorization`.
    pub token: Option<String>,
    /// Local address of the media sockets (unspecified: the one routing to the target).
    pub bind: IpAddr,
    /// Most sessions up at once.
    pub concurrency: u64,
    /// Sessions to run.
    pub total: u64,
    /// Sessions started per second.
    pub rate: f64,
    /// How long each connected session sends and receives.
    pub hold: Duration,
    /// Frequency of the tone, Hz.
    pub tone_hz: f64,
    /// Offer telephone-event/48000 next to Opus.
    pub telephone_event: bool,
    /// A session not connected this long after its `POST` fails.
    pub setup_timeout: Duration,
    /// Seed of SSRCs and first sequence numbers and timestamps.
    pub seed: u64,
    /// No progress line.
    pub quiet: bool,
    /// A connected session that hears no audio for this long fails as [`AUDIO_STOPPED`] before
    /// its hold time (`soak`'s drop check); `None`: only its absence at the end is checked.
    pub media_timeout: Option<Duration>,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
struct Live {
    started: AtomicU64,
    active: AtomicU64,
    peak_active: AtomicU64,
    finished: AtomicU64,
    connected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rtp_sent: AtomicU64,
    rtp_received: AtomicU64,
    first_start_us: AtomicU64,
    last_start_us: AtomicU64,
}

/// What every session of a run shares: the plan, the endpoint, the tone, the counters.
#[derive(Debug)]
pub struct WhipContext {
    plan: WhipPlan,
    url: WhipUrl,
    local_ip: IpAddr,
    tone: ToneLoop,
    epoch: Instant,
    live: Live,
}

/// What one session measured. Times `*_at` are since the run's epoch.
#[derive(Debug, Default)]
pub struct SessionRecord {
    /// Why the session failed (its first failure); `None` when it completed.
    pub failure: Option<String>,
    /// Status of the `POST` (anything but 201 is a refusal).
    pub post_status: Option<u16>,
    /// Status of the `DELETE`.
    pub delete_status: Option<u16>,
    /// ICE and DTLS completed.
    pub connected: bool,
    /// When the `POST` was sent.
    pub started_at: Duration,
    /// When the `201` came.
    pub answered_at: Option<Duration>,
    /// When ICE and DTLS completed.
    pub connected_at: Option<Duration>,
    /// When the `DELETE` was sent.
    pub deleted_at: Option<Duration>,
    /// When the last audio packet came back.
    pub last_audio_at: Option<Duration>,
    /// When it stopped sending (its hold was up, or it ended early).
    pub media_end_at: Option<Duration>,
    post_to_201: Option<Duration>,
    post_to_connected: Option<Duration>,
    post_to_first_audio: Option<Duration>,
    rtt: Vec<Duration>,
    /// Opus packets sent.
    pub sent: u64,
    /// Packets received.
    pub received: u64,
    expected: u64,
    /// Packets missing from the received stream's sequence numbers.
    pub lost: u64,
    jitter_seconds: Option<f64>,
    decode_errors: u64,
    /// The tone check, for connected sessions.
    tone: Option<ToneSummary>,
}

/// Runs the plan and returns its report.
pub async fn run(plan: WhipPlan) -> anyhow::Result<WhipReport> {
    let context = WhipContext::start(plan.clone(), Instant::now())
        .await
        .with_context(|| format!("--target {}", plan.target))?;
    let (records_tx, mut records) = mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let launcher = tokio::spawn(launch(context.clone(), records_tx, stop.clone()));

    let progress = Progress::new(plan.total, plan.quiet);
    let mut totals = Totals::new(plan.tone_hz);
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
                let finished = context.live.finished.load(Ordering::Relaxed);
                progress.update(context.epoch.elapsed(), finished, &progress_line(&context, &totals));
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                stop.notify_one();
                progress.update(context.epoch.elapsed(), context.live.finished.load(Ordering::Relaxed),
                    "interrupted: no new sessions; waiting for active ones to end (Ctrl-C again to abort)");
            }
            _ = tokio::signal::ctrl_c(), if interrupted => anyhow::bail!("aborted"),
        }
    }
    launcher.await.context("launcher task")?;
    progress.finish();
    Ok(totals.into_report(&context))
}

async fn launch(
    context: Arc<WhipContext>,
    records: mpsc::UnboundedSender<SessionRecord>,
    stop: Arc<tokio::sync::Notify>,
) {
    let plan = &context.plan;
    let (rate, concurrency, total) = (plan.rate, plan.concurrency as usize, plan.total);
    crate::pace::launch(rate, concurrency, total, stop, |index| {
        let context = context.clone();
        let records = records.clone();
        async move {
            let record = context.run_session(index, context.plan.hold).await;
            let _ = records.send(record);
        }
    })
    .await;
}

impl WhipContext {
    /// Resolves the plan's endpoint and encodes the tone; times are counted from `epoch`.
    pub async fn start(plan: WhipPlan, epoch: Instant) -> anyhow::Result<Arc<Self>> {
        let url = WhipUrl::parse(&plan.target).await?;
        let local_ip =
            crate::caller::local_ip_towards(SocketAddr::new(plan.bind, 0), url.addr()).await?;
        let tone = ToneLoop::new(plan.tone_hz).context("cannot encode the tone")?;
        Ok(Arc::new(Self {
            plan,
            url,
            local_ip,
            tone,
            epoch,
            live: Live::default(),
        }))
    }

    /// Runs session `index` (its seeds derive from it) from `POST` to `DELETE`, holding it
    /// `hold` once connected.
    pub async fn run_session(&self, index: u64, hold: Duration) -> SessionRecord {
        let live = &self.live;
        let since_epoch = self.epoch.elapsed();
        let since_epoch_us = micros(since_epoch);
        if live.started.fetch_add(1, Ordering::Relaxed) == 0 {
            live.first_start_us.store(since_epoch_us, Ordering::Relaxed);
        }
        live.last_start_us
            .fetch_max(since_epoch_us, Ordering::Relaxed);
        let active = live.active.fetch_add(1, Ordering::Relaxed) + 1;
        live.peak_active.fetch_max(active, Ordering::Relaxed);
        let mut record = SessionRecord {
            started_at: since_epoch,
            ..SessionRecord::default()
        };
        record.failure = Session::new(self, index, hold).run(&mut record).await.err();
        live.active.fetch_sub(1, Ordering::Relaxed);
        match &record.failure {
            None => live.completed.fetch_add(1, Ordering::Relaxed),
            Some(reason) => {
                tracing::debug!(index, reason, "session failed");
                live.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        live.finished.fetch_add(1, Ordering::Relaxed);
        record
    }

    /// Sessions up now.
    pub fn active(&self) -> u64 {
        self.live.active.load(Ordering::Relaxed)
    }

    /// Most sessions up at once so far.
    pub fn peak_active(&self) -> u64 {
        self.live.peak_active.load(Ordering::Relaxed)
    }
}

impl SessionRecord {
    /// The time it was up as its client saw it (see [`crate::occupancy`](mod@crate::occupancy)): from the `201` to the
    /// `DELETE` when it completed, else to its last sign of life.
    pub fn span(&self) -> Option<Span> {
        let up = self.answered_at?;
        let down = match (&self.failure, self.deleted_at) {
            (None, Some(deleted)) => deleted,
            _ => self.last_audio_at.unwrap_or(up).max(up),
        };
        Some(Span::since_epoch(SpanKind::Webrtc, up, down))
    }
}

/// One WHIP session from `POST` to `DELETE`.
struct Session<'a> {
    context: &'a WhipContext,
    hold: Duration,
    rng: SmallRng,
}

impl<'a> Session<'a> {
    fn new(context: &'a WhipContext, index: u64, hold: Duration) -> Self {
        Self {
            context,
            hold,
            rng: SmallRng::seed_from_u64(
                context.plan.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
        }
    }

    async fn run(&mut self, record: &mut SessionRecord) -> Result<(), String> {
        let context = self.context;
        let plan = &context.plan;
        let token = plan.token.as_deref();
        let socket = UdpSocket::bind(SocketAddr::new(context.local_ip, 0))
            .await
            .map_err(|err| format!("cannot bind a UDP socket: {}", err.kind()))?;
        let local = socket
            .local_addr()
            .map_err(|err| format!("cannot bind a UDP socket: {}", err.kind()))?;
        let now = Instant::now().into_std();
        let built = ClientPeer::new(
            local,
            self.rng.random(),
            self.rng.random(),
            self.rng.random(),
            plan.telephone_event,
            now,
        )
        .and_then(|mut peer| {
            let offer = peer.offer(now)?;
            Ok((peer, offer))
        });
        let (peer, offer) = match built {
            Ok(built) => built,
            Err(err) => {
                tracing::warn!("cannot build the offer: {err:#}");
                return Err("cannot build the offer".to_owned());
            }
        };

        let post_at = Instant::now();
        let answer = context
            .url
            .post_offer(offer, token)
            .await
            .map_err(|failure| format!("POST {}", failure.as_str()))?;
        record.post_status = Some(answer.status);
        if answer.status != 201 {
            return Err(format!("POST answered {}", answer.status));
        }
        record.post_to_201 = Some(post_at.elapsed());
        record.answered_at = Some(context.epoch.elapsed());
        let Some(resource) = answer
            .location
            .as_deref()
            .and_then(|location| context.url.resolve(location))
        else {
            return Err("201 without a usable Location".to_owned());
        };

        let mut media = Media {
            socket,
            buf: BytesMut::with_capacity(DATAGRAM_ROOM),
            peer,
        };
        let result = media
            .connect_and_hold(context, &answer.body, post_at, self.hold, record)
            .await;
        record.deleted_at = Some(context.epoch.elapsed());
        let deleted = resource.delete(token).await;
        media.peer.close();
        media.flush();
        record.delete_status = deleted.as_ref().ok().copied();
        result?;
        match deleted {
            Ok(200 | 204) => Ok(()),
            Ok(status) => Err(format!("DELETE answered {status}")),
            Err(failure) => Err(format!("DELETE {}", failure.as_str())),
        }
    }
}

/// A session's socket and peer once the `POST` was answered.
struct Media {
    socket: UdpSocket,
    buf: BytesMut,
    peer: ClientPeer,
}

impl Media {
    async fn connect_and_hold(
        &mut self,
        context: &WhipContext,
        answer: &str,
        post_at: Instant,
        hold: Duration,
        record: &mut SessionRecord,
    ) -> Result<(), String> {
        let plan = &context.plan;
        let since_epoch = |at: Instant| at.saturating_duration_since(context.epoch);
        if let Err(err) = self.peer.accept_answer(Instant::now().into_std(), answer) {
            tracing::debug!("SDP answer refused: {err:#}");
            return Err("SDP answer refused".to_owned());
        }
        // Start the connectivity checks now, as a browser does, not at rtc's next timer tick.
        self.peer.handle_timeout(Instant::now().into_std());
        self.flush();

        let setup_end = post_at + plan.setup_timeout;
        loop {
            match self.peer.state() {
                PeerState::Connected => break,
                PeerState::Failed => return Err("ICE/DTLS failed".to_owned()),
                PeerState::Connecting => {}
            }
            if Instant::now() >= setup_end {
                return Err("ICE/DTLS not connected in time".to_owned());
            }
            self.step(setup_end).await;
            // Media can arrive with the last DTLS flight; it is not counted before the hold.
            while self.peer.poll_rtp().is_some() {}
        }
        record.connected = true;
        let connected_at = Instant::now();
        record.connected_at = Some(since_epoch(connected_at));
        record.post_to_connected = Some(post_at.elapsed());
        context.live.connected.fetch_add(1, Ordering::Relaxed);

        let mut analyzer =
            EchoAnalyzer::new(plan.tone_hz).map_err(|_| "cannot start the Opus decoder")?;
        let mut stats = StreamStats::new(48_000);
        let hold_start = Instant::now();
        let hold_end = hold_start + hold;
        let mut next_send = hold_start;
        let mut heard = hold_start;
        let mut frame = 0u64;
        let mut onset_sent_at = None;
        let outcome = loop {
            let now = Instant::now();
            if now >= hold_end {
                break Ok(());
            }
            if self.peer.state() == PeerState::Failed {
                break Err(CONNECTION_LOST.to_owned());
            }
            if plan
                .media_timeout
                .is_some_and(|timeout| now > heard + timeout)
            {
                break Err(AUDIO_STOPPED.to_owned());
            }
            if now > next_send + MAX_LATE {
                next_send = now;
            }
            while next_send <= now {
                let (payload, onset) = context.tone.frame(frame);
                frame += 1;
                next_send += FRAME;
                if self
                    .peer
                    .send_opus(now.into_std(), payload.clone(), FRAME_TICKS)
                    .is_ok()
                {
                    if onset {
                        onset_sent_at = Some(now);
                    }
                    record.sent += 1;
                    context.live.rtp_sent.fetch_add(1, Ordering::Relaxed);
                }
                self.flush();
            }
            self.step(next_send.min(hold_end)).await;
            let now = Instant::now();
            while let Some(packet) = self.peer.poll_rtp() {
                heard = now;
                record.received += 1;
                context.live.rtp_received.fetch_add(1, Ordering::Relaxed);
                record
                    .post_to_first_audio
                    .get_or_insert_with(|| now - post_at);
                stats.record(
                    now.into_std(),
                    packet.seq,
                    packet.timestamp,
                    packet.payload.len(),
                );
                if packet.payload_type != OPUS_PT {
                    continue;
                }
                if let Some(offset) = analyzer.handle_opus(&packet.payload)
                    && let Some(sent_at) = onset_sent_at
                {
                    record.rtt.push(now - sent_at + offset);
                }
            }
        };
        record.media_end_at = Some(since_epoch(Instant::now()));
        record.last_audio_at = record.post_to_first_audio.map(|_| since_epoch(heard));
        record.expected = stats.expected();
        record.lost = stats.lost();
        record.jitter_seconds = (stats.received() > 1).then(|| stats.jitter_seconds());
        record.decode_errors = analyzer.decode_errors();
        let tone = analyzer.summary();
        record.tone = Some(tone);
        outcome?;
        if record.received == 0 {
            return Err("no audio back".to_owned());
        }
        if !tone.passed() {
            return Err("tone not found".to_owned());
        }
        Ok(())
    }

    /// Waits for a datagram, the peer's next timer or `until`, whichever comes first, and feeds
    /// the peer what happened; sends what it queued.
    async fn step(&mut self, until: Instant) {
        let timer = self
            .peer
            .poll_timeout()
            .map(Instant::from_std)
            .map_or(until, |at| at.min(until));
        // A deadline already past must not spin: rtc's timers move on when handled.
        let wake = timer
            .max(Instant::now() + Duration::from_micros(500))
            .min(until);
        self.buf.reserve(DATAGRAM_ROOM);
        tokio::select! {
            received = self.socket.recv_buf_from(&mut self.buf) => {
                let datagram = self.buf.split();
                if let Ok((_, from)) = received {
                    self.peer.handle_receive(Instant::now().into_std(), from, datagram);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if self
            .peer
            .poll_timeout()
            .is_some_and(|at| Instant::from_std(at) <= now)
        {
            self.peer.handle_timeout(now.into_std());
        }
        self.flush();
    }

    /// Sends everything the peer queued. A datagram the socket refuses (buffer full) is dropped,
    /// as the network would.
    fn flush(&mut self) {
        while let Some((to, datagram)) = self.peer.poll_transmit() {
            let _ = self.socket.try_send_to(&datagram, to);
        }
    }
}

/// Aggregates session records into the report.
struct Totals {
    sessions: SessionCounts,
    post_statuses: BTreeMap<u16, u64>,
    delete_statuses: BTreeMap<u16, u64>,
    media: MediaTotals,
}

impl Totals {
    fn new(tone_hz: f64) -> Self {
        Self {
            sessions: SessionCounts::default(),
            post_statuses: BTreeMap::new(),
            delete_statuses: BTreeMap::new(),
            media: MediaTotals::new(tone_hz),
        }
    }

    fn add(&mut self, record: SessionRecord) {
        self.media.add(&record);
        let sessions = &mut self.sessions;
        sessions.attempted += 1;
        if record.post_to_201.is_some() {
            sessions.answered += 1;
        }
        if record.connected {
            sessions.connected += 1;
        }
        match record.failure {
            None => sessions.completed += 1,
            Some(reason) => {
                sessions.failed += 1;
                *sessions.failure_reasons.entry(reason).or_default() += 1;
            }
        }
        if let Some(status) = record.post_status {
            *self.post_statuses.entry(status).or_default() += 1;
        }
        if let Some(status) = record.delete_status {
            *self.delete_statuses.entry(status).or_default() += 1;
        }
    }

    fn into_report(mut self, context: &WhipContext) -> WhipReport {
        let plan = &context.plan;
        let media = self.media.finish();
        self.sessions.achieved_rate = achieved_rate(&context.live);
        self.sessions.peak_concurrency = context.peak_active();
        let passed = self.sessions.failed == 0 && self.sessions.attempted > 0;
        WhipReport {
            tool: format!("voxgate-loadgen {}", env!("CARGO_PKG_VERSION")),
            target: plan.target.clone(),
            duration_seconds: context.epoch.elapsed().as_secs_f64(),
            settings: WhipSettings {
                concurrency: plan.concurrency,
                total: plan.total,
                rate: plan.rate,
                hold_seconds: plan.hold.as_secs_f64(),
                tone_hz: plan.tone_hz,
                telephone_event: plan.telephone_event,
                token: plan.token.is_some(),
            },
            sessions: self.sessions,
            post_statuses: self.post_statuses,
            delete_statuses: self.delete_statuses,
            setup_ms: media.setup_ms,
            media_rtt_ms: media.media_rtt_ms,
            rtp: media.rtp,
            tone: media.tone,
            verdict: WhipVerdict { passed },
        }
    }
}

/// Setup times, audio round trips, RTP and the tone check of sessions, summed up (by `whip` and
/// by `soak`).
pub struct MediaTotals {
    post_to_201: Histogram<u64>,
    post_to_connected: Histogram<u64>,
    post_to_first_audio: Histogram<u64>,
    rtt: Histogram<u64>,
    rtp: WhipRtpCounts,
    expected: u64,
    jitter_sum_ms: f64,
    jitter_sessions: u64,
    tone: ToneCounts,
    tone_ratio_sum: f64,
    tone_sessions: u64,
}

/// [`MediaTotals`] finished.
#[derive(Debug, Clone, Default)]
pub struct MediaSummary {
    /// Setup times.
    pub setup_ms: SetupTimes,
    /// Audio round trip.
    pub media_rtt_ms: Percentiles,
    /// Media counters.
    pub rtp: WhipRtpCounts,
    /// The tone check.
    pub tone: ToneCounts,
}

impl MediaTotals {
    /// No session yet; the tone sent is `tone_hz`.
    pub fn new(tone_hz: f64) -> Self {
        Self {
            post_to_201: new_histogram(),
            post_to_connected: new_histogram(),
            post_to_first_audio: new_histogram(),
            rtt: new_histogram(),
            rtp: WhipRtpCounts::default(),
            expected: 0,
            jitter_sum_ms: 0.0,
            jitter_sessions: 0,
            tone: ToneCounts {
                sent_hz: tone_hz,
                ratio_min: f64::INFINITY,
                ..ToneCounts::default()
            },
            tone_ratio_sum: 0.0,
            tone_sessions: 0,
        }
    }

    /// Counts one session's times and media.
    pub fn add(&mut self, record: &SessionRecord) {
        for (histogram, value) in [
            (&mut self.post_to_201, record.post_to_201),
            (&mut self.post_to_connected, record.post_to_connected),
            (&mut self.post_to_first_audio, record.post_to_first_audio),
        ] {
            if let Some(value) = value {
                let _ = histogram.record(micros(value));
            }
        }
        for rtt in &record.rtt {
            let _ = self.rtt.record(micros(*rtt));
        }
        self.rtp.sent += record.sent;
        self.rtp.received += record.received;
        self.rtp.lost += record.lost;
        self.expected += record.expected;
        self.rtp.decode_errors += record.decode_errors;
        if let Some(jitter) = record.jitter_seconds {
            let ms = jitter * 1000.0;
            self.jitter_sum_ms += ms;
            self.jitter_sessions += 1;
            self.rtp.jitter_max_ms = self.rtp.jitter_max_ms.max(ms);
        }
        if let Some(summary) = record.tone {
            let tone = &mut self.tone;
            if summary.passed() {
                tone.passed += 1;
            } else {
                tone.failed += 1;
            }
            tone.windows += summary.windows;
            tone.windows_passed += summary.passed;
            if summary.windows > 0 {
                self.tone_ratio_sum += f64::from(summary.ratio_mean);
                self.tone_sessions += 1;
                tone.ratio_min = tone.ratio_min.min(f64::from(summary.ratio_min));
                *tone
                    .found_hz
                    .entry(summary.found_hz.round() as u32)
                    .or_default() += 1;
            }
        }
    }

    /// Percentiles, the loss ratio and the means.
    pub fn finish(mut self) -> MediaSummary {
        self.rtp.loss_ratio = ratio(self.rtp.lost, self.expected);
        if self.jitter_sessions > 0 {
            self.rtp.jitter_mean_ms = self.jitter_sum_ms / self.jitter_sessions as f64;
        }
        if self.tone_sessions > 0 {
            self.tone.ratio_mean = self.tone_ratio_sum / self.tone_sessions as f64;
        } else {
            self.tone.ratio_min = 0.0;
        }
        MediaSummary {
            setup_ms: SetupTimes {
                post_to_201: Percentiles::from_micros(&self.post_to_201),
                post_to_connected: Percentiles::from_micros(&self.post_to_connected),
                post_to_first_audio: Percentiles::from_micros(&self.post_to_first_audio),
            },
            media_rtt_ms: Percentiles::from_micros(&self.rtt),
            rtp: self.rtp,
            tone: self.tone,
        }
    }
}

fn progress_line(context: &WhipContext, totals: &Totals) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let live = &context.live;
    let p50 = |h: &Histogram<u64>| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(0.5) as f64 / 1000.0
        }
    };
    format!(
        "active {} connected {} completed {} failed {} | connect p50 {:.1} ms rtt p50 {:.1} ms | rtp tx {} rx {}",
        load(&live.active),
        load(&live.connected),
        load(&live.completed),
        load(&live.failed),
        p50(&totals.media.post_to_connected),
        p50(&totals.media.rtt),
        load(&live.rtp_sent),
        load(&live.rtp_received),
    )
}

/// Sessions started per second between the first and the last.
fn achieved_rate(live: &Live) -> f64 {
    let started = live.started.load(Ordering::Relaxed);
    let first = live.first_start_us.load(Ordering::Relaxed);
    let last = live.last_start_us.load(Ordering::Relaxed);
    if started < 2 || last <= first {
        return 0.0;
    }
    (started - 1) as f64 / ((last - first) as f64 / 1e6)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn new_histogram() -> Histogram<u64> {
    // 1 us to 1 hour at 3 significant digits; auto-resize covers anything beyond.
    let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    histogram.auto(true);
    histogram
}
