//! Requests exchanged across a confirmed (or early) session: re-INVITE, UPDATE and INFO
//! relayed with their SDP rewritten, answered here for a side without SIP, and the ACKs a late
//! offer holds back.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rsip::{Header, Method};
use voxgate_sip::TransactionKey;
use voxgate_sip::dialog;
use voxgate_sip::message;
use voxgate_sip::sdp::Codec;

use crate::cause::EndCause;
use crate::io::{MediaCommand, Output};
use crate::media::{Side, parse_sdp, peer_media};
use crate::session::{HeldAck, Relayed, Session, map_failure, warning};
use crate::timer::{self, Refresher};

/// Headers a relayed request carries across, by method, with their compact forms (the rest are
/// per-hop or rebuilt).
const CARRIED: [(Method, &[(&str, &str)]); 2] = [
    (Method::Refer, &[("Refer-To", "r"), ("Referred-By", "b")]),
    (
        Method::Notify,
        &[("Event", "o"), ("Subscription-State", "Subscription-State")],
    ),
];

impl<L> Session<L> {
    /// Relays a re-INVITE, UPDATE, INFO, REFER or NOTIFY from `from` to the other side. An offer in it is
    /// rewritten and re-points `from`'s media (restored if the other side refuses); an
    /// offerless re-INVITE is relayed offerless (the offer comes back in the 2xx, the answer in
    /// the ACK); an UPDATE without an offer is a session refresh, answered here.
    pub(crate) fn relay_request(
        &mut self,
        now: Instant,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
    ) {
        let to = from.other();
        let refresh = request.method == Method::Update && request.body.is_empty();
        if self.leg(to).is_none() && !refresh {
            self.answer_locally(from, key, request);
            return;
        }
        let method = request.method;
        let carries_offer = matches!(method, Method::Invite | Method::Update);
        let respond = |session: &mut Self, code: u16, extra: Vec<Header>| {
            if let Some(leg) = session.leg(from) {
                let mut reply = leg.dialog.response(&request, code, None);
                reply.headers.extend(extra);
                session.outputs.push_back(Output::Respond {
                    key: key.clone(),
                    response: reply,
                });
            }
        };
        if method == Method::Update && request.body.is_empty() {
            // A session refresh (RFC 4028 9): answered here, for this leg only.
            let extra = self.answer_refresh(from, now, &request);
            respond(self, 200, extra);
            return;
        }
        let offer_in_flight = self.held_ack.is_some()
            || self
                .relayed
                .iter()
                .any(|r| matches!(r.request.method, Method::Invite | Method::Update));
        if carries_offer && offer_in_flight {
            // Glare (RFC 3261 14.1, RFC 3311 5.2): one offer at a time across the session.
            respond(self, 491, Vec::new());
            return;
        }
        let (body, content_type, restore, offer) = if carries_offer && !request.body.is_empty() {
            let Some(offer) = parse_sdp(&request.body).filter(|o| !o.is_secure()) else {
                let refusal = warning("no usable SDP offer");
                respond(self, 488, vec![refusal]);
                return;
            };
            let restore = self.media[from.index()];
            self.set_media(from, peer_media(&offer));
            let body = self.sdp.write(to, &offer);
            let content_type = Some("application/sdp".to_owned());
            (Some(body.into_bytes()), content_type, restore, Some(offer))
        } else if carries_offer {
            (None, None, None, None)
        } else {
            let body = (!request.body.is_empty()).then(|| request.body.clone());
            let content_type = dialog::header_value(&request.headers, "Content-Type");
            (body, content_type, None, None)
        };
        // What a REFER or its NOTIFY means is in its headers (RFC 3515, RFC 3892, RFC 6665).
        let carried: Vec<Header> = CARRIED
            .iter()
            .filter(|(m, _)| *m == method)
            .flat_map(|(_, names)| names.iter())
            .filter_map(|(name, compact)| {
                let value = dialog::header_value(&request.headers, name)
                    .or_else(|| dialog::header_value(&request.headers, compact))?;
                Some(Header::Other((*name).into(), value))
            })
            .collect();
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let Some(leg) = self.leg_mut(to) else {
            respond(self, 481, Vec::new());
            return;
        };
        let mut out = leg.dialog.request(&mut rng, method, None);
        out.headers.extend(carried);
        if let Some(body) = body {
            let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
            message::set_body(&mut out, body, Some(&content_type));
        }
        let hop = leg.hop();
        let branch = message::top_branch(&out).unwrap_or_default();
        self.outputs.push_back(Output::Request {
            to: hop,
            request: out.clone(),
        });
        self.relayed.push(Relayed {
            from,
            key,
            request,
            branch,
            since: now,
            restore,
            offer,
            out,
            orphan: false,
        });
    }

    /// A refresh of `side`'s session succeeded at `now`.
    pub(crate) fn refreshed(&mut self, side: Side, now: Instant) {
        if let Some(timer) = self.timers[side.index()].as_mut() {
            timer.refreshed(now);
        }
    }

    /// `side` refreshed its session with `request`, which we answer 2xx now: the leg takes the
    /// interval and refresher the request asked for (RFC 4028 9), and our answer says them back,
    /// from our side as the request's UAS.
    pub(crate) fn answer_refresh(
        &mut self,
        side: Side,
        now: Instant,
        request: &rsip::Request,
    ) -> Vec<Header> {
        let asked = timer::session_expires(&request.headers);
        let Some(timer) = self.timers[side.index()].as_mut() else {
            return Vec::new();
        };
        if let Some((secs, refresher)) = asked {
            timer.adopt(secs, refresher.as_deref());
        }
        timer.refreshed(now);
        let mut extra = vec![Header::Other("Session-Expires".into(), timer.header(false))];
        if timer.refresher == Refresher::Peer {
            // The requester refreshes: it must know we hold it to that.
            extra.push(Header::Require("timer".into()));
        }
        extra
    }

    /// An in-dialog request toward a side without SIP (a WebRTC client): INFO is taken, a
    /// re-INVITE is answered with what this node carries (the media bridge decides whether it
    /// can follow a new offer).
    pub(crate) fn answer_locally(
        &mut self,
        from: Side,
        key: TransactionKey,
        request: rsip::Request,
    ) {
        let Some(leg) = self.leg(from) else { return };
        if !matches!(request.method, Method::Invite | Method::Update) {
            let reply = leg.dialog.response(&request, 200, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
            return;
        }
        if request.body.is_empty() {
            // An offerless re-INVITE gets what is negotiated as the offer.
            let body = self.offer.clone().map(|sdp| self.sdp.write(from, &sdp));
            let reply = self
                .leg(from)
                .map(|leg| leg.dialog.response(&request, 200, body));
            if let Some(reply) = reply {
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            return;
        }
        let Some(offer) = parse_sdp(&request.body) else {
            let reply = leg.dialog.response(&request, 488, None);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
            return;
        };
        if self.reoffer.is_some() {
            // One re-offer at a time (RFC 3261 14.1).
            if let Some(leg) = self.leg(from) {
                let reply = leg.dialog.response(&request, 491, None);
                self.outputs.push_back(Output::Respond {
                    key,
                    response: reply,
                });
            }
            return;
        }
        self.outputs.push_back(Output::Reoffer(offer.clone()));
        self.reoffer = Some((key, request, offer));
    }

    pub(crate) fn on_reoffer_answer(&mut self, codecs: Option<Vec<Codec>>) {
        let Some((key, request, offer)) = self.reoffer.take() else {
            return;
        };
        let (code, body) = match (codecs, self.offer.clone()) {
            (Some(codecs), Some(mut ours)) => {
                if offer.port != 0 {
                    self.set_media(Side::Backend, peer_media(&offer));
                }
                ours.codecs = codecs;
                ours.direction = offer.direction.mirrored();
                self.offer = Some(ours.clone());
                (200, Some(self.sdp.write(Side::Backend, &ours)))
            }
            _ => (488, None),
        };
        if let Some(leg) = self.leg(Side::Backend) {
            let reply = leg.dialog.response(&request, code, body);
            self.outputs.push_back(Output::Respond {
                key,
                response: reply,
            });
        }
    }

    /// The other side's final answer to a relayed request, mapped back.
    pub(crate) fn relayed_answered(
        &mut self,
        now: Instant,
        relayed: Relayed,
        response: rsip::Response,
    ) {
        let code = response.status_code.code();
        let to = relayed.from.other();
        if relayed.orphan {
            if code / 100 == 2 && relayed.out.method == Method::Invite {
                let cseq = message::cseq(&response).map_or(1, |(n, _)| n);
                self.ack_relayed(to, cseq);
            }
            return;
        }
        if code / 100 != 2 {
            self.relayed_failed(relayed, map_failure(code));
            return;
        }
        let method = relayed.request.method;
        if !matches!(method, Method::Invite | Method::Update) {
            // 200, or 202 to a REFER.
            self.respond_relayed(&relayed, code, None);
            return;
        }
        // A successful re-INVITE or UPDATE refreshes both legs' sessions.
        self.refreshed(to, now);
        let extra = self.answer_refresh(relayed.from, now, &relayed.request);
        let cseq = message::cseq(&response).map_or(1, |(n, _)| n);
        let sdp = parse_sdp(&response.body).filter(|sdp| !sdp.is_secure());
        if method == Method::Invite && relayed.offer.is_none() {
            // An offerless re-INVITE: `to` offered in its 2xx; `from`'s ACK brings the answer.
            let Some(offer) = sdp else {
                self.ack_relayed(to, cseq);
                self.relayed_failed(relayed, 488);
                return;
            };
            self.set_media(to, peer_media(&offer));
            let body = self.sdp.write(relayed.from, &offer);
            let from_cseq = message::cseq(&relayed.request).map_or(1, |(n, _)| n);
            self.held_ack = Some(HeldAck {
                to,
                cseq,
                from_cseq,
                offer,
            });
            self.respond_relayed_with(&relayed, 200, Some(body), extra);
            return;
        }
        if method == Method::Invite {
            self.ack_relayed(to, cseq);
        }
        match (sdp, &relayed.offer) {
            (Some(answer), Some(offer)) => {
                if to == Side::Backend {
                    // What a transfer target is offered follows the far side's latest answer.
                    self.far_sdp = Some(answer.clone());
                }
                self.set_media(to, peer_media(&answer));
                let body = self.sdp.write_answer(relayed.from, &answer, offer);
                self.respond_relayed_with(&relayed, 200, Some(body), extra);
            }
            // A refresh without an offer needs no answer either.
            (None, None) => self.respond_relayed_with(&relayed, 200, None, extra),
            _ => {
                if let Some(previous) = relayed.restore {
                    self.set_media(relayed.from, previous);
                }
                self.respond_relayed(&relayed, 488, None);
            }
        }
    }

    /// ACKs the 2xx (CSeq `cseq`) of a re-INVITE we sent `to`.
    pub(crate) fn ack_relayed(&mut self, to: Side, cseq: u32) {
        let mut rng = SmallRng::from_rng(&mut self.rng);
        if let Some(leg) = self.leg_mut(to) {
            let ack = leg.dialog.ack(&mut rng, cseq);
            leg.ack = Some(ack.clone());
            let hop = leg.hop();
            self.outputs.push_back(Output::Stateless {
                to: hop,
                message: ack,
            });
        }
    }

    /// A relayed request failed with `code` (as the requester gets it): the media it re-pointed
    /// is restored.
    pub(crate) fn relayed_failed(&mut self, relayed: Relayed, code: u16) {
        if relayed.orphan {
            return;
        }
        if let Some(previous) = relayed.restore {
            self.set_media(relayed.from, previous);
        }
        self.respond_relayed(&relayed, code, None);
    }

    pub(crate) fn respond_relayed(&mut self, relayed: &Relayed, code: u16, sdp: Option<String>) {
        self.respond_relayed_with(relayed, code, sdp, Vec::new());
    }

    pub(crate) fn respond_relayed_with(
        &mut self,
        relayed: &Relayed,
        code: u16,
        sdp: Option<String>,
        extra: Vec<Header>,
    ) {
        if let Some(leg) = self.leg(relayed.from) {
            let mut reply = leg.dialog.response(&relayed.request, code, sdp);
            reply.headers.extend(extra);
            self.outputs.push_back(Output::Respond {
                key: relayed.key.clone(),
                response: reply,
            });
        }
    }

    /// An ACK for a 2xx of ours: a held ACK of the other side goes out with the answer it
    /// carries (late offer).
    pub(crate) fn on_ack(&mut self, now: Instant, request: &rsip::Request) {
        let call_id = message::call_id(request).unwrap_or_default();
        let Some(side) = self.side_of(call_id) else {
            return;
        };
        let cseq = message::cseq(request).map(|(n, _)| n);
        let held = self
            .held_ack
            .as_ref()
            .is_some_and(|h| h.to == side.other() && Some(h.from_cseq) == cseq);
        if !held {
            return;
        }
        let Some(held) = self.held_ack.take() else {
            return;
        };
        let answer = parse_sdp(&request.body).filter(|a| a.port != 0 && !a.is_secure());
        if let Some(answer) = &answer {
            self.set_media(side, peer_media(answer));
        }
        let body = answer
            .as_ref()
            .map(|answer| self.sdp.write_answer(held.to, answer, &held.offer));
        let mut rng = SmallRng::from_rng(&mut self.rng);
        if let Some(leg) = self.leg_mut(held.to) {
            let mut ack = leg.dialog.ack(&mut rng, held.cseq);
            if let Some(body) = body {
                message::set_body(&mut ack, body.into_bytes(), Some("application/sdp"));
            }
            leg.ack = Some(ack.clone());
            let hop = leg.hop();
            self.outputs.push_back(Output::Stateless {
                to: hop,
                message: ack,
            });
        }
        if answer.is_none() {
            // An offer left unanswered fails the session (RFC 3264 5).
            self.end(now, EndCause::BadSdp, None, None, None);
            return;
        }
        if side == Side::Caller && self.caller_offer.is_none() {
            // The first exchange of a late-offer call: media flows from now on.
            self.outputs.push_back(Output::Media(MediaCommand::Arm));
        }
    }
}
