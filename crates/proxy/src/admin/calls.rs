//! `/v1/calls`: originate a call to a number through a trunk and bridge it to a Backend, queued
//! while no slot is free (see [`crate::outbound`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use voxgate_cluster::Trunk;
use voxgate_sip::dialog::is_sip_user;

use super::{Admin, ApiError, ApiResult, node_id, ok, region_id};
use crate::metrics;
use crate::outbound::{CallRequest, CancelError, Cancelled, SubmitError};

/// The body of `POST /v1/calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCall {
    /// The number to dial (SIP user part, e.g. `+15551234567`).
    to: String,
    /// Caller id; default `outbound.caller_id`.
    from: Option<String>,
    /// Trunk name; default the first trunk with an outbound address in the region (else any).
    trunk: Option<String>,
    /// Region whose Backends take the call; default this node's.
    region: Option<String>,
    /// A Backend id instead of the least-loaded one.
    backend: Option<String>,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn with_retry_after(error: ApiError, seconds: u64) -> axum::response::Response {
    let mut response = error.into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Checks a request against config and the Backends this node knows.
fn validate(admin: &Admin, body: NewCall) -> Result<CallRequest, ApiError> {
    let gateway = &admin.gateway;
    if !is_sip_user(&body.to) {
        return Err(invalid(
            "INVALID_NUMBER",
            "`to` must be a SIP user part of 1-64 characters: digits, letters, +-_.!~*'()&=$,/",
        ));
    }
    let from = body
        .from
        .unwrap_or_else(|| gateway.config.outbound.caller_id.clone());
    if !is_sip_user(&from) {
        return Err(invalid(
            "INVALID_CALLER_ID",
            "`from` must be a SIP user part of 1-64 characters",
        ));
    }
    let region = match &body.region {
        Some(text) => region_id(text)?,
        None => gateway.region().clone(),
    };
    let backends = gateway.picker.backends();
    let backend = match &body.backend {
        Some(text) => {
            let id = node_id(text)?;
            if !backends.iter().any(|b| b.id == id) {
                return Err(invalid(
                    "UNKNOWN_BACKEND",
                    format!("no backend {id} on this node"),
                ));
            }
            Some(id)
        }
        None => {
            let served =
                std::iter::once(&region).chain(gateway.picker.spillover().next_regions(&region));
            let served: Vec<_> = served.collect();
            if !backends.iter().any(|b| served.contains(&&b.region)) {
                return Err(invalid(
                    "NO_BACKEND_IN_REGION",
                    format!("no backend serves {region} or its spillover regions"),
                ));
            }
            None
        }
    };
    let outbound: Vec<&Trunk> = gateway
        .trunks
        .trunks()
        .iter()
        .filter(|t| t.outbound.is_some())
        .collect();
    let trunk = match &body.trunk {
        Some(name) => outbound.iter().find(|t| &t.name == name).ok_or_else(|| {
            invalid(
                "UNKNOWN_TRUNK",
                format!("no trunk {name:?} with an outbound address"),
            )
        })?,
        None => outbound
            .iter()
            .find(|t| t.region == region)
            .or_else(|| outbound.first())
            .ok_or_else(|| {
                invalid(
                    "NO_TRUNK",
                    "no trunk with an outbound address is configured ([[trunks]] outbound)",
                )
            })?,
    };
    Ok(CallRequest {
        to: body.to,
        from,
        trunk: (*trunk).clone(),
        region,
        backend,
    })
}

pub(super) async fn create(
    State(admin): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<NewCall>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let Json(body) = body?;
    let request = validate(&admin, body)?;
    let gateway = &admin.gateway;
    let retry_after = gateway.retry_after().as_secs().max(1);
    if let Some(reason) = gateway.refusal() {
        metrics::outbound_refused("not_accepting");
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_ACCEPTING",
            format!("this node takes no new sessions ({reason})"),
        );
        return Ok(with_retry_after(error, retry_after));
    }
    let now = Instant::now();
    let mut rng = gateway.call_rng();
    match gateway.outbound.submit(request, now, &mut rng) {
        Ok((id, _)) => {
            let record = gateway
                .outbound
                .call_json(&id, now)
                .unwrap_or(json!({ "id": id }));
            let mut response = (StatusCode::ACCEPTED, Json(record)).into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/calls/{id}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        Err(SubmitError::QueueFull) => {
            metrics::outbound_refused("queue_full");
            let error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "QUEUE_FULL",
                format!(
                    "{} calls are already waiting for a slot (outbound.queue_size)",
                    gateway.outbound.pending()
                ),
            );
            Ok(with_retry_after(error, retry_after))
        }
    }
}

pub(super) async fn list(State(admin): State<Admin>, headers: HeaderMap) -> ApiResult {
    admin.authorize(&headers)?;
    let now = Instant::now();
    ok(json!({
        "queue": admin.gateway.outbound.stats_json(now),
        "calls": admin.gateway.outbound.calls_json(now),
    }))
}

fn call_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CALL_NOT_FOUND",
        "no originate request with that id (ended ones are kept for a while)",
    )
}

pub(super) async fn get(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let record = admin.gateway.outbound.call_json(&id, Instant::now());
    ok(record.ok_or_else(call_not_found)?)
}

/// Cancels a request: a pending one leaves the queue (200); a call being dialled is CANCELled
/// and one that is up is hung up with BYE (202, the outcome follows on `GET`).
pub(super) async fn cancel(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let now = Instant::now();
    let outbound = &admin.gateway.outbound;
    let record = || outbound.call_json(&id, now).unwrap_or(json!({ "id": id }));
    match outbound.cancel(&id, now) {
        Ok(Cancelled::Dequeued) => ok(record()),
        Ok(Cancelled::HangingUp) => Ok((StatusCode::ACCEPTED, Json(record())).into_response()),
        Err(CancelError::NotFound) => Err(call_not_found()),
        Err(CancelError::Ended) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CALL_ENDED",
            "the call has ended already",
        )),
    }
}
