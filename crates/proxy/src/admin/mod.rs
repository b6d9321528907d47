//! The admin API: JSON under `/v1` on the private HTTP listener.
//!
//! Every endpoint but one takes `Authorization: Bearer <cluster.admin_key>`; a node's own status
//! report (`PUT /v1/nodes/{id}/status`) takes that node's API key instead. No key: 401 with
//! `WWW-Authenticate: Bearer`; a wrong key: 403. With `cluster.admin_key` empty the API is off
//! and answers 403 `ADMIN_API_DISABLED`. Errors are `{"code": ..., "message": ...}` with stable
//! codes: the registry's (`REGION_EXISTS`, `NODES_ONLINE`, ...), and `UNAUTHORIZED`,
//! `FORBIDDEN`, `INVALID_JSON`, `REASON_REQUIRED`, `NOT_THIS_NODE`, `REGISTRY_UNAVAILABLE`, and
//! for `/v1/calls` `INVALID_NUMBER`, `INVALID_CALLER_ID`, `UNKNOWN_TRUNK`, `NO_TRUNK`,
//! `UNKNOWN_BACKEND`, `NO_BACKEND_IN_REGION`, `QUEUE_FULL`, `NOT_ACCEPTING`, `CALL_NOT_FOUND`,
//! `CALL_ENDED`, and for `/v1/sessions/{id}` `SESSION_NOT_FOUND` (404), `SESSION_ENDED` (409: an
//! id this process ran; ids come from one counter, so no list of ended ones is kept),
//! `INVALID_JSON` (400 not JSON, 422 wrong fields), `INVALID_TARGET`, `INVALID_DIGITS` (422),
//! `NOT_CONNECTED`, `TRANSFER_IN_PROGRESS`, `TRANSFER_NOT_ALLOWED`, `DTMF_UNAVAILABLE` (409) and
//! `SESSION_BUSY` (503: the session task did not answer within 3 s).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/regions`, `POST /v1/regions` `{"id"}` | list, create (disabled, in maintenance) |
//! | `GET`, `DELETE /v1/regions/{id}` | one region; delete (refused while enabled or nodes report) |
//! | `POST /v1/regions/{id}/enable`, `/disable` | lifecycle, body `{"public_reason", "private_reason"}` |
//! | `POST /v1/regions/{id}/maintenance/on`, `/off` | the same body |
//! | `GET /v1/regions/{id}/capacity` | capacity per kind with the advisor's numbers and reason |
//! | `GET /v1/nodes[?region=]`, `POST /v1/nodes` | list, add (disabled, in maintenance) |
//! | `GET`, `PATCH`, `DELETE /v1/nodes/{id}` | one node with its status; update; delete (safe) |
//! | `POST /v1/nodes/{id}/enable`, `/disable`, `/maintenance/on`, `/maintenance/off` | lifecycle |
//! | `GET`, `PUT /v1/nodes/{id}/status` | live status; a node's heartbeat (node key) |
//! | `POST /v1/nodes/{id}/drain` | drain this node (as SIGTERM does) |
//! | `GET /v1/capacity` | sessions, nodes online/registered and capacity per region and kind |
//! | `GET /v1/sessions[?call_id= \| ?port=]` | this node's live sessions, or the one with that dialog or relay port |
//! | `GET /v1/sessions/{id}` | one session (SIP in or out, originated, WebRTC): kind, trunk, region, Backend, state (`calling`, `dialing`, `ringing`, `bridging`, `connected`, `transferring`, `ending`), per leg its Call-ID, codec and RTP counters |
//! | `DELETE /v1/sessions/{id}` | hang up: BYE both legs (CANCEL one still ringing); 202 |
//! | `POST /v1/sessions/{id}/transfer` `{"to"}` | blind transfer of the caller to a `sip:`/`tel:` URI, bridged by this node as a Backend's REFER in `bridge` mode (whatever the trunk's mode), without NOTIFYs; 202 |
//! | `POST /v1/sessions/{id}/dtmf` `{"digits"}` | RFC 4733 events toward the caller (SIP sessions, at the caller leg's telephone-event type and clock, own SSRC), or one SIP INFO per digit (`application/dtmf-relay`) where the caller's trunk has `dtmf = "info"`; 202 once queued |
//! | `GET /v1/audit[?limit=]` | the audit trail, newest last |
//! | `GET /v1/bans` | SIP sources banned for flooding (`sip.flood`), with when the ban began and ends |
//! | `POST /v1/calls` `{"to", "from"?, "trunk"?, "region"?, "backend"?}` | originate: 202 and the request (pending), 429 `QUEUE_FULL` + Retry-After when the queue is full |
//! | `GET /v1/calls`, `GET`, `DELETE /v1/calls/{id}` | the queue and recent requests; one; cancel (pending: 200) or hang up (dialing or up: 202) |
//!
//! Every registry change (regions, nodes, their lifecycle) is recorded in the audit trail with the
//! actor, the action, the target and both reasons. A drain is this process's runtime action, not a
//! registry change: it is logged (target `voxgate::audit`) but not in the trail.

mod calls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use voxgate_cluster::model::{NewNode, Node, NodeKind, NodeStatus, Reasons, Region, RuntimeState};
use voxgate_cluster::state::{Change, ClusterError, ErrorCode};
use voxgate_core::{NodeId, RegionId, SessionId};

use crate::control::{DtmfRefusal, SessionCommand};
use crate::gateway::{Gateway, SessionInfo};
use crate::registry::{RegistryError, Snapshot, now_ms};
use crate::shutdown::Shutdown;

/// What the admin handlers share.
#[derive(Clone)]
struct Admin {
    gateway: Arc<Gateway>,
    shutdown: Shutdown,
}

/// The `/v1` routes, to merge into the private router.
pub fn router(gateway: Arc<Gateway>, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/v1/regions", get(list_regions).post(create_region))
        .route("/v1/regions/{id}", get(get_region).delete(delete_region))
        // enable, disable (static routes such as /capacity take precedence over {action})
        .route("/v1/regions/{id}/{action}", post(lifecycle_route))
        .route(
            "/v1/regions/{id}/maintenance/{switch}",
            post(lifecycle_route),
        )
        .route("/v1/regions/{id}/capacity", get(region_capacity))
        .route("/v1/nodes", get(list_nodes).post(add_node))
        .route(
            "/v1/nodes/{id}",
            get(get_node).patch(update_node).delete(delete_node),
        )
        .route("/v1/nodes/{id}/{action}", post(lifecycle_route))
        .route("/v1/nodes/{id}/maintenance/{switch}", post(lifecycle_route))
        .route("/v1/nodes/{id}/status", put(put_status).get(get_status))
        .route("/v1/nodes/{id}/drain", post(drain))
        .route("/v1/capacity", get(capacity))
        .route("/v1/sessions", get(sessions))
        .route(
            "/v1/sessions/{id}",
            get(get_session).delete(hang_up_session),
        )
        .route("/v1/sessions/{id}/transfer", post(transfer_session))
        .route("/v1/sessions/{id}/dtmf", post(dtmf_session))
        .route("/v1/audit", get(audit))
        .route("/v1/bans", get(bans))
        .route("/v1/calls", get(calls::list).post(calls::create))
        .route("/v1/calls/{id}", get(calls::get).delete(calls::cancel))
        .with_state(Admin { gateway, shutdown })
}

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"code": self.code, "message": self.message}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        let status =
            StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(status, err.code.as_str(), err.message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Rejected(err) => err.into(),
            other => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "REGISTRY_UNAVAILABLE",
                other.to_string(),
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "UNSUPPORTED_MEDIA_TYPE"
        } else {
            "INVALID_JSON"
        };
        Self::new(status, code, rejection.body_text())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The Bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Equal without revealing where they differ (the admin key is compared on every request).
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Admin {
    /// Accepts only the admin key.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let key = &self.gateway.config.cluster.admin_key;
        if key.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "ADMIN_API_DISABLED",
                "the admin API is off: set cluster.admin_key (VOXGATE_CLUSTER__ADMIN_KEY)",
            ));
        }
        match bearer(headers) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "Authorization: Bearer <admin key> required",
            )),
            Some(given) if same_key(given, key) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the key is not the admin key",
            )),
        }
    }

    async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        Ok(self.gateway.cluster.registry.snapshot().await?)
    }

    async fn apply(&self, change: Change, actor: &str) -> Result<(), ApiError> {
        self.gateway.cluster.registry.apply(change, actor).await?;
        // Take effect on this node at once rather than at the next sync.
        if let Err(err) = crate::fleet::sync(&self.gateway).await {
            tracing::warn!(%err, "cluster sync after an admin change failed");
        }
        Ok(())
    }
}

fn region_id(text: &str) -> Result<RegionId, ApiError> {
    RegionId::new(text).map_err(|err| ClusterError::invalid_region_id(&err).into())
}

fn node_id(text: &str) -> Result<NodeId, ApiError> {
    NodeId::new(text).map_err(|err| ClusterError::invalid_node_id(&err).into())
}

fn not_found(code: ErrorCode, what: &str) -> ApiError {
    ClusterError::new(code, format!("{what} does not exist")).into()
}

/// The body of every lifecycle change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonsBody {
    #[serde(default)]
    public_reason: String,
    #[serde(default)]
    private_reason: String,
}

/// Reasons from a JSON body (an empty body has none); the public one is required.
fn reasons(body: &Bytes) -> Result<Reasons, ApiError> {
    let body: ReasonsBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReasonsBody::default()
    } else {
        serde_json::from_slice(body).map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", err.to_string())
        })?
    };
    if body.public_reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "REASON_REQUIRED",
            "a lifecycle change needs a public_reason (shown to end users); private_reason is for operators",
        ));
    }
    Ok(Reasons {
        public: body.public_reason,
        private: body.private_reason,
    })
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn created(value: Value) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn region_json(region: &Region, snapshot: &Snapshot) -> Value {
    let nodes: Vec<&Node> = snapshot.state.nodes_in(&region.id).collect();
    let online = nodes
        .iter()
        .filter(|n| snapshot.statuses.is_online(&n.id, snapshot.now_ms))
        .count();
    json!({
        "id": region.id.as_str(),
        "state": region.lifecycle.state,
        "maintenance": region.lifecycle.maintenance,
        "public_reason": region.lifecycle.public_reason,
        "private_reason": region.lifecycle.private_reason,
        "changed_at_ms": region.lifecycle.changed_at_ms,
        "changed_by": region.lifecycle.changed_by,
        "created_at_ms": region.created_at_ms,
        "nodes_registered": nodes.len(),
        "nodes_online": online,
    })
}

fn node_json(node: &Node, snapshot: &Snapshot) -> Value {
    let status = snapshot.statuses.fresh(&node.id, snapshot.now_ms);
    json!({
        "id": node.id.as_str(),
        "region": node.region.as_str(),
        "kind": node.kind,
        "endpoint": node.endpoint,
        "sip_port": node.sip_port,
        "max_sessions": node.max_sessions,
        "state": node.lifecycle.state,
        "maintenance": node.lifecycle.maintenance,
        "public_reason": node.lifecycle.public_reason,
        "private_reason": node.lifecycle.private_reason,
        "changed_at_ms": node.lifecycle.changed_at_ms,
        "changed_by": node.lifecycle.changed_by,
        "created_at_ms": node.created_at_ms,
        "online": status.is_some(),
        "status": status,
        "sessions_placed_by_proxies": snapshot.statuses.placed_on(&node.id, snapshot.now_ms),
    })
}

async fn list_regions(State(admin): State<Admin>, headers: HeaderMap) -> ApiResult {
    admin.authorize(&headers)?;
    let snapshot = admin.snapshot().await?;
    let regions: Vec<Value> = snapshot
        .state
        .regions()
        .map(|r| region_json(r, &snapshot))
        .collect();
    ok(json!({ "regions": regions }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRegion {
    id: String,
}

async fn create_region(
    State(admin): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<CreateRegion>, JsonRejection>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let Json(body) = body?;
    let id = region_id(&body.id)?;
    admin
        .apply(Change::CreateRegion { id: id.clone() }, "admin")
        .await?;
    let snapshot = admin.snapshot().await?;
    let region = snapshot
        .state
        .region(&id)
        .ok_or_else(|| not_found(ErrorCode::RegionNotFound, "the region"))?;
    created(region_json(region, &snapshot))
}

async fn get_region(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = region_id(&id)?;
    let snapshot = admin.snapshot().await?;
    let region = snapshot
        .state
        .region(&id)
        .ok_or_else(|| not_found(ErrorCode::RegionNotFound, &format!("region {id}")))?;
    ok(region_json(region, &snapshot))
}

async fn delete_region(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = region_id(&id)?;
    admin.apply(Change::DeleteRegion { id }, "admin").await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a lifecycle route asks for: `enable`, `disable`, `maintenance/on`, `maintenance/off`.
#[derive(Debug, Clone, Copy)]
enum Switch {
    State(bool),
    Maintenance(bool),
}

impl Switch {
    fn parse(action: &str) -> Result<Self, ApiError> {
        match action {
            "enable" => Ok(Self::State(true)),
            "disable" => Ok(Self::State(false)),
            "maintenance/on" => Ok(Self::Maintenance(true)),
            "maintenance/off" => Ok(Self::Maintenance(false)),
            other => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!(
                    "no lifecycle action {other:?}: enable, disable, maintenance/on, maintenance/off"
                ),
            )),
        }
    }
}

/// A lifecycle change of a region (`node` false) or a node, answered with the entity after it.
async fn lifecycle(
    admin: &Admin,
    headers: &HeaderMap,
    node: bool,
    id: &str,
    action: &str,
    body: &Bytes,
) -> ApiResult {
    admin.authorize(headers)?;
    let switch = Switch::parse(action)?;
    let reasons = reasons(body)?;
    if node {
        let id = node_id(id)?;
        let change = match switch {
            Switch::State(enabled) => Change::SetNodeState {
                id: id.clone(),
                enabled,
                reasons,
            },
            Switch::Maintenance(on) => Change::SetNodeMaintenance {
                id: id.clone(),
                on,
                reasons,
            },
        };
        admin.apply(change, "admin").await?;
        return node_answer(admin, &id, StatusCode::OK).await;
    }
    let id = region_id(id)?;
    let change = match switch {
        Switch::State(enabled) => Change::SetRegionState {
            id: id.clone(),
            enabled,
            reasons,
        },
        Switch::Maintenance(on) => Change::SetRegionMaintenance {
            id: id.clone(),
            on,
            reasons,
        },
    };
    admin.apply(change, "admin").await?;
    let snapshot = admin.snapshot().await?;
    let region = snapshot
        .state
        .region(&id)
        .ok_or_else(|| not_found(ErrorCode::RegionNotFound, &format!("region {id}")))?;
    ok(region_json(region, &snapshot))
}

/// `POST /v1/{regions,nodes}/{id}/{action}` and `.../maintenance/{switch}`: one handler, the
/// entity told by the path.
async fn lifecycle_route(
    State(admin): State<Admin>,
    headers: HeaderMap,
    uri: Uri,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let node = uri.path().starts_with("/v1/nodes/");
    let id = params.get("id").map_or("", String::as_str);
    let action = match (params.get("action"), params.get("switch")) {
        (Some(action), _) => action.clone(),
        (None, Some(switch)) => format!("maintenance/{switch}"),
        (None, None) => String::new(),
    };
    lifecycle(&admin, &headers, node, id, &action, &body).await
}

async fn region_capacity(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = region_id(&id)?;
    let snapshot = admin.snapshot().await?;
    if snapshot.state.region(&id).is_none() {
        return Err(not_found(
            ErrorCode::RegionNotFound,
            &format!("region {id}"),
        ));
    }
    let kinds: Vec<Value> = admin
        .gateway
        .cluster
        .view()
        .into_iter()
        .filter(|v| v.capacity.region == id)
        .map(|v| json!(v))
        .collect();
    ok(json!({ "region": id.as_str(), "kinds": kinds }))
}

#[derive(Debug, Deserialize)]
struct NodeFilter {
    region: Option<String>,
}

async fn list_nodes(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(filter): Query<NodeFilter>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let region = filter.region.as_deref().map(region_id).transpose()?;
    let snapshot = admin.snapshot().await?;
    let nodes: Vec<Value> = snapshot
        .state
        .nodes()
        .filter(|n| region.as_ref().is_none_or(|r| &n.region == r))
        .map(|n| node_json(n, &snapshot))
        .collect();
    ok(json!({ "nodes": nodes }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    id: String,
    region: String,
    kind: NodeKind,
    endpoint: String,
    sip_port: Option<u16>,
    max_sessions: u32,
    api_key: String,
}

async fn add_node(
    State(admin): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<AddNode>, JsonRejection>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let Json(body) = body?;
    let id = node_id(&body.id)?;
    let node = NewNode {
        id: id.clone(),
        region: region_id(&body.region)?,
        kind: body.kind,
        endpoint: body.endpoint,
        sip_port: body.sip_port,
        max_sessions: body.max_sessions,
        api_key: body.api_key,
    };
    admin.apply(Change::AddNode(node), "admin").await?;
    node_answer(&admin, &id, StatusCode::CREATED).await
}

async fn node_answer(admin: &Admin, id: &NodeId, status: StatusCode) -> ApiResult {
    let snapshot = admin.snapshot().await?;
    let node = snapshot
        .state
        .node(id)
        .ok_or_else(|| not_found(ErrorCode::NodeNotFound, &format!("node {id}")))?;
    Ok((status, Json(node_json(node, &snapshot))).into_response())
}

async fn get_node(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = node_id(&id)?;
    node_answer(&admin, &id, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateNode {
    endpoint: Option<String>,
    sip_port: Option<u16>,
    max_sessions: Option<u32>,
    api_key: Option<String>,
}

async fn update_node(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<UpdateNode>, JsonRejection>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = node_id(&id)?;
    let Json(body) = body?;
    let change = Change::UpdateNode {
        id: id.clone(),
        endpoint: body.endpoint,
        sip_port: body.sip_port,
        max_sessions: body.max_sessions,
        api_key: body.api_key,
    };
    admin.apply(change, "admin").await?;
    node_answer(&admin, &id, StatusCode::OK).await
}

async fn delete_node(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = node_id(&id)?;
    admin.apply(Change::DeleteNode { id }, "admin").await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A node's heartbeat body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReport {
    active_sessions: u32,
    limit: u32,
    #[serde(default)]
    cpu_percent: f32,
    #[serde(default)]
    memory_percent: f32,
    #[serde(default = "running")]
    state: RuntimeState,
}

fn running() -> RuntimeState {
    RuntimeState::Running
}

/// A node reports its own status, with its own API key.
async fn put_status(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<StatusReport>, JsonRejection>,
) -> ApiResult {
    let id = node_id(&id)?;
    let Some(key) = bearer(&headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Authorization: Bearer <the node's API key> required",
        ));
    };
    // An unknown node and a wrong key get the same answer: no enumerating node ids.
    let snapshot = admin.snapshot().await?;
    if !snapshot
        .state
        .node(&id)
        .is_some_and(|node| node.api_key.verify(key))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("the key is not node {id}'s API key"),
        ));
    }
    let Json(report) = body?;
    let status = NodeStatus {
        active_sessions: report.active_sessions,
        limit: report.limit,
        cpu_percent: report.cpu_percent,
        memory_percent: report.memory_percent,
        state: report.state,
        reported_at_ms: now_ms(),
        webrtc_sessions: 0,
        placed: Default::default(),
    };
    let ttl = admin.gateway.config.cluster.heartbeat_ttl;
    admin
        .gateway
        .cluster
        .registry
        .publish_status(&id, status, ttl)
        .await?;
    ok(json!({ "id": id.as_str(), "ttl_ms": ttl.as_millis() as u64 }))
}

async fn get_status(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = node_id(&id)?;
    let snapshot = admin.snapshot().await?;
    if snapshot.state.node(&id).is_none() {
        return Err(not_found(ErrorCode::NodeNotFound, &format!("node {id}")));
    }
    let status = snapshot.statuses.fresh(&id, snapshot.now_ms);
    ok(json!({ "id": id.as_str(), "online": status.is_some(), "status": status }))
}

/// Drains this node, as SIGTERM does: 202 with the sessions still up.
async fn drain(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let id = node_id(&id)?;
    if id != admin.gateway.cluster.node {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_THIS_NODE",
            format!(
                "this is node {}; send the drain to node {id}'s own admin API (or put it in maintenance here)",
                admin.gateway.cluster.node
            ),
        ));
    }
    if admin.shutdown.request_drain() {
        tracing::info!(target: "voxgate::audit", actor = "admin", action = "node.drain", target = %id, "drain requested");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id.as_str(),
            "draining": true,
            "remaining_sessions": admin.gateway.slots.active(),
            "deadline_s": admin.gateway.config.drain.deadline.as_secs(),
        })),
    )
        .into_response())
}

async fn capacity(State(admin): State<Admin>, headers: HeaderMap) -> ApiResult {
    admin.authorize(&headers)?;
    let snapshot = admin.snapshot().await?;
    let now = snapshot.now_ms;
    let mut sip = 0u64;
    let mut webrtc = 0u64;
    let mut nodes = Vec::new();
    for region in snapshot.state.regions() {
        for kind in NodeKind::ALL {
            let of_kind: Vec<&Node> = snapshot
                .state
                .nodes_in(&region.id)
                .filter(|n| n.kind == kind)
                .collect();
            let online: Vec<&Node> = of_kind
                .iter()
                .copied()
                .filter(|n| snapshot.statuses.is_online(&n.id, now))
                .collect();
            if kind == NodeKind::Proxy {
                for node in &online {
                    if let Some(status) = snapshot.statuses.fresh(&node.id, now) {
                        webrtc += u64::from(status.webrtc_sessions);
                        sip += u64::from(
                            status
                                .active_sessions
                                .saturating_sub(status.webrtc_sessions),
                        );
                    }
                }
            }
            nodes.push(json!({
                "region": region.id.as_str(),
                "kind": kind,
                "registered": of_kind.len(),
                "online": online.len(),
                "offline": of_kind.iter().filter(|n| !snapshot.statuses.is_online(&n.id, now)).map(|n| n.id.as_str()).collect::<Vec<_>>(),
            }));
        }
    }
    ok(json!({
        "sessions": { "sip": sip, "webrtc": webrtc, "total": sip + webrtc },
        "nodes": nodes,
        "regions": admin.gateway.cluster.view(),
        "outbound": admin.gateway.outbound.stats_json(tokio::time::Instant::now()),
    }))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let limit = query.limit.unwrap_or(100).min(1000);
    let entries = admin.gateway.cluster.registry.audit(limit).await?;
    ok(json!({ "entries": entries }))
}

/// The SIP sources banned now for going over `sip.flood`'s rate, oldest ban first.
async fn bans(State(admin): State<Admin>, headers: HeaderMap) -> ApiResult {
    admin.authorize(&headers)?;
    let now = tokio::time::Instant::now().into_std();
    let wall = now_ms();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let bans: Vec<Value> = admin
        .gateway
        .edge
        .bans(now)
        .into_iter()
        .map(|ban| {
            json!({
                "source": ban.source.to_string(),
                "since_ms": wall.saturating_sub(ms(now.saturating_duration_since(ban.since))),
                "until_ms": wall.saturating_add(ms(ban.until.saturating_duration_since(now))),
                "dropped": ban.dropped,
            })
        })
        .collect();
    ok(json!({ "bans": bans }))
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    call_id: Option<String>,
    port: Option<u16>,
}

fn session_json(id: SessionId, info: &SessionInfo) -> Value {
    json!({
        "id": id.0,
        "caller_call_id": info.caller_call_id,
        "backend_call_id": info.backend_call_id,
        "peer": info.peer,
        "region": info.region.as_str(),
        "ports": {"caller": info.ports.0, "backend": info.ports.1},
    })
}

/// This node's live sessions, or the one a dialog (either leg's Call-ID) or a relay port (either
/// side's RTP port) belongs to.
async fn sessions(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<SessionQuery>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let gateway = &admin.gateway;
    let found = match (&query.call_id, query.port) {
        (None, None) => {
            let all: Vec<Value> = gateway
                .sessions()
                .iter()
                .map(|(id, info)| session_json(*id, info))
                .collect();
            return ok(json!({ "sessions": all }));
        }
        (Some(call_id), _) => gateway.session_by_call_id(call_id),
        (None, Some(port)) => gateway.session_by_port(port),
    };
    let (id, info) = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "SESSION_NOT_FOUND",
            "no live session with that Call-ID or relay port",
        )
    })?;
    ok(session_json(id, &info))
}

/// How long a session task has to answer a command before the API gives up on it.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The live session of a path id; `SESSION_ENDED` for one this process ran that has ended,
/// `SESSION_NOT_FOUND` for any other.
fn live_session(admin: &Admin, text: &str) -> Result<(SessionId, SessionInfo), ApiError> {
    let id = text.parse::<u64>().ok().map(SessionId);
    let gateway = &admin.gateway;
    match id {
        Some(id) => match gateway.session(id) {
            Some(info) => Ok((id, info)),
            None if gateway.session_existed(id) => Err(session_ended()),
            None => Err(session_not_found()),
        },
        None => Err(session_not_found()),
    }
}

fn session_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "SESSION_NOT_FOUND",
        "no session with that id on this node",
    )
}

fn session_ended() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "SESSION_ENDED",
        "the session has ended",
    )
}

/// Sends `command` to a session task and waits for its answer on `rx`.
async fn ask<T>(
    info: &SessionInfo,
    command: SessionCommand,
    rx: tokio::sync::oneshot::Receiver<T>,
) -> Result<T, ApiError> {
    let answer = tokio::time::timeout(COMMAND_WAIT, async {
        info.commands.send(command).await.ok()?;
        rx.await.ok()
    })
    .await;
    match answer {
        Ok(Some(answer)) => Ok(answer),
        // The task dropped the command: it ended meanwhile.
        Ok(None) => Err(session_ended()),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SESSION_BUSY",
            "the session did not answer in time",
        )),
    }
}

/// A JSON body of type `T`: 400 `INVALID_JSON` when it is not JSON, 422 when it is the wrong
/// shape.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        let status = if err.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, "INVALID_JSON", err.to_string())
    })
}

/// `GET /v1/sessions/{id}`: the session's legs, Backend, trunk, region, state, codecs and
/// media counters.
async fn get_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let (id, info) = live_session(&admin, &id)?;
    let (reply, rx) = tokio::sync::oneshot::channel();
    let view = ask(&info, SessionCommand::View { reply }, rx).await?;
    let mut body = session_json(id, &info);
    if let Value::Object(map) = &mut body {
        map.insert("kind".into(), json!(info.kind));
        map.insert("trunk".into(), json!(info.trunk));
        map.insert("backend".into(), json!(info.peer));
        map.insert("state".into(), json!(view.state));
        map.insert("age_ms".into(), json!(view.age_ms));
        map.insert(
            "legs".into(),
            json!({"caller": view.caller, "backend": view.backend}),
        );
    }
    ok(body)
}

/// `DELETE /v1/sessions/{id}`: hangs up both legs (BYE, or CANCEL while one is unanswered).
async fn hang_up_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin.authorize(&headers)?;
    let (id, info) = live_session(&admin, &id)?;
    let sent = tokio::time::timeout(COMMAND_WAIT, info.commands.send(SessionCommand::HangUp)).await;
    match sent {
        Ok(Ok(())) => {
            tracing::info!(target: "voxgate::audit", session = %id, "hang-up by the admin API");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": id.0, "state": "ending"})),
            )
                .into_response())
        }
        Ok(Err(_)) => Err(session_ended()),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SESSION_BUSY",
            "the session did not take the command in time",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: String,
}

/// Whether `to` is a transfer target voxgate passes on: a `sip:`, `sips:` or `tel:` URI of at
/// most 256 characters, with nothing a header could be split on.
fn valid_target(to: &str) -> bool {
    let lower = to.to_ascii_lowercase();
    let scheme = ["sip:", "sips:", "tel:"]
        .iter()
        .find(|s| lower.starts_with(*s));
    scheme.is_some_and(|s| to.len() > s.len())
        && to.len() <= 256
        && to
            .chars()
            .all(|c| c.is_ascii_graphic() && !"<>\"".contains(c))
}

/// `POST /v1/sessions/{id}/transfer {"to"}`: a blind transfer of the caller, as a Backend's
/// REFER would (without NOTIFYs).
async fn transfer_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin.authorize(&headers)?;
    let (id, info) = live_session(&admin, &id)?;
    let body: TransferBody = json_body(&body)?;
    if !valid_target(&body.to) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_TARGET",
            "`to` must be a sip:, sips: or tel: URI of at most 256 characters",
        ));
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    let command = SessionCommand::Transfer {
        to: body.to.clone(),
        reply,
    };
    match ask(&info, command, rx).await? {
        Ok(()) => {
            tracing::info!(target: "voxgate::audit", session = %id, to = %body.to, "transfer by the admin API");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": id.0, "state": "transferring", "to": body.to})),
            )
                .into_response())
        }
        Err(reason) => {
            let code = match reason {
                "the session is not connected" => "NOT_CONNECTED",
                "a transfer is already under way" => "TRANSFER_IN_PROGRESS",
                _ => "TRANSFER_NOT_ALLOWED",
            };
            Err(ApiError::new(StatusCode::CONFLICT, code, reason))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DtmfBody {
    digits: String,
}

/// Digits one request may send.
const MAX_DIGITS: usize = 32;

/// `POST /v1/sessions/{id}/dtmf {"digits"}`: RFC 4733 events toward the caller.
async fn dtmf_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin.authorize(&headers)?;
    let (id, info) = live_session(&admin, &id)?;
    let body: DtmfBody = json_body(&body)?;
    let digits = body.digits;
    if digits.is_empty()
        || digits.chars().count() > MAX_DIGITS
        || digits
            .chars()
            .any(|c| voxgate_media::dtmf::event_of(c).is_none())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_DIGITS",
            "`digits` must be 1-32 of 0-9 * # A-D",
        ));
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    let command = SessionCommand::Dtmf {
        digits: digits.clone(),
        reply,
    };
    match ask(&info, command, rx).await? {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id.0, "digits": digits})),
        )
            .into_response()),
        Err(DtmfRefusal::NotConnected) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_CONNECTED",
            "the session is not connected",
        )),
        Err(DtmfRefusal::Unavailable) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "DTMF_UNAVAILABLE",
            "the caller's media has no telephone-event (or the session is a WebRTC one)",
        )),
    }
}
