//! How a session starts from its caller: an INVITE we answer (its dialog, offer, 100rel and
//! session-timer wishes), or a number we dial.

use std::time::{Duration, Instant};

use rsip::Header;
use voxgate_sip::Transport;
use voxgate_sip::dialog::{self, Dialog, uri_user};
use voxgate_sip::message::{self, new_tag};
use voxgate_sip::sdp::{AudioSdp, Codec};

use crate::attempt::Attempt;
use crate::cause::EndCause;
use crate::io::{Dialled, Inbound, Output};
use crate::leg::SipLeg;
use crate::media::{Side, parse_sdp, peer_media};
use crate::reliable::ReliableProvisionals;
use crate::session::{Session, warning};
use crate::timer::{self, Refresher};

impl<L> Session<L> {
    pub(crate) fn start_inbound(&mut self, now: Instant, inbound: Inbound) {
        let Inbound {
            key,
            source,
            transport,
            invite,
        } = inbound;
        let tag = new_tag(&mut self.rng);
        let mut dialog = Dialog::incoming(
            &invite,
            self.config.sip_addr,
            tag,
            "voxgate",
            self.config.user_agent,
        );
        if dialog.next_hop().is_none() {
            dialog.remote_target = format!("sip:{source}");
        }
        let mut leg = SipLeg::new(dialog, source);
        if transport == Transport::Tcp {
            // Requests go back on the caller's connection (RFC 5923 style reuse).
            leg.dialog.transport = "TCP";
            leg.sticky = true;
        }
        let from = dialog::header_value(&invite.headers, "From").unwrap_or_default();
        let from_uri = dialog::name_addr_uri(&from);
        let request_uri = invite.uri.to_string();
        self.caller.from_user = uri_user(&from_uri).unwrap_or("anonymous").to_owned();
        self.caller.to_user = uri_user(&request_uri).unwrap_or("voxgate").to_owned();
        self.caller.request_host = dialog::uri_host(&request_uri)
            .unwrap_or("invalid")
            .to_owned();
        self.caller.max_forwards = message::max_forwards(&invite);
        self.updates[Side::Caller.index()] = timer::allows(&invite.headers, "UPDATE");
        if timer::has_option(&invite.headers, "Require", "100rel") {
            let first = rand::Rng::random_range(&mut self.rng, 1..1u32 << 30);
            self.caller_rel = Some(ReliableProvisionals::new(first));
        }
        let late = invite.body.is_empty();
        let offer = parse_sdp(&invite.body);
        let timer = self.caller_session_timer(&invite.headers);
        self.caller.leg = Some(leg);
        self.caller.invite = Some((key, invite));
        let timer = match timer {
            Ok(timer) => timer,
            Err(too_small) => {
                // RFC 4028 6: the interval asked for is below ours.
                let min_se = Header::Other("Min-SE".into(), too_small.to_string());
                let refusal = (422, vec![min_se]);
                self.end(now, EndCause::Rejected, Some(422), Some(refusal), None);
                return;
            }
        };
        self.caller_timer = timer;
        if late {
            // Late offer (RFC 3264): the far side is asked for the offer, passed through.
            self.late = true;
            self.pick(now);
            return;
        }
        let Some(offer) = offer else {
            let refusal = (
                488,
                vec![warning("no usable SDP offer (audio RTP/AVP expected)")],
            );
            self.end(now, EndCause::BadSdp, Some(488), Some(refusal), None);
            return;
        };
        if offer.is_secure() {
            // SRTP (SDES) is not carried yet: refuse rather than answer it in the clear.
            let refusal = (488, vec![warning("SRTP (RTP/SAVP) is not supported")]);
            self.end(now, EndCause::BadSdp, Some(488), Some(refusal), None);
            return;
        }
        self.caller_mux = offer.rtcp_mux;
        self.set_media(Side::Caller, peer_media(&offer));
        self.offer = Some(offer.clone());
        self.caller_offer = Some(offer);
        self.pick(now);
    }

    /// The session timer an inbound caller gets (RFC 4028): `None` if it does not use them,
    /// `Err(min_se)` if it asked for less than `min_se` seconds.
    pub(crate) fn caller_session_timer(
        &self,
        headers: &rsip::Headers,
    ) -> Result<Option<(Duration, Refresher, bool)>, u64> {
        let supported = timer::has_option(headers, "Supported", "timer");
        let asked = timer::session_expires(headers);
        let min_se = self.config.min_se.as_secs().max(1);
        if asked.is_none() && !supported {
            return Ok(None);
        }
        let (secs, refresher) = match asked {
            Some((secs, _)) if secs < min_se => return Err(min_se),
            Some((secs, refresher)) => (secs, refresher),
            None => (self.config.session_expires.as_secs().max(min_se), None),
        };
        // The caller refreshes only when it says so and can say so; else this node does.
        let refresher = match refresher.as_deref() {
            Some("uac") if supported => Refresher::Peer,
            _ => Refresher::Us,
        };
        Ok(Some((Duration::from_secs(secs), refresher, supported)))
    }

    pub(crate) fn start_dialled(&mut self, now: Instant, dialled: Dialled) {
        let Dialled {
            address,
            from,
            to,
            host,
            ring_timeout,
        } = dialled;
        self.caller.dialled = true;
        let public_ip = self.config.public_ip;
        let mut dialog = Dialog::outgoing(
            &mut self.rng,
            self.config.sip_addr,
            format!("sip:{from}@{public_ip}"),
            format!("sip:{to}@{host}"),
            self.config.user_agent,
        );
        dialog.local_contact = format!("sip:voxgate@{}", self.config.sip_addr);
        let codecs = vec![Codec::pcmu(), Codec::pcma(), Codec::telephone_event(101)];
        let offer = AudioSdp::offer(public_ip, self.config.ports[0], codecs, self.config.id);
        let invite = dialog.invite(&mut self.rng, offer.to_string());
        // The Backend sees the dialled party calling the caller id, as for an inbound call.
        self.caller.from_user = to;
        self.caller.to_user = from;
        self.caller.request_host = host;
        self.caller.dial_ring = ring_timeout;
        self.outputs
            .push_back(Output::Listen(dialog.call_id.clone()));
        self.outputs.push_back(Output::Request {
            to: address,
            request: invite.clone(),
        });
        let leg = SipLeg::new(dialog, address);
        self.caller.dialling = Some(Attempt::new(leg, invite, None, None, now));
    }
}
