//! Per-source request rate limits with a temporary ban, in the spirit of Kamailio's pike: each
//! source address has a token bucket (`rate` per second, `burst` deep); a source that finds its
//! bucket empty is banned for `ban` and everything it sends meanwhile is dropped. Sans-I/O: the
//! time of every request is passed in.
//!
//! Memory is bounded: buckets that have refilled and bans that have run out are swept, and at
//! most `max_sources` sources are followed at once; past that, new sources pass untracked (and
//! are counted), since refusing them would let one spoofed flood lock everybody out. IPv6
//! sources are followed per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodConfig {
    /// Requests per second a source may keep sending.
    pub rate: f64,
    /// Requests a source may send at once above the rate.
    pub burst: f64,
    /// How long a source that went over stays banned.
    pub ban: Duration,
    /// Sources followed at once at most.
    pub max_sources: usize,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            rate: 200.0,
            burst: 400.0,
            ban: Duration::from_secs(300),
            max_sources: 65_536,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits.
    Pass,
    /// This request emptied the bucket: the source is banned from now on.
    Banned,
    /// The source is banned.
    Dropped,
}

/// A banned source, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The address (an IPv6 source's /64 network address).
    pub source: IpAddr,
    /// When it was banned.
    pub since: Instant,
    /// When the ban ends.
    pub until: Instant,
    /// Requests dropped since (not counting the one that banned it).
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-source limiter.
#[derive(Debug)]
pub struct SourceLimiter {
    config: FloodConfig,
    buckets: HashMap<IpAddr, Bucket>,
    bans: HashMap<IpAddr, Ban>,
    next_sweep: Option<Instant>,
    untracked: u64,
}

/// Time between sweeps of refilled buckets and lifted bans.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl SourceLimiter {
    /// A limiter with these limits.
    pub fn new(config: FloodConfig) -> Self {
        Self {
            config,
            buckets: HashMap::new(),
            bans: HashMap::new(),
            next_sweep: None,
            untracked: 0,
        }
    }

    /// One request from `source` at `now`.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> Verdict {
        let source = key(source);
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.sweep(now);
        }
        if let Some(ban) = self.bans.get_mut(&source) {
            if now < ban.until {
                ban.dropped += 1;
                return Verdict::Dropped;
            }
            self.bans.remove(&source);
        }
        let config = self.config;
        if !self.buckets.contains_key(&source) && self.buckets.len() >= config.max_sources {
            self.sweep(now);
            if self.buckets.len() >= config.max_sources {
                self.untracked += 1;
                return Verdict::Pass;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: config.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * config.rate).min(config.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Pass;
        }
        self.buckets.remove(&source);
        self.bans.insert(
            source,
            Ban {
                source,
                since: now,
                until: now + config.ban,
                dropped: 0,
            },
        );
        Verdict::Banned
    }

    /// The sources banned at `now`, oldest ban first.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .bans
            .values()
            .filter(|ban| now < ban.until)
            .cloned()
            .collect();
        bans.sort_by_key(|ban| (ban.since, ban.source));
        bans
    }

    /// How many sources are banned at `now`.
    pub fn banned(&self, now: Instant) -> usize {
        self.bans.values().filter(|ban| now < ban.until).count()
    }

    /// Sources followed now (buckets and bans).
    pub fn tracked(&self) -> usize {
        self.buckets.len() + self.bans.len()
    }

    /// Requests let through untracked because `max_sources` were followed already.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Forgets buckets that have refilled and bans that have ended.
    pub fn sweep(&mut self, now: Instant) {
        let FloodConfig { rate, burst, .. } = self.config;
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * rate < burst
        });
        self.bans.retain(|_, ban| now < ban.until);
        self.next_sweep = Some(now + SWEEP_EVERY);
    }
}

/// The address a source is followed by: IPv4 (also when mapped into IPv6), or an IPv6 /64.
fn key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
    fn origin() -> Instant {
        Instant::now()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn limiter(max_sources: usize) -> SourceLimiter {
        SourceLimiter::new(FloodConfig {
            rate: 10.0,
            burst: 20.0,
            ban: Duration::from_secs(60),
            max_sources,
        })
    }

    #[test]
    fn a_burst_passes_and_the_rate_is_kept_up() {
        let t0 = origin();
        let mut limiter = limiter(16);
        for _ in 0..20 {
            assert_eq!(limiter.check(t0, ip("192.0.2.1")), Verdict::Pass);
        }
        // Ten a second for a minute, after the burst: never banned.
        for i in 1..=600u64 {
            let at = t0 + Duration::from_millis(i * 100);
            assert_eq!(limiter.check(at, ip("192.0.2.1")), Verdict::Pass, "{i}");
        }
        assert!(limiter.bans(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_flood_bans_one_source_for_the_ban_time_only() {
        let t0 = origin();
        let mut limiter = limiter(16);
        let flooder = ip("192.0.2.66");
        let verdicts: Vec<Verdict> = (0..25).map(|_| limiter.check(t0, flooder)).collect();
        assert_eq!(verdicts[19], Verdict::Pass);
        assert_eq!(verdicts[20], Verdict::Banned);
        assert!(verdicts[21..].iter().all(|v| *v == Verdict::Dropped));
        // Another source is not affected.
        assert_eq!(limiter.check(t0, ip("192.0.2.2")), Verdict::Pass);
        let bans = limiter.bans(t0 + Duration::from_secs(1));
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].source, flooder);
        assert_eq!(bans[0].dropped, 4);
        assert_eq!(bans[0].until, t0 + Duration::from_secs(60));
        // Quiet or not, the ban holds until it ends; then the source starts afresh.
        let during = t0 + Duration::from_secs(59);
        assert_eq!(limiter.check(during, flooder), Verdict::Dropped);
        let after = t0 + Duration::from_secs(60);
        assert_eq!(limiter.banned(after), 0);
        assert_eq!(limiter.check(after, flooder), Verdict::Pass);
    }

    #[test]
    fn ipv6_sources_are_followed_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = origin();
        let mut limiter = limiter(16);
        for i in 0..20u32 {
            let source = ip(&format!("2001:db8:1:2::{:x}", i + 1));
            assert_eq!(limiter.check(t0, source), Verdict::Pass);
        }
        assert_eq!(
            limiter.check(t0, ip("2001:db8:1:2:ffff::1")),
            Verdict::Banned
        );
        assert_eq!(limiter.check(t0, ip("2001:db8:1:3::1")), Verdict::Pass);
        assert_eq!(limiter.bans(t0)[0].source, ip("2001:db8:1:2::"));
        for _ in 0..20 {
            limiter.check(t0, ip("::ffff:192.0.2.9"));
        }
        assert_eq!(limiter.check(t0, ip("192.0.2.9")), Verdict::Banned);
    }

    #[test]
    fn memory_stays_bounded_under_a_spoofed_flood() {
        let t0 = origin();
        let mut limiter = limiter(100);
        for i in 0..10_000u32 {
            let source = IpAddr::from(i.to_be_bytes());
            assert_eq!(limiter.check(t0, source), Verdict::Pass);
        }
        assert!(limiter.tracked() <= 100);
        assert_eq!(limiter.untracked(), 9_900);
        // Once the followed sources have refilled they are swept and new ones are followed.
        let later = t0 + Duration::from_secs(10);
        limiter.sweep(later);
        assert_eq!(limiter.tracked(), 0);
        for _ in 0..21 {
            limiter.check(later, ip("198.51.100.1"));
        }
        assert_eq!(limiter.banned(later), 1);
    }
}
