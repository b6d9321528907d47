//! What keeps each leg alive: session refreshes (RFC 4028) sent or awaited, and the reliable
//! provisionals (RFC 3262) sent to the caller until PRACKed.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_sip::TransactionKey;
use voxgate_sip::dialog;
use voxgate_sip::message;

use crate::cause::EndCause;
use crate::io::Output;
use crate::media::Side;
use crate::reliable;
use crate::session::{Phase, SUPPORTED, Session};
use crate::timer::{self, Refresher};

impl<L> Session<L> {
    /// Sends a reliable provisional again if it is due (RFC 3262 3).
    pub(crate) fn retransmit_reliable(&mut self, now: Instant) {
        let due = self.caller_rel.as_mut().and_then(|rel| rel.due(now));
        if let (Some(response), Some(key)) = (due, self.caller_invite()) {
            self.outputs.push_back(Output::Respond { key, response });
        }
    }

    /// Acts on `side`'s session timer at `now`: our refresh goes out, or a session whose
    /// refresh did not come (or failed) ends, both legs hung up (RFC 4028 10).
    pub(crate) fn session_timer_due(&mut self, side: Side, now: Instant) {
        if self.phase != Phase::Up {
            return;
        }
        let Some(timer) = &self.timers[side.index()] else {
            return;
        };
        if timer.deadline().is_none_or(|d| d > now) {
            return;
        }
        if timer.refresher == Refresher::Peer || timer.refreshing.is_some() || now >= timer.expiry()
        {
            self.end(now, EndCause::SessionExpired, None, None, None);
            return;
        }
        let busy = self.held_ack.is_some() || self.relayed.iter().any(|r| r.from != side);
        if busy {
            // An exchange toward this leg is in flight, which refreshes it when it succeeds; a
            // refresh of ours now would only cross it (491). Look again in a second.
            if let Some(timer) = self.timers[side.index()].as_mut() {
                timer.retry_at = Some(now + Duration::from_secs(1));
            }
            return;
        }
        let header = timer.header(true);
        let use_update = self.updates[side.index()];
        let body = self.sdp.last[side.index()].clone();
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.leg_mut(side) else {
            return;
        };
        let mut refresh = if use_update {
            leg.dialog.request(&mut rng, Method::Update, None)
        } else {
            // Not known to take UPDATE: a re-INVITE with the SDP it has (RFC 4028 9).
            leg.dialog.request(&mut rng, Method::Invite, body)
        };
        refresh
            .headers
            .push(Header::Other("Session-Expires".into(), header));
        refresh.headers.push(Header::Supported(SUPPORTED.into()));
        let hop = leg.hop();
        let branch = message::top_branch(&refresh).unwrap_or_default();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: refresh,
        });
        if let Some(timer) = self.timers[side.index()].as_mut() {
            timer.refreshing = Some(branch);
        }
    }

    /// The answer to a refresh of ours on `side`.
    pub(crate) fn on_refresh_response(
        &mut self,
        now: Instant,
        side: Side,
        response: &rsip::Response,
    ) {
        let code = response.status_code.code();
        if code < 200 {
            return;
        }
        if code / 100 == 2 && dialog::is_invite_response(response) {
            let cseq = message::cseq(response).map_or(1, |(n, _)| n);
            self.ack_relayed(side, cseq);
        }
        match code {
            200..=299 => {
                self.refreshed(side, now);
            }
            // RFC 4028 10: a refresh that timed out or found no dialog ends the session.
            408 | 481 => self.end(now, EndCause::SessionExpired, None, None, None),
            _ => {
                if let Some(timer) = self.timers[side.index()].as_mut() {
                    if code == 422
                        && let Some(min_se) = timer::min_se(&response.headers)
                    {
                        timer.interval = timer.interval.max(Duration::from_secs(min_se));
                    }
                    timer.refreshing = None;
                    let retry = Duration::from_secs(10).min(timer.interval / 4);
                    timer.retry_at = Some(now + retry);
                }
            }
        }
    }

    /// The side whose refresh of ours has `branch`, if any.
    pub(crate) fn refreshing_side(&self, branch: &str) -> Option<Side> {
        [Side::Caller, Side::Backend].into_iter().find(|side| {
            self.timers[side.index()]
                .as_ref()
                .and_then(|t| t.refreshing.as_deref())
                == Some(branch)
        })
    }

    /// The server transaction of the caller's INVITE, answered or not.
    fn caller_invite(&self) -> Option<TransactionKey> {
        self.caller
            .invite
            .as_ref()
            .map(|(key, _)| key.clone())
            .or_else(|| self.caller_invite_key.clone())
    }

    /// A PRACK of the caller for one of our reliable provisionals (RFC 3262 3).
    pub(crate) fn on_prack(&mut self, now: Instant, key: TransactionKey, request: &rsip::Request) {
        let acked = match (self.caller_rel.as_mut(), reliable::rack(request)) {
            (Some(rel), Some((rseq, _))) => rel.prack(rseq, now),
            _ => (false, None),
        };
        let code = if acked.0 { 200 } else { 481 };
        if let Some(leg) = &self.caller.leg {
            let reply = leg.dialog.response(request, code, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
        }
        if let (Some(next), Some(invite_key)) = (acked.1, self.caller_invite()) {
            self.outputs.push_back(Output::Respond {
                key: invite_key,
                response: next,
            });
        }
    }
}
