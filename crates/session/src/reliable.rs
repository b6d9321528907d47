//! Reliable provisional responses (RFC 3262) that this node sends as a UAS: one at a time,
//! retransmitted until PRACKed, and a 2xx held back while one that carried SDP is unPRACKed.

use std::time::{Duration, Instant};

/// RFC 3261 T1, the first retransmission interval.
const T1: Duration = Duration::from_millis(500);

/// A reliable provisional response awaiting its PRACK.
#[derive(Debug)]
pub(crate) struct Reliable {
    pub(crate) response: rsip::Response,
    pub(crate) rseq: u32,
    /// It carried a session description: no 2xx may pass it (RFC 3262 3).
    sdp: bool,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// The reliable provisionals of one server INVITE transaction.
#[derive(Debug, Default)]
pub(crate) struct ReliableProvisionals {
    /// The next RSeq.
    next_rseq: u32,
    pub(crate) pending: Option<Reliable>,
    /// A provisional that waits for the pending one's PRACK (only the newest is kept).
    pub(crate) queued: Option<rsip::Response>,
    /// The 2xx that waits for the pending one's PRACK.
    held_final: Option<rsip::Response>,
}

impl ReliableProvisionals {
    /// Starts at `first_rseq` (RFC 3262 3: random, below 2**31).
    pub(crate) fn new(first_rseq: u32) -> Self {
        Self {
            next_rseq: first_rseq.clamp(1, 1 << 30),
            pending: None,
            queued: None,
            held_final: None,
        }
    }

    /// Makes `response` reliable and sends it now (returned), or queues it behind an unPRACKed
    /// one (`None`).
    pub(crate) fn send(
        &mut self,
        mut response: rsip::Response,
        now: Instant,
    ) -> Option<rsip::Response> {
        if self.pending.is_some() {
            self.queued = Some(response);
            return None;
        }
        let rseq = self.next_rseq;
        self.next_rseq += 1;
        response
            .headers
            .push(rsip::Header::Require("100rel".into()));
        response
            .headers
            .push(rsip::Header::Other("RSeq".into(), rseq.to_string()));
        self.pending = Some(Reliable {
            sdp: !response.body.is_empty(),
            response: response.clone(),
            rseq,
            next: now + T1,
            interval: T1,
            give_up: now + T1 * 64,
        });
        Some(response)
    }

    /// The final 2xx: sent now (returned), or held until the pending provisional that carried
    /// SDP is PRACKed. Nothing provisional goes out after it.
    pub(crate) fn send_final(&mut self, response: rsip::Response) -> Option<rsip::Response> {
        self.queued = None;
        if self.pending.as_ref().is_some_and(|p| p.sdp) {
            self.held_final = Some(response);
            return None;
        }
        self.pending = None;
        Some(response)
    }

    /// A PRACK for RSeq `rseq` arrived: true if it acknowledges the pending one; then what goes
    /// out next (the held 2xx, or the queued provisional).
    pub(crate) fn prack(&mut self, rseq: u32, now: Instant) -> (bool, Option<rsip::Response>) {
        match &self.pending {
            Some(pending) if pending.rseq == rseq => {
                self.pending = None;
                if let Some(ok) = self.held_final.take() {
                    return (true, Some(ok));
                }
                let next = self.queued.take().and_then(|r| self.send(r, now));
                (true, next)
            }
            _ => (false, None),
        }
    }

    /// The next retransmission.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.next.min(p.give_up))
    }

    /// What is due at `now`: a retransmission, or, past 64*T1 without a PRACK, the held 2xx
    /// (the call was answered: it is connected rather than dropped).
    pub(crate) fn due(&mut self, now: Instant) -> Option<rsip::Response> {
        let pending = self.pending.as_mut()?;
        if now >= pending.give_up {
            self.pending = None;
            self.queued = None;
            return self.held_final.take();
        }
        if now < pending.next {
            return None;
        }
        pending.interval = (pending.interval * 2).min(Duration::from_secs(4));
        pending.next = now + pending.interval;
        Some(pending.response.clone())
    }
}

/// `RAck` of a PRACK: RSeq, CSeq number, method.
pub(crate) fn rack(request: &rsip::Request) -> Option<(u32, u32)> {
    let value = voxgate_sip::dialog::header_value(&request.headers, "RAck")?;
    let mut parts = value.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    Some((rseq, cseq))
}

/// `RSeq` of a reliable provisional response.
pub(crate) fn rseq(response: &rsip::Response) -> Option<u32> {
    voxgate_sip::dialog::header_value(&response.headers, "RSeq")?
        .trim()
        .parse()
        .ok()
}
