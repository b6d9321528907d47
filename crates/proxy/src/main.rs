//! `voxgate`: the Proxy node binary (CLI, logging, runtime).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use voxgate_proxy::config::{self, Config, ConfigError, LogConfig, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PRECEDENCE: &str = "\
Configuration precedence, lowest first:
  1. built-in defaults (the embedded config/voxgate.toml)
  2. the file given with --config (keys it leaves out keep their defaults)
  3. environment variables VOXGATE_SECTION__KEY=value, e.g. VOXGATE_LIMITS__MAX_SESSIONS=20,
     VOXGATE_SIP__LISTEN_UDP=127.0.0.1:5070, VOXGATE_BACKENDS__0__ADDRESS=10.0.0.5:5080
     (value read as a TOML literal when it is one, else as a string)
  4. the flags above
A bad configuration names the key and why, and exits with status 1.";

/// voxgate: SIP/RTP Proxy node; admits calls against a node cap and bridges them to the
/// least-loaded Backend.
#[derive(Debug, Parser)]
#[command(name = "voxgate", version, after_help = PRECEDENCE)]
struct Cli {
    /// TOML configuration file; without it, the embedded default.
    #[arg(long, short = 'c', value_name = "FILE", env = "VOXGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print "config ok" or the error, and exit.
    #[arg(long)]
    check_config: bool,
    /// Node cap (limits.max_sessions).
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// SIP listen address (sip.listen_udp, and sip.listen_tcp unless TCP is off).
    #[arg(long, value_name = "ADDR")]
    sip_listen: Option<SocketAddr>,
    /// Private HTTP listen address for metrics and health (http.listen).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Log as JSON lines (log.format = "json").
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands run against a live node instead of starting one.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Ask the node (found through the same config: http.listen, node.id, cluster.admin_key) to
    /// drain: no new sessions, calls run to their end or drain.deadline, then it exits 0. For a
    /// Kubernetes preStop hook or an operator's shell.
    Drain {
        /// Return only once the node has exited.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

impl Cli {
    /// File, then env, then these flags; validated last so a flag can fix a file's value.
    fn load(&self) -> Result<Config, ConfigError> {
        let mut config = config::parse(self.config.as_deref(), std::env::vars())?;
        if let Some(n) = self.max_sessions {
            config.limits.max_sessions = n;
        }
        if let Some(addr) = self.sip_listen {
            config.sip.listen_udp = addr;
            if config.sip.listen_tcp.is_some() {
                config.sip.listen_tcp = Some(addr);
            }
        }
        if let Some(addr) = self.http_listen {
            config.http.listen = addr;
        }
        if self.log_json {
            config.log.format = LogFormat::Json;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("voxgate: {err}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    init_tracing(&config.log);
    #[cfg(feature = "fault-over-cap")]
    tracing::warn!(
        "test build: admission lets one session past limits.max_sessions (fault-over-cap)"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("voxgate")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("voxgate: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Drain { wait, timeout }) = cli.command {
        return match runtime.block_on(voxgate_proxy::ctl::drain(&config, wait, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("voxgate drain: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(voxgate_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "voxgate failed");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr: text (ANSI colours only on a terminal) or JSON lines, filtered by `RUST_LOG`
/// when set, else `log.filter`; the libraries' own chatter kept at WARN unless a directive
/// names its target.
fn init_tracing(log: &LogConfig) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let directives = config::log_directives(rust_log.as_deref().unwrap_or(&log.filter));
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        // RUST_LOG is not validated with the config: say so rather than log nothing.
        eprintln!("voxgate: ignoring the log filter {directives:?}: {err}");
        EnvFilter::new(config::log_directives("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
