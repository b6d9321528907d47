//! The edge guard: what the SIP endpoint drops before parsing, so that it costs nothing and gets
//! no answer. In order: Backends always pass; a banned source is dropped; a source over its
//! request rate is banned ([`SourceLimiter`]); a scanner's User-Agent is dropped; with
//! `sip.unknown_source = "drop"`, a request that could open a dialog from a source in no trunk
//! is dropped. Everything else goes on to the transaction layer, where the dispatcher judges
//! trust in full ([`crate::trust`]).
//!
//! It also holds the Backends' SIP addresses (an INVITE from one of them is an outbound call,
//! and they are never limited), which the cluster registry adds to at run time.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, RwLock};

use ipnet::IpNet;
use voxgate_cluster::TrunkTable;
use voxgate_cluster::flood::{Ban, FloodConfig, SourceLimiter, Verdict};
use voxgate_endpoint::EdgeGuard;

use crate::config::{Config, UnknownSource};
use crate::metrics;

/// Our Backends' SIP addresses, and their IPs (canonical), each looked up in one step.
#[derive(Debug, Default)]
struct Backends {
    addrs: HashSet<SocketAddr>,
    ips: HashSet<IpAddr>,
}

impl Backends {
    fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut backends = Self::default();
        for addr in addrs {
            backends.add(addr);
        }
        backends
    }

    fn add(&mut self, addr: SocketAddr) {
        self.addrs.insert(addr);
        self.ips.insert(canonical(addr.ip()));
    }
}

/// The guard's state, shared by the endpoint task (which judges) and the HTTP side (which lists
/// the bans).
#[derive(Debug)]
pub struct Edge {
    limiter: Option<Mutex<SourceLimiter>>,
    exempt: Vec<IpNet>,
    backends: RwLock<Backends>,
    trunks: TrunkTable,
    /// `sip.unknown_source = "drop"`.
    drop_unknown: bool,
    /// Some trunk admits by credentials from any address: an unknown source's INVITE must reach
    /// the dispatcher to be challenged.
    credential_trunks: bool,
    /// Lower-cased scanner User-Agent substrings (empty: scanners are not dropped).
    scanners: Vec<String>,
}

impl Edge {
    /// The guard `config` describes.
    pub fn new(config: &Config) -> Self {
        let sip = &config.sip;
        let flood = &sip.flood;
        let limiter = flood.enabled.then(|| {
            Mutex::new(SourceLimiter::new(FloodConfig {
                rate: f64::from(flood.rate),
                burst: f64::from(flood.burst),
                ban: flood.ban,
                max_sources: flood.max_sources,
            }))
        });
        let scanners = if sip.drop_scanners {
            sip.scanner_user_agents
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        Self {
            limiter,
            exempt: flood.exempt.clone(),
            backends: RwLock::new(Backends::new(config.backends.iter().map(|b| b.address))),
            trunks: config.trunk_table(),
            drop_unknown: sip.unknown_source == UnknownSource::Drop,
            credential_trunks: config
                .trunks
                .iter()
                .any(|t| t.authenticates() && t.sources.is_empty()),
            scanners,
        }
    }

    /// Whether `source` is one of our Backends.
    pub fn is_backend(&self, source: SocketAddr) -> bool {
        self.backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .addrs
            .contains(&source)
    }

    /// Adds Backend addresses learnt from the cluster registry (config ones stay).
    pub fn add_backends(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut known = self.backends.write().unwrap_or_else(|e| e.into_inner());
        for addr in addrs {
            known.add(addr);
        }
    }

    /// The sources banned now.
    pub fn bans(&self, now: std::time::Instant) -> Vec<Ban> {
        self.limiter.as_ref().map_or_else(Vec::new, |limiter| {
            limiter.lock().unwrap_or_else(|e| e.into_inner()).bans(now)
        })
    }

    /// How many sources are banned now.
    pub fn banned(&self, now: std::time::Instant) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| {
            limiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .banned(now)
        })
    }

    /// The guard's verdict at `now` (the [`EdgeGuard`] impl passes the clock's time).
    pub fn judge(&self, now: std::time::Instant, source: SocketAddr, bytes: &[u8]) -> bool {
        let ip = canonical(source.ip());
        // One look per message: the exact address passes; a Backend sending from another port
        // (TCP, an ephemeral UDP port) is judged like any other source, but never rate limited:
        // a ban would cut every call it carries.
        let backend_ip = {
            let backends = self.backends.read().unwrap_or_else(|e| e.into_inner());
            if backends.addrs.contains(&source) {
                return true;
            }
            backends.ips.contains(&ip)
        };
        if let Some(limiter) = &self.limiter
            && !backend_ip
            && !self.exempt.iter().any(|net| net.contains(&ip))
        {
            let verdict = limiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(now, ip);
            match verdict {
                Verdict::Pass => {}
                Verdict::Banned => {
                    tracing::warn!(%ip, "SIP flood: source banned");
                    metrics::sip_refused("banned");
                    metrics::sip_banned_sources(self.banned(now));
                    return false;
                }
                Verdict::Dropped => {
                    metrics::sip_refused("banned");
                    return false;
                }
            }
        }
        let Some(peek) = voxgate_sip::peek::request(bytes) else {
            // Responses (and noise, which the parser refuses) go on.
            return true;
        };
        if !self.scanners.is_empty()
            && let Some(agent) = peek.user_agent
        {
            let agent = agent.to_ascii_lowercase();
            if self.scanners.iter().any(|s| agent.contains(s.as_str())) {
                metrics::sip_refused("scanner");
                return false;
            }
        }
        if self.drop_unknown
            && peek.out_of_dialog()
            && self.trunks.inbound(ip).is_none()
            && !(self.credential_trunks && peek.method == "INVITE")
        {
            metrics::sip_refused("unknown_source");
            return false;
        }
        true
    }
}

impl EdgeGuard for Edge {
    fn admit(&self, source: SocketAddr, bytes: &[u8]) -> bool {
        self.judge(tokio::time::Instant::now().into_std(), source, bytes)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn edge(toml: &str) -> Edge {
        let config = crate::config::parse_str("test", toml, []).expect("config");
        config.validate().expect("valid");
        Edge::new(&config)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    fn invite(user_agent: &str, to_tag: &str) -> Vec<u8> {
        format!(
            "INVITE sip:1@h SIP/2.0\r\nTo: <sip:1@h>{to_tag}\r\nUser-Agent: {user_agent}\r\n\r\n"
        )
        .into_bytes()
    }

    #[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
    fn origin() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[test]
    fn scanners_and_unknown_sources_are_dropped_trunks_and_backends_pass() {
        let edge = edge(
            "[sip]\nunknown_source = \"drop\"\n[[trunks]]\nname = \"carrier\"\nsources = [\"192.0.2.0/24\"]\n",
        );
        let t0 = origin();
        let trunk = addr("192.0.2.7:5060");
        let stranger = addr("198.51.100.1:5060");
        assert!(edge.judge(t0, trunk, &invite("Carrier SBC", "")));
        assert!(!edge.judge(t0, trunk, &invite("friendly-scanner", "")));
        assert!(!edge.judge(t0, stranger, &invite("Carrier SBC", "")));
        // Inside a dialog, and responses, the stranger passes (its call judges it).
        assert!(edge.judge(t0, stranger, &invite("x", ";tag=1")));
        assert!(edge.judge(t0, stranger, b"SIP/2.0 200 OK\r\n\r\n"));
        // Backends (config ones: 127.0.0.1:5080 and :5081 by default) always pass.
        assert!(edge.judge(t0, addr("127.0.0.1:5080"), &invite("sipcli", "")));
    }

    #[test]
    fn reject_mode_leaves_unknown_sources_to_the_dispatcher() {
        let edge = edge("[[trunks]]\nname = \"carrier\"\nsources = [\"192.0.2.0/24\"]\n");
        assert!(edge.judge(origin(), addr("198.51.100.1:5060"), &invite("x", "")));
    }

    #[test]
    fn a_flooding_source_is_banned_and_listed() {
        let edge = edge(
            "[sip.flood]\nrate = 10\nburst = 10\nban = \"60s\"\nexempt = [\"203.0.113.0/24\"]\n",
        );
        let t0 = origin();
        let flooder = addr("127.0.0.9:5060");
        let passed = (0..50)
            .filter(|_| edge.judge(t0, flooder, &invite("x", "")))
            .count();
        assert_eq!(passed, 10);
        assert!(edge.judge(t0, addr("127.0.0.10:5060"), &invite("x", "")));
        let exempt = addr("203.0.113.1:5060");
        assert!((0..50).all(|_| edge.judge(t0, exempt, &invite("x", ""))));
        let bans = edge.bans(t0 + Duration::from_secs(1));
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].source, flooder.ip());
        assert_eq!(edge.banned(t0 + Duration::from_secs(60)), 0);
    }
}
