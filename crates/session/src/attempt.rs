//! An INVITE this session sent and whose final answer it awaits: a far leg being called, a
//! number being dialled, or one of them being wound down after the session gave up on it.

use std::time::{Duration, Instant};

use voxgate_core::NodeId;
use voxgate_sip::dialog;

use crate::leg::SipLeg;

/// How long a cancelled or abandoned INVITE is followed before the session forgets it: longer
/// than any RFC 3261 transaction timer (64 * T1).
pub(crate) const WIND_DOWN: Duration = Duration::from_secs(32);

/// One INVITE and its dialog-to-be.
#[derive(Debug)]
pub(crate) struct Attempt<L> {
    pub(crate) leg: SipLeg,
    pub(crate) invite: rsip::Request,
    /// The Via branch of the INVITE (its client transaction).
    pub(crate) branch: String,
    pub(crate) backend: Option<NodeId>,
    /// The Backend's share of its cap, released when the attempt is dropped.
    pub(crate) lease: Option<L>,
    /// A provisional answer came: it may be CANCELled (RFC 3261 9.1), and it is not silent.
    pub(crate) provisional: bool,
    pub(crate) sent: Instant,
    /// A CANCEL went out.
    pub(crate) cancelled: bool,
    /// Since when it is being wound down.
    pub(crate) winding: Option<Instant>,
    /// The RSeq of the last reliable provisional PRACKed.
    pub(crate) last_rseq: Option<u32>,
    /// It answers a digest challenge already: a second one is final.
    pub(crate) authenticated: bool,
}

impl<L> Attempt<L> {
    pub(crate) fn new(
        leg: SipLeg,
        invite: rsip::Request,
        backend: Option<NodeId>,
        lease: Option<L>,
        now: Instant,
    ) -> Self {
        let branch = voxgate_sip::message::top_branch(&invite).unwrap_or_default();
        Self {
            leg,
            invite,
            branch,
            backend,
            lease,
            provisional: false,
            sent: now,
            cancelled: false,
            winding: None,
            last_rseq: None,
            authenticated: false,
        }
    }

    /// Follows `invite`, sent at `now` in the same dialog instead of the INVITE it had (a new
    /// transaction: nothing answered yet).
    pub(crate) fn restart(&mut self, invite: rsip::Request, now: Instant) {
        self.branch = voxgate_sip::message::top_branch(&invite).unwrap_or_default();
        self.invite = invite;
        self.provisional = false;
        self.sent = now;
        self.cancelled = false;
        self.last_rseq = None;
    }

    /// The CSeq number of the INVITE.
    pub(crate) fn cseq(&self) -> u32 {
        voxgate_sip::message::cseq(&self.invite).map_or(1, |(n, _)| n)
    }

    /// The CANCEL to send now, if the INVITE may be cancelled and was not yet.
    pub(crate) fn cancel(&mut self) -> Option<rsip::Request> {
        if self.provisional && !self.cancelled {
            self.cancelled = true;
            Some(dialog::cancel(&self.invite))
        } else {
            None
        }
    }

    /// The deadline of a wound-down attempt.
    pub(crate) fn wind_down_deadline(&self) -> Option<Instant> {
        self.winding.map(|since| since + WIND_DOWN)
    }
}
