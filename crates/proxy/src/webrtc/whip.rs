//! The public WHIP listener (RFC 9725): `POST /whip` creates a WebRTC session, `DELETE
//! /whip/{id}` ends it, `PATCH` takes trickle candidates, `OPTIONS` answers CORS preflights.
//!
//! A POST is admitted exactly like a SIP call: the node's refusal (draining, maintenance), then
//! one slot of the node cap, then a Backend with room in the session's region; any of them
//! missing is `503` with `Retry-After`. The session's region is the token's (if it pins one),
//! else a `region` query parameter, else this node's. Resource ids are 128 bits from the OS's
//! random source; each resource has an ETag that a PATCH's `If-Match` is checked against.
//!
//! Deviation from RFC 9725: WHIP is an ingest protocol and its clients send `recvonly`-less
//! offers that only send. A call is two-way, so voxgate answers `sendrecv` and sends the
//! Backend's audio back on the same stream.
//!
//! Errors are JSON `{"code", "message"}` with the codes of [`voxgate_webrtc::WhipError`] and
//! `unauthorized`, `capacity`, `not_accepting`, `no_backend`, `invalid_region`, `invalid_to`,
//! `not_found`. Every response carries the CORS headers, so a page on another origin can read
//! the answer, the `Location` and the errors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dashmap::DashMap;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_core::RegionId;
use voxgate_sip::dialog::is_sip_user;
use voxgate_webrtc::whip::{SDP_CONTENT_TYPE, TRICKLE_ICE_CONTENT_TYPE};
use voxgate_webrtc::{ETag, PeerConfig, ResourceId, WebRtcPeer, classify_patch, classify_post};

use super::hub::PeerHub;
use super::session::{self, Setup};
use crate::admin::same_key;
use crate::gateway::Gateway;
use crate::metrics;
use crate::records::SessionKind;

/// Path of the WHIP endpoint.
pub const ENDPOINT: &str = "/whip";

/// The WHIP listener's state.
#[derive(Clone)]
pub struct Whip {
    gateway: Arc<Gateway>,
    hub: PeerHub,
    /// The ICE candidate every answer carries: `media.public_ip` and the hub's port.
    candidate: SocketAddr,
    resources: Arc<DashMap<String, Resource>>,
}

struct Resource {
    etag: ETag,
    remote_ufrag: String,
    delete: Option<oneshot::Sender<()>>,
}

impl Whip {
    /// The state of a WHIP listener whose sessions use `hub`.
    pub fn new(gateway: Arc<Gateway>, hub: PeerHub) -> Self {
        let candidate = SocketAddr::new(gateway.config.media.public_ip, hub.local_addr().port());
        Self {
            gateway,
            hub,
            candidate,
            resources: Arc::new(DashMap::new()),
        }
    }

    /// The WHIP routes.
    pub fn router(self) -> Router {
        let origin = HeaderValue::from_str(&self.gateway.config.webrtc.allow_origin)
            .unwrap_or(HeaderValue::from_static("*"));
        Router::new()
            .route(ENDPOINT, post(create).options(preflight))
            .route(
                "/whip/{id}",
                axum::routing::delete(delete)
                    .patch(patch)
                    .options(preflight),
            )
            .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such resource") })
            .layer(axum::middleware::map_response(
                move |mut response: Response| {
                    let origin = origin.clone();
                    async move {
                        cors(response.headers_mut(), origin);
                        response
                    }
                },
            ))
            .with_state(self)
    }

    /// The token's region if it presented a valid one; `Err` when tokens are configured and
    /// this request has none of them.
    fn authorize(&self, headers: &HeaderMap) -> Result<Option<RegionId>, Unauthorized> {
        let tokens = &self.gateway.config.webrtc.tokens;
        if tokens.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        presented
            .and_then(|p| tokens.iter().find(|t| same_key(&t.token, p)))
            .map(|token| token.region.clone())
            .ok_or(Unauthorized)
    }
}

/// A request without a valid Bearer token.
#[derive(Debug)]
struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid Bearer token is required",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

impl std::fmt::Debug for Whip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whip")
            .field("candidate", &self.candidate)
            .field("resources", &self.resources.len())
            .finish()
    }
}

fn cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Accept-Patch, Retry-After, Link"),
    );
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "code": code, "message": message.into() });
    (status, axum::Json(body)).into_response()
}

fn unavailable(gateway: &Gateway, code: &str, message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    let seconds = gateway.retry_after().as_secs().max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// `OPTIONS`: what the endpoint takes, and the CORS preflight answer.
async fn preflight() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static(SDP_CONTENT_TYPE),
    );
    headers.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(TRICKLE_ICE_CONTENT_TYPE),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    (StatusCode::NO_CONTENT, headers).into_response()
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    region: Option<String>,
    to: Option<String>,
}

/// `POST /whip`: admits the session, answers the offer, starts the bridge to a Backend.
async fn create(
    State(whip): State<Whip>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let token_region = match whip.authorize(&headers) {
        Ok(region) => region,
        Err(unauthorized) => return unauthorized.into_response(),
    };
    let gateway = &whip.gateway;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let offer = match classify_post(content_type, &body) {
        Ok(offer) => offer,
        Err(err) => {
            metrics::session_rejected("bad_offer");
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, err.code(), err.to_string());
        }
    };
    let region = match (token_region, &query.region) {
        (Some(region), _) => region,
        (None, Some(text)) => match RegionId::new(text) {
            Ok(region) => region,
            Err(err) => return error(StatusCode::BAD_REQUEST, "invalid_region", err.to_string()),
        },
        (None, None) => gateway.region().clone(),
    };
    let to_user = query.to.unwrap_or_else(|| "webrtc".to_owned());
    if !is_sip_user(&to_user) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_to",
            "`to` must be a SIP user part of 1-64 characters",
        );
    }
    let refused = |reason: &'static str| {
        gateway
            .records
            .refused(SessionKind::Webrtc, &region, reason, 503, |draft| {
                draft.caller(None, Some("webrtc".into()), Some(to_user.clone()));
            });
    };
    if let Some(reason) = gateway.refusal() {
        metrics::session_rejected(reason);
        refused(reason);
        return unavailable(gateway, "not_accepting", "this node takes no new sessions");
    }
    let Some(slot) = gateway.slots.try_reserve() else {
        metrics::session_rejected("capacity");
        refused("capacity");
        return unavailable(gateway, "capacity", "this node is at its session cap");
    };
    // A Backend is leased only once the client has connected (the session engine asks for
    // one then); here its room is only checked, so that a POST no Backend could take is refused
    // at once. The probe's lease is dropped at the end of the statement.
    if gateway
        .picker
        .pick(started.into_std(), &region, &[])
        .is_err()
    {
        metrics::session_rejected("no_backend");
        refused("no_backend");
        return unavailable(gateway, "no_backend", "no Backend has room in this region");
    }
    let mut rng = StdRng::from_os_rng();
    let config = PeerConfig {
        setup_timeout: gateway.config.webrtc.setup_timeout,
        consent_timeout: gateway.config.webrtc.consent_timeout,
    };
    // Answering makes a certificate and key pair: CPU work kept off the async workers.
    let candidate = whip.candidate;
    let answered = tokio::task::spawn_blocking(move || {
        let peer = WebRtcPeer::from_offer(&offer, candidate, config, &mut rng, started.into_std());
        (peer, rng)
    })
    .await;
    let Ok((answered, mut rng)) = answered else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "answering the offer failed",
        );
    };
    let peer = match answered {
        Ok(peer) => peer,
        Err(err) => {
            metrics::session_rejected("bad_offer");
            let status =
                StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            return error(status, err.code(), err.to_string());
        }
    };
    let resource = ResourceId::random(&mut rng);
    let etag = ETag::random(&mut rng);
    let answer = peer.answer_sdp().to_owned();
    let id = gateway.new_session_id();
    let (events_tx, events) = mpsc::channel(super::hub::PEER_QUEUE);
    let (delete_tx, delete) = oneshot::channel();
    let setup = Setup {
        id,
        resource: resource.as_str().to_owned(),
        region,
        to_user,
        opus_pt: peer.opus_payload_type(),
        event_pt: peer.telephone_event_payload_type(),
        slot,
        events,
        delete,
        started,
    };
    whip.resources.insert(
        resource.as_str().to_owned(),
        Resource {
            etag: etag.clone(),
            remote_ufrag: peer.remote_ufrag().to_owned(),
            delete: Some(delete_tx),
        },
    );
    whip.hub.add(id.0, peer, events_tx);
    let resources = whip.resources.clone();
    let key = resource.as_str().to_owned();
    let (gateway_for_task, hub) = (gateway.clone(), whip.hub.clone());
    tokio::spawn(async move {
        session::run(gateway_for_task, hub, setup).await;
        resources.remove(&key);
    });

    let location = format!("{ENDPOINT}/{}", resource.as_str());
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SDP_CONTENT_TYPE),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(etag.as_str()) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(TRICKLE_ICE_CONTENT_TYPE),
    );
    response
}

/// `DELETE /whip/{id}`: ends the session (BYE to the Backend, DTLS close to the client).
async fn delete(State(whip): State<Whip>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(unauthorized) = whip.authorize(&headers) {
        return unauthorized.into_response();
    }
    let Some((_, mut resource)) = whip.resources.remove(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    if let Some(delete) = resource.delete.take() {
        let _ = delete.send(());
    }
    StatusCode::OK.into_response()
}

/// `PATCH /whip/{id}`: trickle candidates are accepted (and not needed: the peer is ICE-lite
/// and learns the client's addresses from its checks); an ICE restart is refused with 422.
async fn patch(
    State(whip): State<Whip>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(unauthorized) = whip.authorize(&headers) {
        return unauthorized.into_response();
    }
    let Some(resource) = whip.resources.get(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    match classify_patch(
        content_type,
        if_match,
        &resource.etag,
        &resource.remote_ufrag,
        &body,
    ) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => {
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            error(status, err.code(), err.to_string())
        }
    }
}
