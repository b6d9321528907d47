//! Session timers (RFC 4028) of one leg: who refreshes, when, and when a leg whose peer should
//! have refreshed is given up.

use std::time::{Duration, Instant};

use voxgate_sip::dialog::header_value;

/// Who refreshes a leg's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresher {
    /// This node sends the refreshes.
    Us,
    /// The peer does; this node ends the session when none comes.
    Peer,
}

/// The session timer of one leg.
#[derive(Debug, Clone)]
pub(crate) struct LegTimer {
    pub(crate) interval: Duration,
    pub(crate) refresher: Refresher,
    /// The last refresh (or the session's start).
    pub(crate) last: Instant,
    /// The branch of a refresh of ours in flight.
    pub(crate) refreshing: Option<String>,
    /// A refresh of ours failed (not fatally): try again then.
    pub(crate) retry_at: Option<Instant>,
}

impl LegTimer {
    pub(crate) fn new(interval: Duration, refresher: Refresher, now: Instant) -> Self {
        Self {
            interval,
            refresher,
            last: now,
            refreshing: None,
            retry_at: None,
        }
    }

    /// When something is due: our refresh at half the interval, or, when the peer refreshes,
    /// the end at the expiry less min(32 s, interval / 3) (RFC 4028 10).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.refresher {
            Refresher::Us if self.refreshing.is_none() => {
                let half = self.last + self.interval / 2;
                Some(self.retry_at.map_or(half, |retry| retry.min(self.expiry())))
            }
            // A refresh of ours unanswered at expiry ends the session too.
            Refresher::Us => Some(self.last + self.interval),
            Refresher::Peer => {
                let margin = Duration::from_secs(32).min(self.interval / 3);
                Some(self.last + self.interval - margin)
            }
        }
    }

    /// When the session expires without a refresh.
    pub(crate) fn expiry(&self) -> Instant {
        self.last + self.interval
    }

    /// A refresh (ours or the peer's) succeeded at `now`.
    pub(crate) fn refreshed(&mut self, now: Instant) {
        self.last = now;
        self.refreshing = None;
        self.retry_at = None;
    }

    /// A refresh request from the peer said `Session-Expires: secs;refresher=...` (RFC 4028 9):
    /// its interval and refresher are this leg's from now on. `refresher` is the request's view:
    /// "uac" is the peer (who sent it), "uas" is this node.
    pub(crate) fn adopt(&mut self, secs: u64, refresher: Option<&str>) {
        self.interval = Duration::from_secs(secs.clamp(1, MAX_INTERVAL));
        self.refresher = match refresher {
            Some("uac") => Refresher::Peer,
            Some("uas") => Refresher::Us,
            _ => self.refresher,
        };
    }

    /// The value of `Session-Expires` for this leg, from the side of `we_are_uac`.
    pub(crate) fn header(&self, we_are_uac: bool) -> String {
        let uac_refreshes = (self.refresher == Refresher::Us) == we_are_uac;
        let who = if uac_refreshes { "uac" } else { "uas" };
        format!("{};refresher={who}", self.interval.as_secs().max(1))
    }
}

/// The longest session interval taken from a peer; longer ones are lowered to it (a UAS may
/// lower the interval down to Min-SE, RFC 4028 9), so no deadline can overflow.
pub(crate) const MAX_INTERVAL: u64 = 86_400;

/// `Session-Expires` (or its compact `x`) of a message: seconds (at most [`MAX_INTERVAL`]) and
/// the refresher parameter.
pub(crate) fn session_expires(headers: &rsip::Headers) -> Option<(u64, Option<String>)> {
    let value = header_value(headers, "Session-Expires").or_else(|| header_value(headers, "x"))?;
    let mut parts = value.split(';');
    let secs = parts.next()?.trim().parse::<u64>().ok()?.min(MAX_INTERVAL);
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| value.trim().to_ascii_lowercase())
    });
    Some((secs, refresher))
}

/// `Min-SE` of a message, in seconds.
pub(crate) fn min_se(headers: &rsip::Headers) -> Option<u64> {
    header_value(headers, "Min-SE")?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether an option tag is listed in `Supported` (or its compact `k`) or `Require`.
pub(crate) fn has_option(headers: &rsip::Headers, header: &str, tag: &str) -> bool {
    let names: &[&str] = match header {
        "Supported" => &["Supported", "k"],
        other => &[other],
    };
    names.iter().any(|name| {
        voxgate_sip::dialog::header_values(headers, name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(tag))
    })
}

/// Whether a peer allows `method` in dialog, by its `Allow` header (absent: unknown, assumed not
/// for extensions).
pub(crate) fn allows(headers: &rsip::Headers, method: &str) -> bool {
    voxgate_sip::dialog::header_values(headers, "Allow")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|m| m.trim().eq_ignore_ascii_case(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> rsip::Headers {
        let mut headers = rsip::Headers::default();
        for (name, value) in lines {
            headers.push(rsip::Header::Other((*name).into(), (*value).into()));
        }
        headers
    }

    #[test]
    fn headers_are_read() {
        let h = headers(&[
            ("Session-Expires", "1800;refresher=UAC"),
            ("Min-SE", "90"),
            ("Supported", "100rel, timer"),
            ("Allow", "INVITE, ACK, UPDATE"),
        ]);
        assert_eq!(session_expires(&h), Some((1800, Some("uac".into()))));
        assert_eq!(min_se(&h), Some(90));
        assert!(has_option(&h, "Supported", "timer"));
        assert!(!has_option(&h, "Require", "timer"));
        assert!(allows(&h, "update"));
        assert_eq!(session_expires(&headers(&[("x", "90")])), Some((90, None)));
        let huge = headers(&[("Session-Expires", "18446744073709551615;refresher=uac")]);
        assert_eq!(
            session_expires(&huge),
            Some((MAX_INTERVAL, Some("uac".into())))
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn deadlines() {
        let t0 = Instant::now();
        let ours = LegTimer::new(Duration::from_secs(90), Refresher::Us, t0);
        assert_eq!(ours.deadline(), Some(t0 + Duration::from_secs(45)));
        assert_eq!(ours.header(true), "90;refresher=uac");
        assert_eq!(ours.header(false), "90;refresher=uas");
        let theirs = LegTimer::new(Duration::from_secs(90), Refresher::Peer, t0);
        assert_eq!(theirs.deadline(), Some(t0 + Duration::from_secs(60)));
        let long = LegTimer::new(Duration::from_secs(1800), Refresher::Peer, t0);
        assert_eq!(long.deadline(), Some(t0 + Duration::from_secs(1768)));
    }
}
