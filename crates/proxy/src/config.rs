//! The node's configuration: TOML file (or the embedded default) + `VOXGATE_SECTION__KEY` env overrides.
//!
//! Loading is three steps. The TOML text becomes a `toml::Table`; each `VOXGATE_A__B__C=value`
//! variable sets `a.b.c` in that tree (the value read as a TOML literal when it is one, else as a
//! string); the tree is deserialized into [`Config`] with `serde_path_to_error`, so a type error
//! names its key; then [`Config::validate`] checks what types cannot. Every failure is one
//! [`ConfigError`] naming the key (`limits.max_sessions`, `backends[1].id`) and why.
//!
//! Precedence, lowest first: built-in defaults, the file, env variables, CLI flags (applied by the
//! binary between [`parse`] and [`Config::validate`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use voxgate_cluster::backend::BackendSpec;
use voxgate_cluster::health::HealthConfig;
use voxgate_cluster::picker::Spillover;
use voxgate_cluster::trunk::{Trunk, TrunkDtmf, TrunkTable, TrunkTransfer};
use voxgate_core::{NodeId, RegionId};

/// The embedded default configuration (`config/voxgate.toml`), used when no file is given.
pub const DEFAULT_TOML: &str = include_str!("../../../config/voxgate.toml");

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "VOXGATE_";

/// A configuration that cannot be used: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`limits.max_sessions`, `backends[0].id`); for file and
    /// syntax errors, the file path (or `<toml>` for embedded text).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Loads `path` (or the embedded default), applies `env` overrides and validates the result.
///
/// `env` is usually `std::env::vars()`; only `VOXGATE_*` variables with a `__` in them are read.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let config = parse(path, env)?;
    config.validate()?;
    Ok(config)
}

/// [`load`] without the final [`Config::validate`], for callers that change the config further
/// (CLI flags) and validate afterwards.
pub fn parse(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let (origin, text) = match path {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|err| ConfigError::new(&origin, format!("cannot read: {err}")))?;
            (origin, text)
        }
        None => ("<toml>".to_owned(), DEFAULT_TOML.to_owned()),
    };
    parse_str(&origin, &text, env)
}

/// [`parse`] over TOML text; `origin` names it in syntax errors.
pub fn parse_str(
    origin: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        let reason = match err.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!(
                    "TOML syntax error at line {line}, column {column}: {}",
                    err.message()
                )
            }
            None => format!("TOML syntax error: {}", err.message()),
        };
        ConfigError::new(origin, reason)
    })?;
    let mut tree = toml::Value::Table(table);
    let overrides = apply_env(&mut tree, env)?;
    serde_path_to_error::deserialize::<_, Config>(tree).map_err(|err| {
        let mut key = err.path().to_string();
        let mut reason = err.inner().message().trim().to_owned();
        if key == "." {
            key = "<root>".to_owned();
        }
        let from_env = |path: &String| {
            key.strip_prefix(path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        if let Some((_, var)) = overrides.iter().find(|(path, _)| from_env(path)) {
            let hint = if reason.starts_with("invalid type") {
                "; quote the value to force a string, e.g. '\"1234\"'"
            } else {
                ""
            };
            reason = format!("{reason} (set by {var}{hint})");
        }
        ConfigError::new(key, reason)
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Sets every `VOXGATE_A__B=value` into `tree`; returns dotted path -> variable name.
fn apply_env(
    tree: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut applied = BTreeMap::new();
    // Sorted, so that a whole-table value (`VOXGATE_ROUTING__SPILLOVER`) applies before the keys
    // inside it, whatever order the process environment lists them in.
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (name, raw) in env {
        // Plain `VOXGATE_X` (no `__`) is left to other uses, e.g. a future `VOXGATE_CONFIG`.
        let Some(rest) = name
            .strip_prefix(ENV_PREFIX)
            .filter(|rest| rest.contains("__"))
        else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                name,
                "empty key segment (`__` at an end or doubled)",
            ));
        }
        let mut path = String::new();
        set_path(tree, &segments, literal(&raw), &mut path).map_err(|(path, reason)| {
            ConfigError::new(path, format!("{reason} (set by {name})"))
        })?;
        applied.insert(path, name);
    }
    Ok(applied)
}

/// `raw` as a TOML value (`20`, `0.5`, `true`, `["US-WEST"]`) when it is one, else as a string.
fn literal(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) if table.len() == 1 => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Sets `value` at `segments` below `node`, creating tables as needed; a numeric segment indexes an
/// existing array (`backends.0.address`). `path` accumulates the key in `serde_path_to_error` form.
fn set_path(
    node: &mut toml::Value,
    segments: &[String],
    value: toml::Value,
    path: &mut String,
) -> Result<(), (String, &'static str)> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    match node {
        toml::Value::Table(table) => {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(first);
            let child = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set_path(child, rest, value, path)
        }
        toml::Value::Array(items) => {
            let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
                return Err((
                    path.clone(),
                    "is an array; index it with an existing position",
                ));
            };
            path.push_str(&format!("[{first}]"));
            set_path(item, rest, value, path)
        }
        _ => Err((path.clone(), "is not a table")),
    }
}

/// Everything a voxgate node is told at start. Every field has a default; see `config/voxgate.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Who this node is.
    pub node: NodeConfig,
    /// SIP listeners.
    pub sip: SipConfig,
    /// RTP/RTCP relay.
    pub media: MediaConfig,
    /// The private HTTP listener (metrics, health, admin).
    pub http: HttpConfig,
    /// The node cap.
    pub limits: LimitsConfig,
    /// Backend selection and failover.
    pub routing: RoutingConfig,
    /// OPTIONS probing of Backends.
    pub health: ProbeConfig,
    /// The Backends calls are placed on.
    pub backends: Vec<BackendConfig>,
    /// SIP trunks: inbound region by source network, outbound targets.
    pub trunks: Vec<TrunkConfig>,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// Calls the admin API originates (`POST /v1/calls`).
    pub outbound: OutboundConfig,
    /// WebRTC clients (WHIP) and their media.
    pub webrtc: WebRtcConfig,
    /// The cluster registry and the admin API.
    pub cluster: ClusterConfig,
    /// Call records: the JSON-lines file and the webhook.
    pub records: RecordsConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// Checks what the types cannot; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: &str| Err(ConfigError::new(key, reason));
        let limits = &self.limits;
        if limits.max_sessions < 1 {
            return fail("limits.max_sessions", "must be at least 1");
        }
        if !(limits.high_water > 0.0 && limits.high_water <= 1.0) {
            return fail("limits.high_water", "must be a fraction in (0, 1]");
        }
        if limits.retry_after < Duration::from_secs(1) {
            return fail(
                "limits.retry_after",
                "must be at least 1s (Retry-After counts whole seconds)",
            );
        }
        self.validate_media()?;
        if self.sip.min_se < Duration::from_secs(1) {
            return fail("sip.min_se", "must be at least 1s");
        }
        if self.sip.session_expires < self.sip.min_se {
            return fail("sip.session_expires", "must be at least sip.min_se");
        }
        self.validate_sip_edge()?;
        if self.routing.max_attempts < 1 {
            return fail("routing.max_attempts", "must be at least 1");
        }
        if self.routing.invite_timeout.is_zero() {
            return fail("routing.invite_timeout", "must be more than 0s");
        }
        if self.routing.ring_timeout <= self.routing.invite_timeout {
            return fail(
                "routing.ring_timeout",
                "must be longer than routing.invite_timeout",
            );
        }
        if self.health.interval.is_zero() {
            return fail("health.interval", "must be more than 0s");
        }
        if self.health.failures_to_down < 1 {
            return fail("health.failures_to_down", "must be at least 1");
        }
        if self.health.successes_to_up < 1 {
            return fail("health.successes_to_up", "must be at least 1");
        }
        if self.drain.deadline.is_zero() {
            return fail("drain.deadline", "must be more than 0s");
        }
        self.validate_webrtc()?;
        let outbound = &self.outbound;
        if outbound.queue_size < 1 {
            return fail("outbound.queue_size", "must be at least 1");
        }
        if outbound.max_wait.is_zero() {
            return fail("outbound.max_wait", "must be more than 0s");
        }
        if outbound.ring_timeout.is_zero() {
            return fail("outbound.ring_timeout", "must be more than 0s");
        }
        if !voxgate_sip::dialog::is_sip_user(&outbound.caller_id) {
            return fail(
                "outbound.caller_id",
                "must be a SIP user part (letters, digits, +-_.!~*'()&=$,/, 1-64 characters)",
            );
        }
        let cluster = &self.cluster;
        if cluster.registry != "embedded"
            && !cluster.registry.starts_with("redis://")
            && !cluster.registry.starts_with("rediss://")
        {
            return fail(
                "cluster.registry",
                "must be \"embedded\" or a redis:// (rediss://) URL",
            );
        }
        if !cluster.admin_key.is_empty() && cluster.admin_key.chars().count() < MIN_API_KEY_LEN {
            return fail(
                "cluster.admin_key",
                "must be at least 32 characters (or empty to turn the admin API off)",
            );
        }
        if cluster.status_interval.is_zero() {
            return fail("cluster.status_interval", "must be more than 0s");
        }
        if cluster.heartbeat_ttl <= cluster.status_interval {
            return fail(
                "cluster.heartbeat_ttl",
                "must be longer than cluster.status_interval (a node would flap offline between heartbeats)",
            );
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(ConfigError::new(
                "log.filter",
                format!("not a tracing filter: {err}"),
            ));
        }
        self.records.validate()?;
        self.validate_backends()?;
        let known = self.regions();
        self.validate_trunks(&known)?;
        for (i, token) in self.webrtc.tokens.iter().enumerate() {
            if let Some(region) = &token.region
                && !known.contains(region)
            {
                return Err(ConfigError::new(
                    format!("webrtc.tokens[{i}].region"),
                    format!("unknown region {region} (not node.region nor any backend's region)"),
                ));
            }
        }
        for (region, next) in &self.routing.spillover {
            let key = format!("routing.spillover.{region}");
            if !known.contains(region) {
                return Err(ConfigError::new(
                    key,
                    "unknown region (not node.region nor any backend's region)",
                ));
            }
            if let Some(unknown) = next.iter().find(|r| !known.contains(*r)) {
                return Err(ConfigError::new(
                    key,
                    format!("unknown region {unknown} (no backend serves it)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_sip_edge(&self) -> Result<(), ConfigError> {
        let sip = &self.sip;
        let fail = |key: &str, reason: &str| Err(ConfigError::new(key, reason));
        if !is_quotable(&sip.user_agent) {
            return fail(
                "sip.user_agent",
                "must be 1-64 printable characters without '\"' or '\\'",
            );
        }
        if !is_quotable(&sip.realm) {
            return fail(
                "sip.realm",
                "must be 1-64 printable characters without '\"' or '\\'",
            );
        }
        if sip.nonce_ttl < Duration::from_secs(1) {
            return fail("sip.nonce_ttl", "must be at least 1s");
        }
        if let Some(i) = sip
            .scanner_user_agents
            .iter()
            .position(|s| s.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("sip.scanner_user_agents[{i}]"),
                "must not be empty",
            ));
        }
        let flood = &sip.flood;
        if flood.rate < 1 {
            return fail("sip.flood.rate", "must be at least 1");
        }
        if flood.burst < 1 {
            return fail("sip.flood.burst", "must be at least 1");
        }
        if flood.ban < Duration::from_secs(1) {
            return fail("sip.flood.ban", "must be at least 1s");
        }
        if flood.max_sources < 1 {
            return fail("sip.flood.max_sources", "must be at least 1");
        }
        Ok(())
    }

    fn validate_webrtc(&self) -> Result<(), ConfigError> {
        let webrtc = &self.webrtc;
        if webrtc.setup_timeout.is_zero() {
            return Err(ConfigError::new(
                "webrtc.setup_timeout",
                "must be more than 0s",
            ));
        }
        if webrtc.consent_timeout < Duration::from_secs(5) {
            return Err(ConfigError::new(
                "webrtc.consent_timeout",
                "must be at least 5s (clients refresh consent every ~5 s, RFC 7675)",
            ));
        }
        let origin_ok = !webrtc.allow_origin.is_empty()
            && webrtc
                .allow_origin
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ');
        if !origin_ok {
            return Err(ConfigError::new(
                "webrtc.allow_origin",
                "must be \"*\" or an origin such as \"https://app.example.com\" (printable ASCII)",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, token) in webrtc.tokens.iter().enumerate() {
            if token.token.chars().count() < MIN_API_KEY_LEN {
                return Err(ConfigError::new(
                    format!("webrtc.tokens[{i}].token"),
                    "must be at least 32 characters",
                ));
            }
            if !seen.insert(token.token.as_str()) {
                return Err(ConfigError::new(
                    format!("webrtc.tokens[{i}].token"),
                    "is used twice",
                ));
            }
        }
        Ok(())
    }

    fn validate_media(&self) -> Result<(), ConfigError> {
        let media = &self.media;
        if media.public_ip.is_unspecified() {
            return Err(ConfigError::new(
                "media.public_ip",
                "must be an address peers can reach, not 0.0.0.0 or ::",
            ));
        }
        if media.port_min < 1024 {
            return Err(ConfigError::new("media.port_min", "must be at least 1024"));
        }
        if media.port_min >= media.port_max {
            return Err(ConfigError::new(
                "media.port_max",
                "must be greater than media.port_min",
            ));
        }
        // RTP takes an even port and RTCP the odd one above it.
        let first_even = u32::from(media.port_min) + u32::from(media.port_min % 2);
        if first_even + 1 > u32::from(media.port_max) {
            return Err(ConfigError::new(
                "media.port_max",
                "range holds no even/odd RTP/RTCP port pair",
            ));
        }
        if media.timeout.is_zero() {
            return Err(ConfigError::new("media.timeout", "must be more than 0s"));
        }
        if !(-20..=19).contains(&media.worker_nice) {
            return Err(ConfigError::new(
                "media.worker_nice",
                "must be a nice value from -20 to 19",
            ));
        }
        Ok(())
    }

    fn validate_backends(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            if !ids.insert(&backend.id) {
                return Err(ConfigError::new(
                    format!("backends[{i}].id"),
                    format!("duplicate backend id {}", backend.id),
                ));
            }
            if !addresses.insert(backend.address) {
                return Err(ConfigError::new(
                    format!("backends[{i}].address"),
                    format!("{} is already another backend's address", backend.address),
                ));
            }
            if backend.max_sessions < 1 {
                return Err(ConfigError::new(
                    format!("backends[{i}].max_sessions"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    fn validate_trunks(&self, known: &BTreeSet<RegionId>) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut credential_realms = HashSet::new();
        for (i, trunk) in self.trunks.iter().enumerate() {
            if trunk.name.is_empty() {
                return Err(ConfigError::new(
                    format!("trunks[{i}].name"),
                    "must not be empty",
                ));
            }
            if !names.insert(trunk.name.as_str()) {
                return Err(ConfigError::new(
                    format!("trunks[{i}].name"),
                    format!("duplicate trunk name {:?}", trunk.name),
                ));
            }
            if let Some(region) = &trunk.region
                && !known.contains(region)
            {
                return Err(ConfigError::new(
                    format!("trunks[{i}].region"),
                    format!("unknown region {region} (not node.region nor any backend's region)"),
                ));
            }
            if trunk.sources.is_empty() && trunk.outbound.is_none() && trunk.users.is_empty() {
                return Err(ConfigError::new(
                    format!("trunks[{i}].sources"),
                    "a trunk needs sources, users, an outbound address, or some of them",
                ));
            }
            self.validate_trunk_auth(i, trunk, &mut credential_realms)?;
            if let Some(credentials) = &trunk.credentials {
                let key = format!("trunks[{i}].credentials");
                if !is_quotable(&credentials.name) {
                    return Err(ConfigError::new(
                        format!("{key}.name"),
                        "must be 1-64 printable characters without '\"' or '\\'",
                    ));
                }
                if credentials.password.is_some() == credentials.password_env.is_some() {
                    return Err(ConfigError::new(
                        key,
                        "needs exactly one of password, password_env",
                    ));
                }
                if trunk.outbound.is_none() {
                    return Err(ConfigError::new(
                        key,
                        "answers a carrier's challenge on calls out: the trunk needs outbound",
                    ));
                }
            }
            for (j, pattern) in trunk.pass_headers.iter().enumerate() {
                let ok = !pattern.is_empty()
                    && pattern
                        .bytes()
                        .all(|b| b == b'*' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric());
                if !ok {
                    return Err(ConfigError::new(
                        format!("trunks[{i}].pass_headers[{j}]"),
                        "must be a header name or a glob of one (letters, digits, '-', '_', '*')",
                    ));
                }
            }
            if let Some(j) = trunk.hosts.iter().position(|h| h.trim().is_empty()) {
                return Err(ConfigError::new(
                    format!("trunks[{i}].hosts[{j}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }

    /// Digest settings of trunk `i`; `credential_realms` collects (realm, user) of trunks that
    /// admit by credentials alone, which must name one trunk each.
    fn validate_trunk_auth<'a>(
        &'a self,
        i: usize,
        trunk: &'a TrunkConfig,
        credential_realms: &mut HashSet<(&'a str, &'a str)>,
    ) -> Result<(), ConfigError> {
        let realm = trunk.realm.as_deref().unwrap_or(&self.sip.realm);
        if !is_quotable(realm) {
            return Err(ConfigError::new(
                format!("trunks[{i}].realm"),
                "must be 1-64 printable characters without '\"' or '\\'",
            ));
        }
        if trunk.algorithms.is_empty() {
            return Err(ConfigError::new(
                format!("trunks[{i}].algorithms"),
                "must name at least one of \"SHA-256\", \"MD5\"",
            ));
        }
        for (j, name) in trunk.algorithms.iter().enumerate() {
            if voxgate_sip::digest::Algorithm::parse(name).is_none() {
                return Err(ConfigError::new(
                    format!("trunks[{i}].algorithms[{j}]"),
                    format!("unknown algorithm {name:?} (\"SHA-256\" or \"MD5\")"),
                ));
            }
        }
        let mut users = HashSet::new();
        for (j, user) in trunk.users.iter().enumerate() {
            let key = format!("trunks[{i}].users[{j}]");
            if !is_quotable(&user.name) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    "must be 1-64 printable characters without '\"' or '\\'",
                ));
            }
            if !users.insert(user.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("duplicate user {:?}", user.name),
                ));
            }
            if user.password.is_some() == user.password_env.is_some() {
                return Err(ConfigError::new(
                    key,
                    "needs exactly one of password, password_env",
                ));
            }
            if trunk.sources.is_empty() && !credential_realms.insert((realm, user.name.as_str())) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!(
                        "user {:?} of realm {realm:?} is already another trunk's (trunks without sources are found by realm and user)",
                        user.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Regions this node knows: its own and every Backend's.
    pub fn regions(&self) -> BTreeSet<RegionId> {
        let mut regions: BTreeSet<RegionId> = self
            .backends
            .iter()
            .map(|b| self.region_or_node(b.region.as_ref()).clone())
            .collect();
        regions.insert(self.node.region.clone());
        regions
    }

    /// The Backends for [`voxgate_cluster::BackendPicker`], regions defaulted to `node.region`.
    pub fn backend_specs(&self) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .map(|b| BackendSpec {
                id: b.id.clone(),
                region: self.region_or_node(b.region.as_ref()).clone(),
                address: b.address,
                max_sessions: b.max_sessions,
                enabled: b.enabled,
            })
            .collect()
    }

    /// The configured spillover order.
    pub fn spillover(&self) -> Spillover {
        Spillover::new(
            self.routing
                .spillover
                .iter()
                .map(|(region, next)| (region.clone(), next.clone())),
        )
    }

    /// Each trunk's account for the carrier's challenges, by trunk name, passwords read with
    /// `env` (for `password_env`); a variable that is not set is an error naming the trunk.
    pub fn trunk_credentials(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HashMap<String, voxgate_session::TrunkCredentials>, ConfigError> {
        let mut out = HashMap::new();
        for (i, trunk) in self.trunks.iter().enumerate() {
            let Some(user) = &trunk.credentials else {
                continue;
            };
            let password = user
                .resolve_password(env)
                .map_err(|reason| ConfigError::new(format!("trunks[{i}].credentials"), reason))?;
            out.insert(
                trunk.name.clone(),
                voxgate_session::TrunkCredentials {
                    username: user.name.clone(),
                    password,
                },
            );
        }
        Ok(out)
    }

    /// The configured trunks, regions defaulted to `node.region`.
    pub fn trunk_table(&self) -> TrunkTable {
        TrunkTable::new(
            self.trunks
                .iter()
                .map(|t| Trunk {
                    name: t.name.clone(),
                    region: self.region_or_node(t.region.as_ref()).clone(),
                    sources: t.sources.clone(),
                    outbound: t.outbound,
                    hosts: t.hosts.clone(),
                    transfer: t.transfer,
                    dtmf: t.dtmf,
                    pass_headers: t.pass_headers.clone(),
                })
                .collect(),
        )
    }

    /// Backend probing settings.
    pub fn health(&self) -> HealthConfig {
        HealthConfig {
            interval: self.health.interval,
            failures_to_down: self.health.failures_to_down,
            successes_to_up: self.health.successes_to_up,
        }
    }

    fn region_or_node<'a>(&'a self, region: Option<&'a RegionId>) -> &'a RegionId {
        region.unwrap_or(&self.node.region)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            sip: SipConfig::default(),
            media: MediaConfig::default(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            routing: RoutingConfig::default(),
            health: ProbeConfig::default(),
            backends: vec![
                BackendConfig::local("backend-1", 5080),
                BackendConfig::local("backend-2", 5081),
            ],
            trunks: vec![TrunkConfig::local()],
            drain: DrainConfig::default(),
            outbound: OutboundConfig::default(),
            webrtc: WebRtcConfig::default(),
            cluster: ClusterConfig::default(),
            records: RecordsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[drain]`: how SIGTERM (or the admin drain action) winds the node down.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Calls still up this long after the drain began are ended with BYE to both sides.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(50 * 60),
        }
    }
}

/// `[webrtc]`: the public WHIP listener and the shared WebRTC media socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebRtcConfig {
    /// The public WHIP listener (`POST /whip`); `None` (an empty string) turns WebRTC off.
    #[serde(deserialize_with = "parsed::empty_is_none")]
    pub listen: Option<SocketAddr>,
    /// The one UDP socket every WebRTC peer's media uses; its port with `media.public_ip` is the
    /// ICE candidate.
    pub media_listen: SocketAddr,
    /// Bearer tokens a WHIP client must present, each with the region its sessions go to;
    /// empty = no token needed (a warning at start).
    pub tokens: Vec<WhipToken>,
    /// `Access-Control-Allow-Origin` of WHIP responses.
    pub allow_origin: String,
    /// A client that has not completed ICE and DTLS this long after the answer is dropped.
    #[serde(with = "humantime_serde")]
    pub setup_timeout: Duration,
    /// A client that sent no valid STUN consent check this long is gone (RFC 7675: 30 s).
    #[serde(with = "humantime_serde")]
    pub consent_timeout: Duration,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            media_listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tokens: Vec::new(),
            allow_origin: "*".to_owned(),
            setup_timeout: Duration::from_secs(15),
            consent_timeout: Duration::from_secs(30),
        }
    }
}

/// One `[[webrtc.tokens]]` entry: a WHIP Bearer token and where its sessions go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhipToken {
    /// The token, at least 32 characters.
    pub token: String,
    /// The region of its sessions (default: a `region` query parameter, else `node.region`).
    #[serde(default, deserialize_with = "parsed::option")]
    pub region: Option<RegionId>,
}

/// `[outbound]`: the queue of calls the admin API originates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Requests waiting for a session slot at most; one more is refused with 429.
    pub queue_size: usize,
    /// A request still waiting this long is given up (outcome `expired`).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// A dialled number that has not answered this long after the INVITE is cancelled
    /// (outcome `no_answer`).
    #[serde(with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// The From user of a request that names none.
    pub caller_id: String,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            queue_size: 100,
            max_wait: Duration::from_secs(5 * 60),
            ring_timeout: Duration::from_secs(60),
            caller_id: "voxgate".to_owned(),
        }
    }
}

/// `[cluster]`: where regions, nodes and their lifecycle live, and who may change them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `"embedded"` (in this process, persisted to `state_file`) or a `redis://` URL (a Redis
    /// server shared by every node).
    pub registry: String,
    /// The embedded registry's state file (crash-safe JSON; "" keeps the state in memory only).
    pub state_file: PathBuf,
    /// Bearer key of the admin API (`/v1`), at least 32 characters; "" turns the API off.
    pub admin_key: String,
    /// A node whose last status is older than this is offline.
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
    /// How often this node publishes its own status.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            registry: "embedded".to_owned(),
            state_file: PathBuf::from("voxgate-state.json"),
            admin_key: String::new(),
            heartbeat_ttl: Duration::from_secs(5),
            status_interval: Duration::from_secs(1),
        }
    }
}

/// Whether `text` can stand in a quoted SIP parameter and a header as it is.
fn is_quotable(text: &str) -> bool {
    (1..=64).contains(&text.chars().count())
        && text
            .chars()
            .all(|c| (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\')
}

/// Shortest admin or node API key accepted.
pub const MIN_API_KEY_LEN: usize = 32;

/// `[node]`: this node's identity.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique among nodes; labels metrics and logs.
    #[serde(deserialize_with = "parsed::value")]
    pub id: NodeId,
    /// The region this node serves; calls from no known trunk are placed here.
    #[serde(deserialize_with = "parsed::value")]
    pub region: RegionId,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: NodeId::new("proxy-1").expect("valid literal"),
            region: default_region(),
        }
    }
}

fn default_region() -> RegionId {
    RegionId::new("US-EAST").expect("valid literal")
}

/// `[sip]`: where SIP is received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP listener.
    pub listen_udp: SocketAddr,
    /// TCP listener; `None` (an empty string in TOML) turns TCP off.
    #[serde(deserialize_with = "parsed::empty_is_none")]
    pub listen_tcp: Option<SocketAddr>,
    /// Session interval (RFC 4028) asked for on Backend legs and granted to callers that ask
    /// for none; each leg is refreshed by this node unless its caller refreshes.
    #[serde(with = "humantime_serde")]
    pub session_expires: Duration,
    /// Smallest session interval accepted: a caller asking for less gets 422. RFC 4028 wants at
    /// least 90 s; lower values are for tests.
    #[serde(with = "humantime_serde")]
    pub min_se: Duration,
    /// `User-Agent` of our requests and `Server` of our responses (no version by default: a
    /// version is what scanners report back).
    pub user_agent: String,
    /// What a request from no trunk's sources, no Backend and with no trunk's credentials gets.
    pub unknown_source: UnknownSource,
    /// Default `realm` of trunks with digest users.
    pub realm: String,
    /// How long a digest nonce may be used after its challenge.
    #[serde(with = "humantime_serde")]
    pub nonce_ttl: Duration,
    /// Drop requests whose User-Agent contains one of `scanner_user_agents`.
    pub drop_scanners: bool,
    /// User-Agent substrings of SIP scanners (case-insensitive).
    pub scanner_user_agents: Vec<String>,
    /// Per-source request rate limit with a temporary ban.
    pub flood: FloodSettings,
}

/// What a request that belongs to no trunk, no Backend and no trunk's user gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSource {
    /// `403 Forbidden`.
    Reject,
    /// Nothing at all (not even `100 Trying`): the port looks closed to a scanner.
    Drop,
}

/// `[sip.flood]`: requests per second per source address, and the ban of a source over it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodSettings {
    /// Off: no source is limited.
    pub enabled: bool,
    /// Requests per second a source may keep sending.
    pub rate: u32,
    /// Requests a source may send at once above `rate`.
    pub burst: u32,
    /// How long a source over the limit is banned (everything it sends is dropped).
    #[serde(with = "humantime_serde")]
    pub ban: Duration,
    /// Sources never limited (CIDRs; loopback by default), e.g. a carrier sending more than
    /// `rate`. Backends are never limited.
    #[serde(deserialize_with = "parsed::list")]
    pub exempt: Vec<IpNet>,
    /// Sources followed at once at most (memory bound); past it new sources pass unlimited.
    pub max_sources: usize,
}

impl Default for FloodSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 200,
            burst: 400,
            ban: Duration::from_secs(300),
            exempt: vec![
                "127.0.0.0/8".parse().expect("valid literal"),
                "::1/128".parse().expect("valid literal"),
            ],
            max_sources: 65_536,
        }
    }
}

/// User-Agent substrings of well-known SIP scanners (sipvicious, sipcli, SIPVicious' forks and
/// the toll-fraud tools seen in honeypot logs).
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sundayddr",
    "vaxsipuseragent",
    "sip-scan",
    "sipsak",
    "iWar",
    "pplsip",
    "smap",
];

impl SipConfig {
    /// Largest SIP message accepted on any transport (fixed, not configurable).
    pub const MAX_MESSAGE_SIZE: usize = voxgate_sip::MAX_MESSAGE_SIZE;
}

impl Default for SipConfig {
    fn default() -> Self {
        let any = SocketAddr::from(([0, 0, 0, 0], 5060));
        Self {
            listen_udp: any,
            listen_tcp: Some(any),
            session_expires: Duration::from_secs(1800),
            min_se: Duration::from_secs(90),
            user_agent: "voxgate".to_owned(),
            unknown_source: UnknownSource::Reject,
            realm: "voxgate".to_owned(),
            nonce_ttl: Duration::from_secs(300),
            drop_scanners: true,
            scanner_user_agents: SCANNER_USER_AGENTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            flood: FloodSettings::default(),
        }
    }
}

/// `[media]`: the RTP/RTCP relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The address written into SDP on both legs.
    pub public_ip: IpAddr,
    /// The address relay sockets bind to.
    pub bind_ip: IpAddr,
    /// Lowest relay port (inclusive).
    pub port_min: u16,
    /// Highest relay port (inclusive).
    pub port_max: u16,
    /// A leg silent this long ends the call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Media worker threads relaying RTP; 0 means one per CPU.
    pub workers: usize,
    /// Nice value of the media worker threads (-20..=19; lower runs first). 0 leaves them at
    /// the process's priority; a negative value needs CAP_SYS_NICE and, if refused, is logged.
    pub worker_nice: i32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            public_ip: IpAddr::from([127, 0, 0, 1]),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            port_min: 20000,
            port_max: 29999,
            timeout: Duration::from_secs(60),
            workers: 0,
            worker_nice: 0,
        }
    }
}

/// `[http]`: the private listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics`, `/livez`, `/readyz` (and later the admin API); keep it private.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[limits]`: the node cap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most sessions (SIP calls + WebRTC peers) at once; beyond it, 503 + Retry-After.
    pub max_sessions: u32,
    /// Fraction of `max_sessions` at which `/readyz` turns false.
    pub high_water: f64,
    /// Base of the jittered Retry-After sent with a 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 150,
            high_water: 0.9,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// `[routing]`: Backend selection and failover.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Backends tried per call (first pick + failovers).
    pub max_attempts: u32,
    /// No provisional or final response from a Backend within this -> next Backend.
    #[serde(with = "humantime_serde")]
    pub invite_timeout: Duration,
    /// A far INVITE (Backend or trunk) still unanswered by then is cancelled and the caller
    /// answered 408 (RFC 3261 Timer C as one deadline per leg).
    #[serde(with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// Seed for tie-breaking between equally loaded Backends; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Region -> regions to try next, in order, when it has no eligible Backend.
    #[serde(deserialize_with = "parsed::spillover")]
    pub spillover: BTreeMap<RegionId, Vec<RegionId>>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            invite_timeout: Duration::from_secs(4),
            ring_timeout: Duration::from_secs(120),
            seed: None,
            spillover: BTreeMap::new(),
        }
    }
}

/// `[health]`: OPTIONS probing of Backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Time between probes of one Backend.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive failed probes that mark a Backend down.
    pub failures_to_down: u32,
    /// Consecutive answered probes that mark it up again.
    pub successes_to_up: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        let cluster = HealthConfig::default();
        Self {
            interval: cluster.interval,
            failures_to_down: cluster.failures_to_down,
            successes_to_up: cluster.successes_to_up,
        }
    }
}

/// One `[[backends]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique among Backends; labels metrics.
    #[serde(deserialize_with = "parsed::value")]
    pub id: NodeId,
    /// Region it serves; `None` = `node.region`.
    #[serde(default, deserialize_with = "parsed::option")]
    pub region: Option<RegionId>,
    /// Where INVITEs go.
    pub address: SocketAddr,
    /// Most sessions placed on it at once.
    #[serde(default = "default_backend_max_sessions")]
    pub max_sessions: u32,
    /// A disabled Backend takes no new sessions.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl BackendConfig {
    fn local(id: &str, port: u16) -> Self {
        Self {
            id: NodeId::new(id).expect("valid literal"),
            region: None,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            max_sessions: default_backend_max_sessions(),
            enabled: true,
        }
    }
}

fn default_backend_max_sessions() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

/// One `[[trunks]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Unique among trunks; Backends may pick an outbound trunk by it.
    pub name: String,
    /// Region of its inbound calls; `None` = `node.region`.
    #[serde(default, deserialize_with = "parsed::option")]
    pub region: Option<RegionId>,
    /// Source networks of its inbound calls (CIDR).
    #[serde(default, deserialize_with = "parsed::list")]
    pub sources: Vec<IpNet>,
    /// Where outbound calls through it go; `None` = inbound only.
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// Request-URI hosts routed out through it.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How a Backend's transfer (REFER) of this trunk's callers is done: `"bridge"` (this node
    /// dials the target) or `"refer"` (the REFER goes to the trunk).
    #[serde(default)]
    pub transfer: TrunkTransfer,
    /// How DTMF asked for through the session API reaches its callers: `"rfc4733"` (events in
    /// the media) or `"info"` (SIP INFO, `application/dtmf-relay`).
    #[serde(default)]
    pub dtmf: TrunkDtmf,
    /// Digest users: a caller must authenticate as one of them (from `sources` if any, else
    /// from anywhere). None: `sources` alone admit.
    #[serde(default)]
    pub users: Vec<TrunkUser>,
    /// Digest realm; `None` = `sip.realm`.
    #[serde(default)]
    pub realm: Option<String>,
    /// Digest algorithms offered, preferred first (`SHA-256`, `MD5`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Header names (globs such as `X-*`, case-insensitive) of the caller's INVITE passed on to
    /// the Backend, and of a Backend's INVITE passed on to the carrier.
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// The account this node answers the carrier's digest challenge (401/407) with, on calls out
    /// through the trunk (a Backend's or `POST /v1/calls`).
    #[serde(default)]
    pub credentials: Option<TrunkUser>,
}

impl TrunkConfig {
    /// The embedded default's `local` trunk: callers on loopback (the loadgen, `scripts/run.sh`).
    fn local() -> Self {
        Self {
            name: "local".to_owned(),
            region: None,
            sources: vec![
                "127.0.0.0/8".parse().expect("valid literal"),
                "::1/128".parse().expect("valid literal"),
            ],
            outbound: None,
            hosts: Vec::new(),
            transfer: TrunkTransfer::Bridge,
            dtmf: TrunkDtmf::Rfc4733,
            users: Vec::new(),
            realm: None,
            algorithms: default_algorithms(),
            pass_headers: Vec::new(),
            credentials: None,
        }
    }

    /// Whether callers must authenticate with digest credentials.
    pub fn authenticates(&self) -> bool {
        !self.users.is_empty()
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["SHA-256".to_owned(), "MD5".to_owned()]
}

/// One digest user of a trunk.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkUser {
    /// The user name (`username` in the credentials).
    pub name: String,
    /// The password, in the file.
    #[serde(default)]
    pub password: Option<String>,
    /// The environment variable holding the password (preferred to `password`).
    #[serde(default)]
    pub password_env: Option<String>,
}

impl fmt::Debug for TrunkUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrunkUser")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_env", &self.password_env)
            .finish()
    }
}

impl TrunkUser {
    /// The password, read from the environment for `password_env`.
    pub fn resolve_password(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match (&self.password, &self.password_env) {
            (_, Some(var)) => {
                env(var).ok_or_else(|| format!("environment variable {var} is not set"))
            }
            (Some(password), None) => Ok(password.clone()),
            (None, None) => Err("needs password or password_env".to_owned()),
        }
    }
}

/// `[records]`: one call record per ended session, as a JSON line in a size-rotated file and,
/// when `webhook` is set, POSTed there through an on-disk spool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordsConfig {
    /// The JSON-lines file ("" writes no file).
    pub path: PathBuf,
    /// The file is rotated (`path.1`, `path.2`, ...) before a line would take it past this.
    pub max_bytes: u64,
    /// Rotated files kept; the oldest beyond them is deleted (0 keeps none).
    pub keep: u32,
    /// An `http://` URL each record is POSTed to as JSON ("" = no webhook).
    pub webhook: String,
    /// A POST not answered 2xx within this has failed.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Records not yet delivered ("" = `path` with `.spool` appended).
    pub spool_dir: PathBuf,
    /// The spool's bound; a record that would pass it is dropped and counted.
    pub spool_max_bytes: u64,
    /// First wait after a failed POST; doubled per failure up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest wait between retries.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl RecordsConfig {
    /// The spool directory: `spool_dir`, else `path` + `.spool`.
    pub fn spool(&self) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() {
            let mut dir = self.path.clone().into_os_string();
            dir.push(".spool");
            PathBuf::from(dir)
        } else {
            self.spool_dir.clone()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: &str| Err(ConfigError::new(key, reason));
        if self.max_bytes < 4096 {
            return fail("records.max_bytes", "must be at least 4096");
        }
        if self.webhook.is_empty() {
            return Ok(());
        }
        if let Err(reason) = crate::webhook_url::WebhookUrl::parse(&self.webhook) {
            return Err(ConfigError::new("records.webhook", reason));
        }
        if self.path.as_os_str().is_empty() && self.spool_dir.as_os_str().is_empty() {
            return fail(
                "records.spool_dir",
                "must be set when records.path is \"\" and records.webhook is set",
            );
        }
        if self.webhook_timeout.is_zero() {
            return fail("records.webhook_timeout", "must be more than 0s");
        }
        if self.spool_max_bytes < 4096 {
            return fail("records.spool_max_bytes", "must be at least 4096");
        }
        if self.retry_min.is_zero() {
            return fail("records.retry_min", "must be more than 0s");
        }
        if self.retry_max < self.retry_min {
            return fail("records.retry_max", "must be at least records.retry_min");
        }
        Ok(())
    }
}

impl Default for RecordsConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("voxgate-records.jsonl"),
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
            webhook: String::new(),
            webhook_timeout: Duration::from_secs(5),
            spool_dir: PathBuf::new(),
            spool_max_bytes: 256 * 1024 * 1024,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info,voxgate_proxy=debug` (also accepted as
    /// `log.level`); `RUST_LOG`, when set, replaces it.
    #[serde(alias = "level")]
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Library log targets whose per-peer and per-connection INFO lines (the WebRTC stack writes
/// several per peer) are held at WARN unless a directive names them.
pub const QUIET_TARGETS: &[&str] = &[
    "rtc",
    "rtc_crypto",
    "rtc_datachannel",
    "rtc_dtls",
    "rtc_ice",
    "rtc_interceptor",
    "rtc_mdns",
    "rtc_media",
    "rtc_rtcp",
    "rtc_rtp",
    "rtc_sctp",
    "rtc_sdp",
    "rtc_shared",
    "rtc_srtp",
    "rtc_stun",
    "rtc_turn",
    "hyper",
    "hyper_util",
    "h2",
    "redis",
];

/// `filter` with `target=warn` added for each of [`QUIET_TARGETS`] it does not name itself.
pub fn log_directives(filter: &str) -> String {
    let named = |target: &str| {
        filter.split(',').any(|d| {
            let name = d.trim().split(['=', '[']).next().unwrap_or("");
            // A module of it (`rtc::peer_connection=info`) is more specific than `rtc=warn`
            // and wins on its own.
            name == target
        })
    };
    let mut directives = filter.trim().to_owned();
    for target in QUIET_TARGETS.iter().filter(|t| !named(t)) {
        if !directives.is_empty() {
            directives.push(',');
        }
        directives.push_str(target);
        directives.push_str("=warn");
    }
    directives
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Deserializers for types that parse from strings (`FromStr`) but have no serde impl.
mod parsed {
    use std::collections::BTreeMap;
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::{Deserialize, Deserializer, Error};
    use voxgate_core::RegionId;

    /// A `T` read from a string; used inside collections so errors keep their exact path.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Parsed<T>(T);

    impl<'de, T> Deserialize<'de> for Parsed<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            text.parse().map(Parsed).map_err(D::Error::custom)
        }
    }

    pub(super) fn value<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        Parsed::deserialize(deserializer).map(|p| p.0)
    }

    pub(super) fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        value(deserializer).map(Some)
    }

    pub(super) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let items = Vec::<Parsed<T>>::deserialize(deserializer)?;
        Ok(items.into_iter().map(|p| p.0).collect())
    }

    pub(super) fn empty_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let text = String::deserialize(deserializer)?;
        if text.trim().is_empty() {
            Ok(None)
        } else {
            text.parse().map(Some).map_err(D::Error::custom)
        }
    }

    pub(super) fn spillover<'de, D>(
        deserializer: D,
    ) -> Result<BTreeMap<RegionId, Vec<RegionId>>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let map = BTreeMap::<Parsed<RegionId>, Vec<Parsed<RegionId>>>::deserialize(deserializer)?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (k.0, v.into_iter().map(|r| r.0).collect()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(toml: &str) -> Config {
        parse_str("test.toml", toml, Vec::new()).unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn library_chatter_is_held_at_warn_unless_named() {
        let d = log_directives("info");
        assert!(d.starts_with("info,") && d.contains(",rtc_ice=warn") && d.contains(",rtc=warn"));
        let d = log_directives("debug,rtc_ice=debug,rtc::peer_connection=info");
        assert!(
            !d.contains("rtc_ice=warn") && d.contains(",rtc=warn"),
            "{d}"
        );
        assert!(d.contains("rtc_dtls=warn"));
        for filter in ["info", "warn,voxgate_proxy=debug", ""] {
            assert!(tracing_subscriber::EnvFilter::try_new(log_directives(filter)).is_ok());
        }
    }

    #[test]
    fn log_level_is_an_alias_of_filter() {
        let config = parse("[log]\nlevel = \"debug\"\n");
        assert_eq!(config.log.filter, "debug");
    }

    #[test]
    fn records_keys_are_checked() {
        let bad = |toml: &str, key: &str| {
            let err = parse(toml).validate().expect_err(toml);
            assert!(err.to_string().contains(key), "{err}");
        };
        bad("[records]\nwebhook = \"https://x/\"\n", "records.webhook");
        bad("[records]\nwebhook = \"ftp://x\"\n", "records.webhook");
        bad("[records]\nmax_bytes = 10\n", "records.max_bytes");
        bad(
            "[records]\nwebhook = \"http://x/\"\nretry_min = \"10s\"\nretry_max = \"1s\"\n",
            "records.retry_max",
        );
        bad(
            "[records]\npath = \"\"\nwebhook = \"http://x/\"\n",
            "records.spool_dir",
        );
        let ok = parse("[records]\nwebhook = \"http://127.0.0.1:9000/cdr\"\n");
        assert!(ok.validate().is_ok());
        assert_eq!(
            ok.records.spool(),
            PathBuf::from("voxgate-records.jsonl.spool")
        );
    }

    #[test]
    fn embedded_default_equals_default_impl() {
        assert_eq!(load(None, []).unwrap(), Config::default());
    }

    #[test]
    fn literal_reads_toml_or_falls_back_to_string() {
        assert_eq!(literal("20"), toml::Value::Integer(20));
        assert_eq!(literal("true"), toml::Value::Boolean(true));
        assert_eq!(
            literal("127.0.0.1:5070"),
            toml::Value::String("127.0.0.1:5070".into())
        );
        assert_eq!(literal("\"quoted\""), toml::Value::String("quoted".into()));
        assert_eq!(literal("1\nx = 2"), toml::Value::String("1\nx = 2".into()));
    }

    #[test]
    fn env_indexes_arrays_and_rejects_out_of_range() {
        let config = load(None, env(&[("VOXGATE_BACKENDS__1__MAX_SESSIONS", "7")])).unwrap();
        assert_eq!(config.backends[1].max_sessions, 7);
        let err = load(None, env(&[("VOXGATE_BACKENDS__5__MAX_SESSIONS", "7")])).unwrap_err();
        assert_eq!(err.key, "backends");
        assert!(
            err.reason.contains("VOXGATE_BACKENDS__5__MAX_SESSIONS"),
            "{err}"
        );
    }

    #[test]
    fn env_without_double_underscore_is_ignored() {
        assert_eq!(
            load(None, env(&[("VOXGATE_CONFIG", "x.toml")])).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse_str("test.toml", "[limits]\nmax_sessions = = 3\n", []).unwrap_err();
        assert_eq!(err.key, "test.toml");
        assert!(err.reason.contains("line 2, column"), "{err}");
    }
}
