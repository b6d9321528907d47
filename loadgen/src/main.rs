//! `voxgate-loadgen`: places real SIP calls with RTP and runs an echo Backend, for soak tests and
//! benchmarks of voxgate or any SIP server.

mod backend;
mod batch;
mod caller;
mod echo;
mod media;
mod probe;
mod progress;
mod report;

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

/// Load generator for SIP/RTP gateways: real SIP calls with G.711 RTP, and an echo Backend.
///
/// `call` places calls against any SIP server and measures setup time, media round trip, loss and
/// jitter; `backend` answers calls and echoes their media.
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
    let target = tokio::net::lookup_host(&args.target)
        .await
        .with_context(|| format!("cannot resolve --target {}", args.target))?
        .next()
        .with_context(|| format!("--target {} resolves to no address", args.target))?;
    let plan = caller::CallPlan {
        target,
        user: args.user,
        bind: args.bind,
        rate: args.rate,
        concurrency: args.concurrency,
        total: args.total,
        hold: args.hold,
        answer_timeout: args.answer_timeout,
        codec: match args.codec {
            CodecArg::Pcmu => probe::G711::Pcmu,
            CodecArg::Pcma => probe::G711::Pcma,
        },
        seed: args.seed.unwrap_or_else(|| {
            use rand::{Rng as _, SeedableRng as _};
            rand::rngs::SmallRng::from_os_rng().random()
        }),
        limits: report::Limits {
            max_failure_rate: args.max_failure_rate,
            max_loss: args.max_loss,
        },
        quiet: args.quiet,
    };
    let report = caller::run(plan).await?;
    println!("{report}");
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(if report.verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_LIMIT_EXCEEDED)
    })
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

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a fraction between 0 and 1 (0.01 = 1 %)"
        )),
    }
}
