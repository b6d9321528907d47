//! How a session transfers its caller (RFC 3515 REFER, blind): asked by the Backend with a
//! REFER in its dialog, or by an operator. In `Bridge` mode this node dials the target itself,
//! keeps the caller on the Backend while it rings, and once it answers moves the caller's media
//! to it and hangs up the Backend; the Backend hears how it goes in NOTIFYs (message/sipfrag:
//! 100, 180, 200 or the failure, after which it keeps the call). In `Refer` mode the REFER and
//! its NOTIFYs are relayed to and from the caller's trunk, whose carrier does the transfer.
//! Either way the session stays one session: one node slot, one record.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_sip::TransactionKey;
use voxgate_sip::dialog::{self, Dialog};
use voxgate_sip::message;

use crate::cause::EndCause;
use crate::io::{Output, Progress, Target};
use crate::media::{Side, first_codec_only, parse_sdp, peer_media};
use crate::session::{Phase, Relayed, Session, warning};
use crate::transfer::{Transfer, TransferMode, reason_phrase, refer_to, transfer_uri};

impl<L> Session<L> {
    /// A REFER from `side` in a confirmed session.
    pub(crate) fn on_refer(
        &mut self,
        now: Instant,
        side: Side,
        key: TransactionKey,
        request: rsip::Request,
    ) {
        if side == Side::Backend
            && self.config.transfer == TransferMode::Refer
            && self.caller.leg.is_some()
        {
            // The caller's trunk does the transfer: REFER and NOTIFYs cross as they are.
            self.relay_request(now, side, key, request);
            return;
        }
        let refusal = if side == Side::Caller {
            Some((403, "transfer is the Backend's to ask"))
        } else if self.config.transfer == TransferMode::Off {
            Some((403, "no transfer on this session"))
        } else if self.transfer.is_some() {
            Some((491, "a transfer is already under way"))
        } else {
            None
        };
        let target = refer_to(&request);
        let refusal = refusal.or(match &target {
            Err(reason) => Some((400, *reason)),
            Ok((_, true)) => Some((501, "attended transfer (Replaces) is not supported")),
            Ok(_) => None,
        });
        let Some(leg) = self.leg(side) else { return };
        if let Some((code, reason)) = refusal {
            let mut reply = leg.dialog.response(&request, code, None);
            reply.headers.push(warning(reason));
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
            return;
        }
        let reply = leg.dialog.response(&request, 202, None);
        self.outputs.push_back(Output::Respond {
            key,
            response: reply,
        });
        let referred_by = dialog::header_value(&request.headers, "Referred-By")
            .or_else(|| dialog::header_value(&request.headers, "b"));
        let to = target.map(|(to, _)| to).unwrap_or_default();
        self.start_transfer(to, referred_by, true);
    }

    /// Starts transferring the caller to `to`; `notify`: the Backend asked and gets NOTIFYs.
    pub(crate) fn start_transfer(&mut self, to: String, referred_by: Option<String>, notify: bool) {
        self.transfer = Some(Transfer {
            to: to.clone(),
            referred_by,
            notify,
            attempt: None,
            told: 0,
        });
        // RFC 3515 2.4.4: the implicit subscription's first NOTIFY.
        self.notify_transferor(100, false);
        self.outputs
            .push_back(Output::Progress(Progress::Transferring { to: to.clone() }));
        self.outputs.push_back(Output::Transfer { to });
    }

    /// An operator transfers the caller (`POST /v1/sessions/{id}/transfer`): `Err` says why not.
    pub(crate) fn transfer_by_operator(&mut self, to: String) -> Result<(), &'static str> {
        if self.phase != Phase::Up {
            return Err("the session is not connected");
        }
        if self.config.transfer == TransferMode::Off {
            return Err("no transfer on this session");
        }
        if self.transfer.is_some() {
            return Err("a transfer is already under way");
        }
        self.start_transfer(to, None, false);
        Ok(())
    }

    /// Where the transfer target is, answering [`Output::Transfer`].
    pub(crate) fn on_transfer_target(&mut self, now: Instant, target: Result<Target<L>, u16>) {
        let pending = self.transfer.as_ref().is_some_and(|t| t.attempt.is_none());
        if self.phase != Phase::Up || !pending {
            // A late answer: its lease is dropped here.
            return;
        }
        let target = match target {
            Ok(target) => target,
            Err(code) => {
                self.transfer_failed(now, code);
                return;
            }
        };
        let Some(offer) = self.transfer_offer() else {
            self.transfer_failed(now, 488);
            return;
        };
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let host = target
            .host
            .clone()
            .unwrap_or_else(|| target.address.to_string());
        let request_uri = transfer_uri(&transfer.to, &host);
        let referred_by = transfer.referred_by.clone();
        let public_ip = self.config.public_ip;
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            self.config.sip_addr,
            format!("sip:{}@{public_ip}", self.caller.from_user),
            request_uri,
            self.config.user_agent,
        );
        dialog.local_contact = format!("sip:voxgate@{}", self.config.sip_addr);
        let body = self.sdp.write(Side::Backend, &offer);
        let mut invite = dialog.invite(&mut self.rng, body);
        let session_expires = self.config.session_expires.as_secs().max(1);
        let min_se = self.config.min_se.as_secs().max(1);
        self.far_headers(&mut invite, "timer", session_expires, min_se);
        if let Some(referred_by) = referred_by {
            invite
                .headers
                .push(Header::Other("Referred-By".into(), referred_by));
        }
        let attempt = self.call_far(dialog, invite, target, now);
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.attempt = Some(attempt);
        }
    }

    /// Whether `branch` is the transfer target's INVITE.
    pub(crate) fn is_transfer_branch(&self, branch: &str) -> bool {
        self.transfer
            .as_ref()
            .and_then(|t| t.attempt.as_ref())
            .is_some_and(|a| a.branch == branch)
    }

    /// A response to the transfer target's INVITE.
    pub(crate) fn on_transfer_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let Some(attempt) = transfer.attempt.as_mut() else {
            return;
        };
        match code {
            100..=199 => {
                attempt.provisional = true;
                if code > 100 && transfer.told < code {
                    transfer.told = code;
                    self.notify_transferor(code, false);
                }
            }
            200..=299 => {
                let backend = attempt.backend.clone();
                self.attempted(backend, Some(code));
                self.transfer_answered(now, &response);
            }
            _ => {
                let backend = attempt.backend.clone();
                self.attempted(backend, Some(code));
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.attempt = None;
                }
                self.transfer_failed(now, code);
            }
        }
    }

    /// The target answered: ACK it, move the caller's media to it, tell the Backend and hang
    /// it up; the target is the far leg from now on.
    fn transfer_answered(&mut self, now: Instant, response: &rsip::Response) {
        let Some(mut attempt) = self.transfer.as_mut().and_then(|t| t.attempt.take()) else {
            return;
        };
        let cseq = attempt.cseq();
        let ack = attempt.leg.confirm(&mut self.rng, response, cseq);
        let hop = attempt.leg.hop();
        self.outputs.push_back(Output::Stateless {
            to: hop,
            message: ack,
        });
        let answer = parse_sdp(&response.body).filter(|sdp| sdp.port != 0 && !sdp.is_secure());
        let Some(answer) = answer else {
            // Nothing to send the caller's media to: the target is hung up, the call stays.
            let bye = attempt.leg.dialog.bye(&mut self.rng);
            self.outputs.push_back(Output::Request {
                to: hop,
                request: bye,
            });
            self.transfer_failed(now, 488);
            return;
        };
        self.notify_transferor(200, true);
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        self.forget_far_exchanges();
        if self.far.is_some() {
            self.bye(Side::Backend);
        }
        let lease = attempt.lease.take();
        self.far = Some((attempt.leg, lease));
        self.far_leg_up(now, response);
        self.far_sdp = Some(answer.clone());
        self.set_media(Side::Backend, peer_media(&answer));
        self.outputs
            .push_back(Output::Progress(Progress::Transferred {
                to: transfer.to,
                code: 200,
            }));
    }

    /// The far leg is about to be replaced: what the caller asked of it is refused now (its media
    /// restored), and what it asked of the caller is orphaned (ACKed when answered, answered to
    /// nobody), so that no answer goes out on the new leg's dialog.
    fn forget_far_exchanges(&mut self) {
        for relayed in std::mem::take(&mut self.relayed) {
            match relayed.from {
                Side::Caller => {
                    let mut reply = relayed;
                    let retry = Header::RetryAfter("1".into());
                    if let Some(previous) = reply.restore.take() {
                        self.set_media(Side::Caller, previous);
                    }
                    self.respond_relayed_with(&reply, 500, None, vec![retry]);
                }
                Side::Backend => self.relayed.push(Relayed {
                    orphan: true,
                    ..relayed
                }),
            }
        }
        if self
            .held_ack
            .as_ref()
            .is_some_and(|h| h.to == Side::Backend)
        {
            self.held_ack = None;
        }
    }

    /// The transfer failed with `code`: the Backend is told and keeps the caller; if it hung up
    /// meanwhile, the session ends.
    pub(crate) fn transfer_failed(&mut self, now: Instant, code: u16) {
        self.notify_transferor(code, true);
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        self.outputs
            .push_back(Output::Progress(Progress::Transferred {
                to: transfer.to,
                code,
            }));
        if self.far.is_none() {
            self.end(now, EndCause::TransferFailed, Some(code), None, None);
        }
    }

    /// The Backend hung up while its caller is being transferred: the caller waits for the
    /// target (the Backend's capacity goes now).
    pub(crate) fn transferor_left(&mut self) {
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.notify = false;
        }
        self.forget_far_exchanges();
        self.far = None;
        self.timers[Side::Backend.index()] = None;
        // Nobody sends on the far side until the target answers: its silence is no failure.
        if let Some(mut media) = self.media[Side::Backend.index()] {
            media.sends = false;
            self.set_media(Side::Backend, media);
        }
    }

    /// Acts on the target INVITE's deadlines: silence and the ring deadline fail the transfer.
    pub(crate) fn transfer_due(&mut self, now: Instant) {
        let Some(attempt) = self.transfer.as_mut().and_then(|t| t.attempt.as_mut()) else {
            return;
        };
        let silent = !attempt.provisional && attempt.sent + self.config.invite_timeout <= now;
        if !silent && attempt.sent + self.config.ring_timeout > now {
            return;
        }
        let Some(attempt) = self.transfer.as_mut().and_then(|t| t.attempt.take()) else {
            return;
        };
        self.attempted(attempt.backend.clone(), None);
        self.wind_down(attempt, now);
        self.transfer_failed(now, 408);
    }

    /// The next deadline of the target's INVITE.
    pub(crate) fn transfer_deadline(&self) -> Option<Instant> {
        let attempt = self.transfer.as_ref()?.attempt.as_ref()?;
        let ring = attempt.sent + self.config.ring_timeout;
        Some(if attempt.provisional {
            ring
        } else {
            ring.min(attempt.sent + self.config.invite_timeout)
        })
    }

    /// What the target is offered: the codec the caller and the Backend settled on, at this
    /// node's Backend-side port, so that the caller's media needs no renegotiation.
    fn transfer_offer(&self) -> Option<voxgate_sip::sdp::AudioSdp> {
        let mut offer = first_codec_only(self.far_sdp.clone()?)?;
        offer.direction = voxgate_sip::sdp::Direction::SendRecv;
        Some(offer)
    }

    /// A NOTIFY of the REFER's implicit subscription to the Backend: `code` as a sipfrag,
    /// `last` ends the subscription (RFC 3515 2.4.5).
    fn notify_transferor(&mut self, code: u16, last: bool) {
        if !self.transfer.as_ref().is_some_and(|t| t.notify) {
            return;
        }
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some((leg, _)) = self.far.as_mut() else {
            return;
        };
        let mut notify = leg.dialog.request(&mut rng, Method::Notify, None);
        notify.headers.push(Header::Event("refer".into()));
        let state = if last {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        notify.headers.push(Header::SubscriptionState(state.into()));
        let body = format!("SIP/2.0 {code} {}\r\n", reason_phrase(code)).into_bytes();
        message::set_body(&mut notify, body, Some("message/sipfrag;version=2.0"));
        let hop = leg.hop();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: notify,
        });
    }
}
