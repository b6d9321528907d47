//! `voxgate-loadgen`: places real SIP calls with RTP, runs an echo Backend and WHIP (WebRTC)
//! sessions, for soak tests and benchmarks of voxgate or any SIP server.

mod backend;
mod batch;
mod caller;
mod echo;
mod http_url;
mod media;
mod occupancy;
mod pace;
mod probe;
mod progress;
mod report;
mod scrape;
mod soak;
mod soak_report;
mod whip;

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use voxgate_sip::sdp::CodecKind;

/// User-Agent and Server header value of the loadgen's SIP messages.
pub const USER_AGENT: &str = concat!("voxgate-loadgen/", env!("CARGO_PKG_VERSION"));

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code when the run worked but exceeded --max-failure-rate or --max-loss.
const EXIT_LIMIT_EXCEEDED: u8 = 2;
/// The tone of `soak`'s WebRTC sessions (`whip`'s default).
const WHIP_TONE_HZ: f64 = 1000.0;
/// A `soak` WebRTC session not connected this long after its POST fails (`whip`'s default).
const WHIP_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Load generator for SIP/RTP gateways: real SIP calls with G.711 RTP, and an echo Backend.
///
/// `call` places calls against any SIP server and measures setup time, media round trip, loss and
/// jitter; `backend` answers calls and echoes their media; `soak` runs churning calls against a
/// voxgate Proxy for a long time and judges it from its metrics; `whip` runs WebRTC sessions
/// against a WHIP endpoint and checks that their audio comes back.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (RUST_LOG syntax), e.g. `debug` or `voxgate_loadgen=trace`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Place SIP calls with RTP and report what they measured.
    ///
    /// Each call: INVITE with a G.711 offer, ACK the 200 OK, send 20 ms RTP for the hold time
    /// (each packet stamped with its send time), collect the echo, BYE. The exit code is 2 when a
    /// --max-* limit is exceeded, 1 on errors.
    Call(CallArgs),
    /// Run an echo Backend: answer INVITEs (503 + Retry-After above --max-sessions), echo RTP to
    /// its sender, answer OPTIONS, hang up on BYE. Stops on Ctrl-C or SIGTERM after hanging up
    /// every call.
    Backend(BackendArgs),
    /// Run churning calls against a voxgate Proxy, sample its /metrics, and judge the run.
    ///
    /// For --duration, calls arrive at random (Poisson) at --rate per second; each answered call
    /// sends RTP both ways, as in `call`, for a hold drawn between --hold-min and --hold-max.
    /// /metrics is read every second. Offer more than the Proxy's cap (e.g. 1.5x): 503s at the
    /// cap are expected and counted by code, not judged.
    ///
    /// Fault (at most one): --drain-at T --drain-pid PID sends SIGTERM to the Proxy at T; calls
    /// already up must run to their end, new ones get 503, and the run ends once the Proxy has
    /// exited. --kill-backend-at T --kill-backend-pid PID sends SIGKILL to a Backend at T; its
    /// answered calls are lost and reported as dropped_by_fault (not violations), and later calls
    /// must be answered by the remaining Backends.
    ///
    /// Verdict: exit 2, each violation named on stderr and in the report, when
    ///   - the callers had more calls and WebRTC sessions answered and up at once than the
    ///     highest voxgate_sessions_limit read (cap exceeded, judged from outside: a call counts
    ///     from its 200 OK to our BYE, or to its last echo when the far side ended it);
    ///   - a reading of voxgate_sessions_active is below the sessions the callers had up all
    ///     through that reading (the gauge under-counts);
    ///   - the Proxy ever reports voxgate_sessions_active > voxgate_sessions_limit (cap exceeded);
    ///   - an answered call is dropped (BYE from the far side before its hold time, or no echo
    ///     for --media-timeout) other than by the declared Backend kill;
    ///   - voxgate_sessions_active is not 0 --grace after the last call ended (counter leak;
    ///     skipped when the Proxy exited after the drain; a drained Proxy still up then, or a
    ///     Proxy gone without a drain, is a violation too);
    ///   - RTP lost / sent over answered calls exceeds --max-loss;
    ///   - the Proxy's RSS at the end exceeds its RSS after the warm-up (the first minute or the
    ///     first 10 % of the run, whichever is shorter) by more than --max-rss-growth.
    ///     RSS is process_resident_memory_bytes when /metrics has it, else VmRSS of --proxy-pid.
    ///
    /// WebRTC: --whip-target URL --whip-share F makes a fraction F of the arrivals WHIP sessions
    /// (as in `whip`, held for the same drawn hold) instead of SIP calls. A 503 to their POST is a
    /// refusal like a SIP 503; a connected session whose connection fails or that hears no audio
    /// for --media-timeout before its hold time is dropped, a violation like a dropped call; their
    /// RTP loss counts in --max-loss. Reported under "webrtc".
    ///
    /// Several soaks at once against one Proxy: give each --up-log FILE and judge them together
    /// with `voxgate-loadgen occupancy --cap N FILE...`.
    ///
    /// Exit 1 on errors (bad arguments, /metrics unreadable at the start).
    #[command(verbatim_doc_comment)]
    Soak(SoakArgs),
    /// Merge the --up-log files of soaks run at once against one Proxy and judge the cap from the
    /// callers' side: the most calls and WebRTC sessions answered and up at the same moment
    /// across every process (the logs share the machine's CLOCK_MONOTONIC).
    ///
    /// Prints the peak; exit 2 when it exceeds --cap, 1 on errors (a missing or malformed log).
    Occupancy(OccupancyArgs),
    /// Run WebRTC sessions against a WHIP endpoint and check that their audio comes back.
    ///
    /// Each session: POST an Opus offer (one host candidate, non-trickle), apply the 201's
    /// answer, complete ICE and DTLS, send a tone as 20 ms Opus frames for --hold while decoding
    /// the audio that comes back (the gateway bridges to an echo Backend), then DELETE the
    /// Location. The tone pauses for 100 ms every second; the end of each pause, found again in
    /// the decoded echo, gives the audio round trip. A session fails on a setup failure, no
    /// audio back, the tone not found in the echo, or a DELETE not answered 200/204; the exit
    /// code is 2 when any session failed, 1 on errors.
    Whip(WhipArgs),
}

/// How the caller speaks SIP and G.711: shared by `call` and `soak`.
#[derive(Debug, clap::Args)]
struct SipCallerArgs {
    /// User part of the Request-URI (sip:USER@TARGET).
    #[arg(long, default_value = "echo")]
    user: String,
    /// Local SIP address; port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// CANCEL a call that has no final response after this long.
    #[arg(long, default_value = "32s", value_parser = humantime::parse_duration)]
    answer_timeout: Duration,
    /// G.711 flavour offered first (the other is offered second).
    #[arg(long, value_enum, default_value_t = CodecArg::Pcmu)]
    codec: CodecArg,
}

impl SipCallerArgs {
    fn codec(&self) -> probe::G711 {
        match self.codec {
            CodecArg::Pcmu => probe::G711::Pcmu,
            CodecArg::Pcma => probe::G711::Pcma,
        }
    }
}

#[derive(Debug, clap::Args)]
struct CallArgs {
    /// SIP server to call (HOST:PORT, UDP).
    #[arg(long)]
    target: String,
    /// Calls started per second.
    #[arg(long, default_value_t = 10.0, value_parser = positive_f64)]
    rate: f64,
    /// Most calls up at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Calls to place in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    total: u64,
    /// How long each answered call is held with RTP (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hold: Duration,
    #[command(flatten)]
    sip: SipCallerArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Fail (exit 2) when (failed + timed out) / attempted exceeds this fraction (0.01 = 1 %).
    #[arg(long, value_parser = fraction)]
    max_failure_rate: Option<f64>,
    /// Fail (exit 2) when RTP lost / sent exceeds this fraction.
    #[arg(long, value_parser = fraction)]
    max_loss: Option<f64>,
    /// Seed for Call-IDs, tags and SSRCs, for a reproducible run. Default: random, so that runs
    /// against one server never repeat each other's Call-IDs. The report names the seed used.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress line; the summary is still printed.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct OccupancyArgs {
    /// The Proxy's cap (limits.max_sessions).
    #[arg(long)]
    cap: u64,
    /// The --up-log files of the soaks.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// The Proxy's SIP address (HOST:PORT, UDP).
    #[arg(long)]
    target: String,
    /// The Proxy's Prometheus endpoint, read every second (http://HOST:PORT/metrics).
    #[arg(long)]
    metrics: String,
    /// How long calls are placed for (e.g. 10m, 30s); calls up then run to their end.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Mean calls started per second (Poisson arrivals).
    #[arg(long, default_value_t = 10.0, value_parser = positive_f64)]
    rate: f64,
    /// Shortest hold of an answered call.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold_min: Duration,
    /// Longest hold of an answered call (holds are uniform in [--hold-min, --hold-max]).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    hold_max: Duration,
    /// Most calls up at once on the loadgen's side (an arrival beyond waits).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Send SIGTERM to --drain-pid (the Proxy) this long into the run.
    #[arg(long, value_parser = humantime::parse_duration, requires = "drain_pid",
        conflicts_with_all = ["kill_backend_at", "kill_backend_pid"])]
    drain_at: Option<Duration>,
    /// The Proxy's process id, for --drain-at (also used for RSS when --proxy-pid is not given).
    #[arg(long, requires = "drain_at")]
    drain_pid: Option<u32>,
    /// Send SIGKILL to --kill-backend-pid (a Backend) this long into the run.
    #[arg(long, value_parser = humantime::parse_duration, requires = "kill_backend_pid")]
    kill_backend_at: Option<Duration>,
    /// The Backend process id, for --kill-backend-at.
    #[arg(long, requires = "kill_backend_at")]
    kill_backend_pid: Option<u32>,
    /// The Proxy's process id: its RSS from /proc when /metrics has no
    /// process_resident_memory_bytes, and its exit noticed at once.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// Fail (exit 2) when RTP lost / sent over answered calls exceeds this fraction (1 = never).
    #[arg(long, default_value_t = 0.001, value_parser = fraction)]
    max_loss: f64,
    /// Fail (exit 2) when the RSS at the end exceeds the RSS after the warm-up by more than this
    /// fraction (0.10 = 10 %).
    #[arg(long, default_value_t = 0.10, value_parser = non_negative_f64)]
    max_rss_growth: f64,
    /// An answered call that hears no echo for this long counts as dropped ("media stopped").
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    media_timeout: Duration,
    /// After the last call: how long the Proxy may take to show 0 active sessions (or, drained,
    /// to exit).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The Proxy's WHIP endpoint (http://HOST:PORT/whip), for --whip-share.
    #[arg(long)]
    whip_target: Option<String>,
    /// The fraction of arrivals that are WebRTC sessions to --whip-target instead of SIP calls
    /// (0 = SIP only, 1 = WebRTC only).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    whip_share: f64,
    /// Bearer token sent with the WHIP requests.
    #[arg(long, env = "VOXGATE_WHIP_TOKEN", hide_env_values = true)]
    whip_token: Option<String>,
    #[command(flatten)]
    sip: SipCallerArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write every answered call's and session's up span to this file (JSON lines, monotonic
    /// nanoseconds), for `occupancy`.
    #[arg(long)]
    up_log: Option<PathBuf>,
    /// Seed for arrivals, holds, Call-IDs, tags and SSRCs, for a reproducible run. Default:
    /// random; the report names the seed used.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress line; the summary is still printed.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct WhipArgs {
    /// The WHIP endpoint (http://HOST:PORT/PATH; plain http only).
    #[arg(long)]
    target: String,
    /// Most sessions up at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Sessions to run in all (default: --concurrency).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    total: Option<u64>,
    /// Sessions started per second.
    #[arg(long, default_value_t = 20.0, value_parser = positive_f64)]
    rate: f64,
    /// How long each connected session sends its tone (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Bearer token sent in Authorization.
    #[arg(long, env = "VOXGATE_WHIP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Frequency of the tone, Hz (100-3000: it must survive G.711's band).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..=3000))]
    tone: u32,
    /// Local address of the media sockets; 0.0.0.0 uses the one routing to the target.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// A session not connected (ICE and DTLS) this long after its POST fails.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
    /// Offer Opus only, without telephone-event/48000.
    #[arg(long)]
    no_telephone_event: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seed for SSRCs and first sequence numbers; the default is random.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress line; the summary is still printed.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct BackendArgs {
    /// SIP listen address (UDP).
    #[arg(long, default_value = "127.0.0.1:5080")]
    listen: SocketAddr,
    /// Address for SDP and Contact when --listen is 0.0.0.0.
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// Most calls at once; INVITEs above get 503 with Retry-After.
    #[arg(long, default_value_t = 50)]
    max_sessions: u64,
    /// Retry-After sent with 503s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    retry_after: Duration,
    /// Ring (180) this long before answering (0 answers at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    answer_delay: Duration,
    /// End a call with BYE when no RTP arrived for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    media_timeout: Duration,
    /// Codecs accepted, in preference order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pcmu,pcma,opus,telephone-event"
    )]
    codecs: Vec<CodecName>,
    /// Log a status line this often (0s: never).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_every: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CodecArg {
    /// G.711 mu-law (PT 0).
    Pcmu,
    /// G.711 A-law (PT 8).
    Pcma,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CodecName {
    Pcmu,
    Pcma,
    Opus,
    TelephoneEvent,
}

impl From<CodecName> for CodecKind {
    fn from(codec: CodecName) -> Self {
        match codec {
            CodecName::Pcmu => CodecKind::Pcmu,
            CodecName::Pcma => CodecKind::Pcma,
            CodecName::Opus => CodecKind::Opus,
            CodecName::TelephoneEvent => CodecKind::TelephoneEvent,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Call(args) => call(args).await,
        Command::Soak(args) => soak(args).await,
        Command::Whip(args) => whip(args).await,
        Command::Occupancy(args) => occupancy(&args),
        Command::Backend(args) => {
            backend::run(backend::BackendPlan {
                listen: args.listen,
                public_ip: args.public_ip,
                max_sessions: args.max_sessions,
                retry_after: args.retry_after,
                answer_delay: args.answer_delay,
                media_timeout: args.media_timeout,
                codecs: args.codecs.into_iter().map(CodecKind::from).collect(),
                status_every: args.status_every,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let target = resolve_target(&args.target).await?;
    let plan = caller::CallPlan {
        target,
        codec: args.sip.codec(),
        user: args.sip.user,
        bind: args.sip.bind,
        rate: args.rate,
        concurrency: args.concurrency,
        total: args.total,
        hold: args.hold,
        answer_timeout: args.sip.answer_timeout,
        seed: args.seed.unwrap_or_else(random_seed),
        limits: report::Limits {
            max_failure_rate: args.max_failure_rate,
            max_loss: args.max_loss,
        },
        quiet: args.quiet,
        media_timeout: None,
    };
    let report = caller::run(plan).await?;
    conclude(&report, args.report.as_deref(), report.verdict.passed)
}

async fn whip(args: WhipArgs) -> anyhow::Result<ExitCode> {
    let plan = whip::WhipPlan {
        target: args.target,
        token: args.token,
        bind: args.bind,
        concurrency: args.concurrency,
        total: args.total.unwrap_or(args.concurrency),
        rate: args.rate,
        hold: args.hold,
        tone_hz: f64::from(args.tone),
        telephone_event: !args.no_telephone_event,
        setup_timeout: args.setup_timeout,
        seed: args.seed.unwrap_or_else(random_seed),
        quiet: args.quiet,
        media_timeout: None,
    };
    let report = whip::run(plan).await?;
    conclude(&report, args.report.as_deref(), report.verdict.passed)
}

async fn soak(args: SoakArgs) -> anyhow::Result<ExitCode> {
    if args.hold_min > args.hold_max {
        anyhow::bail!("--hold-min is longer than --hold-max");
    }
    let fault = match (
        args.drain_at.zip(args.drain_pid),
        args.kill_backend_at.zip(args.kill_backend_pid),
    ) {
        (Some((at, pid)), _) => Some(soak::Fault {
            kind: soak_report::FaultKind::Drain,
            at,
            pid,
        }),
        (None, Some((at, pid))) => Some(soak::Fault {
            kind: soak_report::FaultKind::KillBackend,
            at,
            pid,
        }),
        (None, None) => None,
    };
    if let Some(fault) = fault
        && fault.at >= args.duration
    {
        anyhow::bail!("the fault at {:?} is not within --duration", fault.at);
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let webrtc = match (args.whip_target, args.whip_share > 0.0) {
        (Some(_), false) => {
            anyhow::bail!("--whip-target without --whip-share would start no WebRTC session")
        }
        (None, true) => anyhow::bail!("--whip-share needs --whip-target"),
        (None, false) => None,
        (Some(target), true) => Some(soak::WebrtcMix {
            session: whip::WhipPlan {
                target,
                token: args.whip_token,
                bind: args.sip.bind.ip(),
                concurrency: args.concurrency,
                total: u64::MAX,
                rate: args.rate,
                hold: args.hold_max,
                tone_hz: WHIP_TONE_HZ,
                telephone_event: true,
                setup_timeout: WHIP_SETUP_TIMEOUT,
                seed,
                quiet: args.quiet,
                media_timeout: Some(args.media_timeout),
            },
            share: args.whip_share,
        }),
    };
    let target = resolve_target(&args.target).await?;
    let plan = soak::SoakPlan {
        call: caller::CallPlan {
            target,
            codec: args.sip.codec(),
            user: args.sip.user,
            bind: args.sip.bind,
            rate: args.rate,
            concurrency: args.concurrency,
            total: u64::MAX,
            hold: args.hold_max,
            answer_timeout: args.sip.answer_timeout,
            seed,
            limits: report::Limits::default(),
            quiet: args.quiet,
            media_timeout: Some(args.media_timeout),
        },
        metrics: args.metrics,
        duration: args.duration,
        hold_min: args.hold_min,
        hold_max: args.hold_max,
        fault,
        proxy_pid: args.proxy_pid,
        grace: args.grace,
        limits: soak::SoakLimits {
            max_loss: Some(args.max_loss),
            max_rss_growth: Some(args.max_rss_growth),
        },
        webrtc,
        up_log: args.up_log,
    };
    let report = soak::run(plan).await?;
    for violation in &report.verdict.violations {
        eprintln!("violation: {violation}");
    }
    conclude(&report, args.report.as_deref(), report.verdict.passed)
}

fn occupancy(args: &OccupancyArgs) -> anyhow::Result<ExitCode> {
    let mut spans = occupancy::Occupancy::read_logs(&args.logs)?;
    let peak = spans.peak();
    println!(
        "{} sessions answered in {} log(s); peak up at once {} / cap {}",
        spans.len(),
        args.logs.len(),
        peak.count,
        args.cap
    );
    if peak.count > args.cap {
        eprintln!(
            "violation: cap exceeded on the callers' side: {} sessions answered and up at once \
             (cap {}) at CLOCK_MONOTONIC {} ns",
            peak.count, args.cap, peak.at
        );
        return Ok(ExitCode::from(EXIT_LIMIT_EXCEEDED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `report`, writes it as JSON to `path` if given, and turns its verdict into the exit
/// code (0 passed, 2 a limit exceeded).
fn conclude(
    report: &(impl std::fmt::Display + serde::Serialize),
    path: Option<&std::path::Path>,
    passed: bool,
) -> anyhow::Result<ExitCode> {
    println!("{report}");
    if let Some(path) = path {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_LIMIT_EXCEEDED)
    })
}

async fn resolve_target(target: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve --target {target}"))?
        .next()
        .with_context(|| format!("--target {target} resolves to no address"))
}

fn random_seed() -> u64 {
    use rand::{Rng as _, SeedableRng as _};
    rand::rngs::SmallRng::from_os_rng().random()
}

/// Socket buffer size asked for on the shared media sockets (the kernel caps it at
/// net.core.rmem_max / wmem_max).
const MEDIA_SOCKET_BUFFER: usize = 4 << 20;

/// Enlarges a shared media socket's buffers: one socket carries every call's packets, so a
/// scheduling hiccup of a few milliseconds must not overflow the default 208 KiB.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(err) = sock.set_recv_buffer_size(MEDIA_SOCKET_BUFFER) {
        tracing::debug!(%err, "cannot enlarge the receive buffer");
    }
    if let Err(err) = sock.set_send_buffer_size(MEDIA_SOCKET_BUFFER) {
        tracing::debug!(%err, "cannot enlarge the send buffer");
    }
}

fn init_tracing(filter: &str, json: bool) {
    // rtc logs every ICE and peer connection state change at info: per session, too many lines
    // for a load test. An explicit rtc directive in --log still wins.
    let filter = if filter.contains("rtc") {
        filter.to_owned()
    } else {
        format!("{filter},rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_srtp=warn,rtc_sctp=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number >= 0")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a fraction between 0 and 1 (0.01 = 1 %)"
        )),
    }
}
