//! Requests that belong to no live call: new INVITEs (trust, admission, then a call task),
//! OPTIONS, and the RFC 3261 answers for everything else (481, 405, 501, and the refusals of
//! `voxgate_sip::validate`).
//!
//! Trust comes first ([`crate::trust`]): a request out of any dialog from no Backend must belong
//! to a trunk (by source, or an INVITE by digest credentials: 401 until it has them, 403 when
//! they are wrong) before a slot is reserved or a Backend picked; others get 403 and count in
//! `voxgate_sip_refused_total`. (With `sip.unknown_source = "drop"` the edge guard already
//! dropped those it could tell by source alone.)
//!
//! A new INVITE's Call-ID is routed to its session before the session's task runs, and events of
//! that Call-ID already queued here behind the INVITE (a CANCEL sent right after it) are
//! forwarded to the session too: a CANCEL at any moment finds its call.

use std::net::SocketAddr;
use std::sync::Arc;

use rsip::Header;
use tokio::sync::mpsc;
use voxgate_endpoint::NewDialogs;
use voxgate_session::IdentityPolicy;
use voxgate_sip::message::{response_for, to_tag};
use voxgate_sip::{Event, TransactionKey, Transport};

use crate::call;
use crate::driver::Destination;
use crate::gateway::Gateway;
use crate::metrics;
use crate::records::SessionKind;
use crate::trust::{self, Decision};

/// Methods the gateway implements, for `Allow`: those of a session.
pub const ALLOW: &str = voxgate_session::ALLOW;

/// Methods RFC 3261 and its extensions define that the gateway does not implement: 405.
const KNOWN_NOT_ALLOWED: &[rsip::Method] = &[
    rsip::Method::Register,
    rsip::Method::Subscribe,
    rsip::Method::Notify,
    rsip::Method::Publish,
    rsip::Method::Message,
    rsip::Method::Refer,
];

/// Handles events the endpoint could not route to a call, until the endpoint stops.
pub async fn run(gateway: Arc<Gateway>, mut incoming: mpsc::Receiver<Event>) {
    let mut claimed = NewDialogs::new();
    while let Some(event) = incoming.recv().await {
        let Some(event) = claimed.forward(&gateway.endpoint, event) else {
            continue;
        };
        if let Event::Request {
            key,
            source,
            transport,
            request,
        } = event
        {
            on_request(&gateway, &mut claimed, key, source, transport, request);
        }
        // ACKs for answers of ended calls and stray responses need nothing.
    }
}

fn on_request(
    gateway: &Arc<Gateway>,
    claimed: &mut NewDialogs,
    key: TransactionKey,
    source: SocketAddr,
    transport: Transport,
    request: rsip::Request,
) {
    let reply = |code: u16, extra: Vec<Header>| {
        let mut response = response_for(&request, code, None);
        response
            .headers
            .push(Header::Server(gateway.user_agent.into()));
        for header in extra {
            response.headers.push(header);
        }
        gateway.endpoint.respond(key.clone(), response);
    };
    let retry_after = || vec![gateway.retry_after_header()];
    let allow = || vec![Header::Allow(ALLOW.into())];
    let method = request.method;
    // Trust first: a request that could start something (out of any dialog, not ACK or
    // CANCEL) must come from a Backend or belong to a trunk before it costs anything more.
    let opens =
        to_tag(&request).is_none() && !matches!(method, rsip::Method::Ack | rsip::Method::Cancel);
    let mut trunk = None;
    if opens && !gateway.is_backend(source) {
        if method == rsip::Method::Invite {
            let now = tokio::time::Instant::now().into_std();
            let salt = rand::Rng::random(&mut gateway.call_rng());
            match gateway.trust.invite(now, salt, source, &request) {
                Decision::Admit(admitted) => trunk = Some(admitted),
                Decision::Challenge(values) => {
                    metrics::sip_challenge();
                    reply(401, trust::challenge_headers(values));
                    return;
                }
                Decision::Refuse(reason) => {
                    metrics::sip_refused(reason);
                    reply(403, Vec::new());
                    return;
                }
            }
        } else if gateway.trust.by_source(source.ip()).is_none() {
            metrics::sip_refused("unknown_source");
            reply(403, Vec::new());
            return;
        }
    }
    // RFC 3261 8.2 checks (483, 416, 420, 415, 406); ACK is never refused.
    if let Err(refusal) = voxgate_sip::validate::request(&request) {
        reply(refusal.code(), refusal.headers());
        return;
    }
    match method {
        rsip::Method::Invite if to_tag(&request).is_some() => reply(481, Vec::new()),
        rsip::Method::Invite => {
            let outbound = gateway.is_backend(source);
            let refused = |reason: &'static str, code: u16| {
                let (kind, region, trunk) = if outbound {
                    (SessionKind::SipOutbound, gateway.region().clone(), None)
                } else {
                    let trunk = gateway.trunks.inbound(source.ip());
                    let region =
                        trunk.map_or_else(|| gateway.region().clone(), |t| t.region.clone());
                    (SessionKind::Sip, region, trunk.map(|t| t.name.clone()))
                };
                gateway
                    .records
                    .refused(kind, &region, reason, code, |draft| {
                        draft.caller_invite(&request);
                        draft.trunk(trunk);
                    });
            };
            if let Some(reason) = gateway.refusal() {
                metrics::session_rejected(reason);
                refused(reason, 503);
                reply(503, retry_after());
                return;
            }
            let Some(slot) = gateway.slots.try_reserve() else {
                metrics::session_rejected("capacity");
                refused("capacity", 503);
                reply(503, retry_after());
                return;
            };
            let arrived = tokio::time::Instant::now();
            let (region, destination, kind, trunk_name, identity) = if outbound {
                let trunk_name =
                    voxgate_sip::dialog::header_value(&request.headers, "X-Voxgate-Trunk");
                let host = request.uri.host_with_port.host.to_string();
                match gateway.trunks.outbound(trunk_name.as_deref(), &host) {
                    Some(trunk) => {
                        let destination = Destination::Trunk {
                            address: trunk.outbound,
                            host,
                        };
                        // The carrier learns the Backend's identity headers, not ours.
                        let identity = IdentityPolicy {
                            identity: true,
                            trunk: None,
                            pass_headers: trunk.pass_headers.clone(),
                        };
                        let name = Some(trunk.name.clone());
                        (
                            trunk.region.clone(),
                            destination,
                            SessionKind::SipOutbound,
                            name,
                            identity,
                        )
                    }
                    None => {
                        metrics::session_rejected("no_route");
                        refused("no_route", 404);
                        reply(404, Vec::new());
                        return;
                    }
                }
            } else {
                let region = trunk.map_or_else(|| gateway.region().clone(), |t| t.region.clone());
                let destination = Destination::Backend {
                    region: region.clone(),
                    first: None,
                };
                let identity = IdentityPolicy {
                    identity: true,
                    trunk: trunk.map(|t| t.name.clone()),
                    pass_headers: trunk.map(|t| t.pass_headers.clone()).unwrap_or_default(),
                };
                (
                    region,
                    destination,
                    SessionKind::Sip,
                    trunk.map(|t| t.name.clone()),
                    identity,
                )
            };
            let call_id = voxgate_sip::message::call_id(&request).unwrap_or_default();
            let claim = claimed.claim(&gateway.endpoint, call_id);
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let caller = call::Caller {
                    key,
                    source,
                    transport,
                    invite: request,
                    events: (claim.sender, claim.events),
                    route: claim.route,
                    arrived,
                    kind,
                    trunk: trunk_name,
                    identity,
                };
                call::run(gateway, slot, caller, region, destination).await;
            });
        }
        rsip::Method::Options => {
            let full = gateway.slots.capacity().is_full();
            if full || !gateway.accepting() {
                reply(503, retry_after());
            } else {
                let mut extra = allow();
                extra.push(Header::Accept("application/sdp".into()));
                reply(200, extra);
            }
        }
        rsip::Method::Ack => {}
        rsip::Method::Bye
        | rsip::Method::Cancel
        | rsip::Method::Info
        | rsip::Method::Update
        | rsip::Method::PRack => {
            reply(481, Vec::new());
        }
        m if KNOWN_NOT_ALLOWED.contains(&m) => reply(405, allow()),
        _ => reply(501, Vec::new()),
    }
}
