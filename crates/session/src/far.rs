//! The far leg of a session: choosing where it goes, its INVITE and every answer to it
//! (failover, cooldown, PRACK, early media, late offer), the dialled number's INVITE, and the
//! INVITEs given up and wound down.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_sip::dialog::Dialog;
use voxgate_sip::message;
use voxgate_sip::sdp::AudioSdp;

use crate::attempt::Attempt;
use crate::cause::EndCause;
use crate::io::{MediaCommand, Output, Progress, Target};
use crate::leg::SipLeg;
use crate::media::{Side, first_codec_only, parse_sdp, peer_media};
use crate::reliable;
use crate::session::{
    ALLOW, HeldAck, Phase, SUPPORTED, Session, map_failure, retry_after, warning,
};
use crate::timer::{self, LegTimer, Refresher};

impl<L> Session<L> {
    /// Asks for the next far target, or ends the session when the attempts are used up.
    pub(crate) fn pick(&mut self, now: Instant) {
        if self.attempts >= self.config.max_attempts.max(1) {
            let refusal = Some((503, vec![self.retry_after()]));
            self.end(now, EndCause::NoBackend, None, refusal, None);
            return;
        }
        self.phase = Phase::Picking;
        self.outputs.push_back(Output::Pick {
            tried: self.tried.clone(),
        });
    }

    pub(crate) fn on_target(&mut self, now: Instant, target: Option<Target<L>>) {
        if self.phase != Phase::Picking {
            // A late answer (the session ended meanwhile): its lease is dropped here.
            return;
        }
        let Some(target) = target else {
            let refusal = Some((503, vec![self.retry_after()]));
            self.end(now, EndCause::NoBackend, None, refusal, None);
            return;
        };
        self.attempts += 1;
        if let Some(id) = &target.backend {
            self.tried.push(id.clone());
        }
        let public_ip = self.config.public_ip;
        let host = target
            .host
            .clone()
            .unwrap_or_else(|| target.address.to_string());
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            self.config.sip_addr,
            format!("sip:{}@{public_ip}", self.caller.from_user),
            format!("sip:{}@{host}", self.caller.to_user),
            self.config.user_agent,
        );
        dialog.local_contact = format!("sip:voxgate@{}", self.config.sip_addr);
        let session_expires = self.config.session_expires.as_secs().max(1);
        let min_se = self.config.min_se.as_secs().max(1);
        let invite = self.far_invite(&mut dialog, session_expires, min_se);
        self.attempt = Some(self.call_far(dialog, invite, target, now));
        self.phase = Phase::Calling;
    }

    /// Sends `invite` (the first of `dialog`) to `target` and returns the attempt that follows
    /// it: its dialog routed here, its progress reported.
    pub(crate) fn call_far(
        &mut self,
        dialog: Dialog,
        invite: rsip::Request,
        target: Target<L>,
        now: Instant,
    ) -> Attempt<L> {
        self.outputs
            .push_back(Output::Listen(dialog.call_id.clone()));
        self.outputs.push_back(Output::Progress(Progress::Calling {
            backend: target.backend.clone(),
            address: target.address,
            call_id: dialog.call_id.clone(),
        }));
        self.outputs.push_back(Output::Request {
            to: target.address,
            request: invite.clone(),
        });
        let leg = SipLeg::new(dialog, target.address);
        Attempt::new(leg, invite, target.backend, target.lease, now)
    }

    /// Gives up on `attempt` at `now`: CANCELled once it may be, followed to its end.
    pub(crate) fn wind_down(&mut self, mut attempt: Attempt<L>, now: Instant) {
        if let Some(cancel) = attempt.cancel() {
            self.outputs.push_back(Output::Request {
                to: attempt.leg.address,
                request: cancel,
            });
        }
        attempt.winding = Some(now);
        self.winding.push(attempt);
    }

    /// The far INVITE on `dialog`: our offer (none for a late-offer caller), the caller's
    /// Max-Forwards less one, our extensions and session interval, the configured headers.
    pub(crate) fn far_invite(
        &mut self,
        dialog: &mut Dialog,
        session_expires: u64,
        min_se: u64,
    ) -> rsip::Request {
        let mut invite = match self.offer.clone() {
            Some(offer) => {
                let body = self.sdp.write(Side::Backend, &offer);
                dialog.invite(&mut self.rng, body)
            }
            None => dialog.request(&mut self.rng, Method::Invite, None),
        };
        if let Some(max_forwards) = self.caller.max_forwards {
            invite
                .headers
                .retain(|h| !matches!(h, Header::MaxForwards(_)));
            invite.headers.push(Header::MaxForwards(
                max_forwards.saturating_sub(1).to_string().into(),
            ));
        }
        // An offerless INVITE does not offer 100rel: a reliable 18x would carry the far side's
        // offer, whose answer would have to come in our PRACK before the caller made one.
        let supported = if self.offer.is_some() {
            SUPPORTED
        } else {
            "timer"
        };
        self.far_headers(&mut invite, supported, session_expires, min_se);
        // Who called and why, as the trunk's policy says (identity.rs).
        if let Some((_, caller_invite)) = &self.caller.invite {
            self.config.identity.apply(caller_invite, &mut invite);
        }
        invite
    }

    /// What every INVITE of ours toward a far side says: Allow, `supported`, our session
    /// interval, the configured headers.
    pub(crate) fn far_headers(
        &self,
        invite: &mut rsip::Request,
        supported: &str,
        session_expires: u64,
        min_se: u64,
    ) {
        invite.headers.push(Header::Allow(ALLOW.into()));
        invite.headers.push(Header::Supported(supported.into()));
        invite.headers.push(Header::Other(
            "Session-Expires".into(),
            format!("{session_expires};refresher=uac"),
        ));
        invite
            .headers
            .push(Header::Other("Min-SE".into(), min_se.to_string()));
        for (name, value) in &self.config.far_headers {
            invite
                .headers
                .push(Header::Other(name.clone(), value.clone()));
        }
    }

    /// The far leg's 2xx at `now`: whether it allows UPDATE, and its session timer (RFC 4028).
    pub(crate) fn far_leg_up(&mut self, now: Instant, response: &rsip::Response) {
        self.updates[Side::Backend.index()] = timer::allows(&response.headers, "UPDATE");
        self.timers[Side::Backend.index()] = None;
        if let Some((secs, refresher)) = timer::session_expires(&response.headers) {
            // Its 2xx sets the interval; "uac" (or none) is us (RFC 4028 7.2).
            let refresher = match refresher.as_deref() {
                Some("uas") => Refresher::Peer,
                _ => Refresher::Us,
            };
            let interval = Duration::from_secs(secs.max(1));
            self.timers[Side::Backend.index()] = Some(LegTimer::new(interval, refresher, now));
        }
    }

    /// A response to the far INVITE now out.
    pub(crate) fn on_attempt_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        match code {
            100..=199 => {
                attempt.provisional = true;
                if code > 100 && message::to_tag(&response).is_some() {
                    // An early dialog: PRACK and UPDATE go in it.
                    attempt.leg.dialog.confirm(&response);
                }
                self.prack_if_reliable(&response);
                if code > 100 {
                    self.ringing();
                    self.early_response(now, code, &response);
                }
            }
            200..=299 => {
                let Some(mut attempt) = self.attempt.take() else {
                    return;
                };
                self.attempted(attempt.backend.clone(), Some(code));
                let cseq = attempt.cseq();
                let offer = self.late.then(|| parse_sdp(&response.body)).flatten();
                if self.late && offer.is_some() {
                    // The ACK carries the caller's answer: it waits for the caller's ACK.
                    attempt.leg.dialog.confirm(&response);
                } else {
                    let ack = attempt.leg.confirm(&mut self.rng, &response, cseq);
                    self.outputs.push_back(Output::Stateless {
                        to: attempt.leg.hop(),
                        message: ack,
                    });
                }
                self.far_leg_up(now, &response);
                let lease = attempt.lease.take();
                self.far = Some((attempt.leg, lease));
                match offer {
                    Some(offer) => self.far_offered(now, cseq, offer),
                    None => self.far_answered(now, &response),
                }
            }
            422 => {
                // RFC 4028 6: ask again with the far side's Min-SE, once per larger value.
                let Some(mut attempt) = self.attempt.take() else {
                    return;
                };
                let before = timer::session_expires(&attempt.invite.headers).map_or(0, |(s, _)| s);
                let asked = timer::min_se(&response.headers).unwrap_or(0);
                if asked <= before || asked > timer::MAX_INTERVAL {
                    self.attempted(attempt.backend, Some(code));
                    self.pick(now);
                    return;
                }
                let invite = self.far_invite(&mut attempt.leg.dialog, asked, asked);
                self.outputs.push_back(Output::Request {
                    to: attempt.leg.address,
                    request: invite.clone(),
                });
                let retry = Attempt::new(attempt.leg, invite, attempt.backend, attempt.lease, now);
                self.attempt = Some(retry);
            }
            503 => {
                let Some(attempt) = self.attempt.take() else {
                    return;
                };
                self.attempted(attempt.backend.clone(), Some(code));
                if let Some(backend) = attempt.backend {
                    let cooldown = retry_after(&response).unwrap_or(self.config.default_cooldown);
                    self.outputs.push_back(Output::CoolDown {
                        backend,
                        until: now + cooldown,
                    });
                }
                self.pick(now);
            }
            408 | 500..=599 => {
                if let Some(attempt) = self.attempt.take() {
                    self.attempted(attempt.backend, Some(code));
                }
                self.pick(now);
            }
            _ => {
                if let Some(mut attempt) = self.attempt.take() {
                    if self.answer_challenge(now, &mut attempt, &response) {
                        self.attempt = Some(attempt);
                        return;
                    }
                    self.attempted(attempt.backend, Some(code));
                }
                // Redirects would reveal the far side's contacts: the caller sees 480.
                let mapped = map_failure(code);
                self.end(
                    now,
                    EndCause::Rejected,
                    Some(code),
                    Some((mapped, Vec::new())),
                    Some(Side::Backend),
                );
            }
        }
    }

    /// Reports the first ringing answer of the session.
    pub(crate) fn ringing(&mut self) {
        if !self.ringing {
            self.ringing = true;
            self.outputs.push_back(Output::Progress(Progress::Ringing));
        }
    }

    /// Reports the outcome of a far INVITE.
    pub(crate) fn attempted(&mut self, backend: Option<voxgate_core::NodeId>, code: Option<u16>) {
        self.outputs
            .push_back(Output::Progress(Progress::Attempted { backend, code }));
    }

    /// PRACKs a reliable provisional of the far INVITE (RFC 3262), once per RSeq.
    pub(crate) fn prack_if_reliable(&mut self, response: &rsip::Response) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        let reliable = timer::has_option(&response.headers, "Require", "100rel");
        let Some(rseq) = reliable.then(|| reliable::rseq(response)).flatten() else {
            return;
        };
        if attempt.last_rseq.is_some_and(|last| rseq <= last) {
            return;
        }
        attempt.last_rseq = Some(rseq);
        let cseq = attempt.cseq();
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let mut prack = attempt.leg.dialog.request(&mut rng, Method::PRack, None);
        prack.headers.push(Header::Other(
            "RAck".into(),
            format!("{rseq} {cseq} INVITE"),
        ));
        self.outputs.push_back(Output::Request {
            to: attempt.leg.hop(),
            request: prack,
        });
    }

    /// The far side answered a late-offer INVITE with its offer: the caller gets it in our
    /// 200, and its answer (in its ACK) goes in our ACK.
    pub(crate) fn far_offered(&mut self, now: Instant, cseq: u32, offer: AudioSdp) {
        self.set_media(Side::Backend, peer_media(&offer));
        self.far_sdp = Some(offer.clone());
        self.caller_mux = offer.rtcp_mux;
        let body = self.sdp.write(Side::Caller, &offer);
        let from_cseq = self
            .caller
            .invite
            .as_ref()
            .and_then(|(_, invite)| message::cseq(invite))
            .map_or(1, |(n, _)| n);
        self.held_ack = Some(HeldAck {
            to: Side::Backend,
            cseq,
            from_cseq,
            offer,
        });
        self.answer_caller(now, body);
        self.caller.up = true;
        self.phase = Phase::Up;
        self.outputs
            .push_back(Output::Progress(Progress::Connected));
    }

    /// Sends our 200 (with `body`) to an inbound caller's INVITE, with its session timer.
    pub(crate) fn answer_caller(&mut self, now: Instant, body: String) {
        let Some((key, invite)) = self.caller.invite.take() else {
            return;
        };
        let Some(leg) = &self.caller.leg else { return };
        let mut ok = leg.dialog.response(&invite, 200, Some(body));
        ok.headers.push(Header::Allow(ALLOW.into()));
        ok.headers.push(Header::Supported(SUPPORTED.into()));
        if let Some((interval, refresher, require)) = self.caller_timer {
            let timer = LegTimer::new(interval, refresher, now);
            ok.headers
                .push(Header::Other("Session-Expires".into(), timer.header(false)));
            if require {
                ok.headers.push(Header::Require("timer".into()));
            }
            self.timers[Side::Caller.index()] = Some(timer);
        }
        // Keep the INVITE's key: a missing ACK (Timer L) names it, and a 2xx held for a PRACK
        // goes out on it.
        self.caller_invite_key = Some(key.clone());
        let ok = match self.caller_rel.as_mut() {
            // Not before the PRACK of a reliable provisional that carried SDP (RFC 3262 3).
            Some(rel) => rel.send_final(ok),
            None => Some(ok),
        };
        if let Some(response) = ok {
            self.outputs.push_back(Output::Respond { key, response });
        }
    }

    /// Relays a 180/183 to an inbound caller, with early media rewritten to this node.
    pub(crate) fn early_response(&mut self, now: Instant, code: u16, response: &rsip::Response) {
        // A late-offer caller has made no offer to answer: ringing only.
        let sdp = parse_sdp(&response.body)
            .filter(|_| !self.late)
            .map(|answer| {
                self.set_media(Side::Backend, peer_media(&answer));
                match &self.caller_offer {
                    Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                    None => self.sdp.write(Side::Caller, &answer),
                }
            });
        let (Some((key, invite)), Some(leg)) = (&self.caller.invite, &self.caller.leg) else {
            return;
        };
        let key = key.clone();
        let mut reply = leg.dialog.response(invite, code, sdp);
        reply.headers.push(Header::Allow(ALLOW.into()));
        let reply = match self.caller_rel.as_mut() {
            // The caller required reliable provisionals: sent one at a time until PRACKed.
            Some(rel) => rel.send(reply, now),
            None => Some(reply),
        };
        if let Some(response) = reply {
            self.outputs.push_back(Output::Respond { key, response });
        }
    }

    /// The far side answered 2xx (already ACKed): connect the caller, or hang up if its SDP is
    /// unusable.
    pub(crate) fn far_answered(&mut self, now: Instant, response: &rsip::Response) {
        let answer = parse_sdp(&response.body).filter(|sdp| sdp.port != 0);
        let Some(mut answer) = answer else {
            let refusal = (502, vec![warning("backend answered without usable SDP")]);
            self.end(now, EndCause::BadSdp, Some(200), Some(refusal), None);
            return;
        };
        self.set_media(Side::Backend, peer_media(&answer));
        self.far_sdp = Some(answer.clone());
        self.outputs.push_back(Output::Answered(answer.clone()));
        if self.caller.invite.is_some() {
            // We terminate rtcp-mux ourselves: accept it toward the caller whenever it offered
            // it, whatever the far side chose.
            answer.rtcp_mux = self.caller_mux;
            let body = match &self.caller_offer {
                Some(offer) => self.sdp.write_answer(Side::Caller, &answer, offer),
                None => self.sdp.write(Side::Caller, &answer),
            };
            self.answer_caller(now, body);
        }
        self.caller.up = true;
        self.phase = Phase::Up;
        self.outputs.push_back(Output::Media(MediaCommand::Arm));
        self.outputs
            .push_back(Output::Progress(Progress::Connected));
    }

    /// A response to the INVITE of a dialled number.
    pub(crate) fn on_dialling_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        match code {
            100..=199 => {
                if let Some(dialling) = self.caller.dialling.as_mut() {
                    dialling.provisional = true;
                }
                if code > 100 {
                    self.ringing();
                }
            }
            200..=299 => {
                let Some(mut dialling) = self.caller.dialling.take() else {
                    return;
                };
                let cseq = dialling.cseq();
                let ack = dialling.leg.confirm(&mut self.rng, &response, cseq);
                self.outputs.push_back(Output::Stateless {
                    to: dialling.leg.hop(),
                    message: ack,
                });
                self.caller.leg = Some(dialling.leg);
                self.caller.up = true;
                let answer = parse_sdp(&response.body)
                    .filter(|sdp| sdp.port != 0)
                    .and_then(first_codec_only);
                let Some(answer) = answer else {
                    self.end(now, EndCause::BadSdp, Some(200), None, None);
                    return;
                };
                self.set_media(Side::Caller, peer_media(&answer));
                self.caller_mux = answer.rtcp_mux;
                self.offer = Some(answer);
                self.outputs.push_back(Output::Progress(Progress::Bridging));
                self.pick(now);
            }
            _ => {
                if let Some(mut dialling) = self.caller.dialling.take()
                    && self.answer_challenge(now, &mut dialling, &response)
                {
                    self.caller.dialling = Some(dialling);
                    return;
                }
                self.end(
                    now,
                    EndCause::Rejected,
                    Some(code),
                    None,
                    Some(Side::Caller),
                );
            }
        }
    }

    /// A response to an INVITE being wound down: CANCEL it once it may be, hang up a 2xx that
    /// crossed the CANCEL, forget it on a final answer.
    pub(crate) fn on_winding_response(&mut self, index: usize, response: rsip::Response) {
        let code = response.status_code.code();
        let attempt = &mut self.winding[index];
        match code {
            100..=199 => {
                attempt.provisional = true;
                if let Some(cancel) = attempt.cancel() {
                    self.outputs.push_back(Output::Request {
                        to: attempt.leg.address,
                        request: cancel,
                    });
                }
            }
            200..=299 => {
                let mut attempt = self.winding.remove(index);
                let cseq = attempt.cseq();
                let ack = attempt.leg.confirm(&mut self.rng, &response, cseq);
                let hop = attempt.leg.hop();
                self.outputs.push_back(Output::Stateless {
                    to: hop,
                    message: ack,
                });
                let bye = attempt.leg.dialog.bye(&mut self.rng);
                self.outputs.push_back(Output::Request {
                    to: hop,
                    request: bye,
                });
            }
            // The transaction layer ACKs the 487 (or any other final answer).
            _ => {
                self.winding.remove(index);
            }
        }
    }
}
