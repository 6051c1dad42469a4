//! The admin page's router: `GET /` the page (public: it holds no data and asks for the
//! token), `GET /api/openapi.json` its description (public), and behind the token
//! ([`http_listener::require_token`]):
//!
//! - `GET /api/cluster`: every gateway's figures and listener, every worker host's plugins,
//!   every group's client count, every uid;
//! - `GET /api/clients`: every client with its gateway, uid and groups;
//! - `GET /api/search?q=…`: the clients whose id, uid or group is `q`, with their sessions;
//! - `POST /api/kick` (`{"client_id": …}`): closes a client at once.
//!
//! Failures are `{"error": {"code", "message"}}` with a real status, as in the push API.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::client_id::ClientId;
use crate::http_listener;
use crate::ops::{
    ClusterView, GatewayApi, GatewayView, OpError, Session, Unreachable, WorkerReport, check_name,
};

/// The page: plain HTML and JavaScript, no build step.
pub const PAGE: &str = include_str!("page.html");

/// The OpenAPI 3.1 description of the JSON endpoints.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The router; the `/api/` endpoints but the description are behind `token` when set.
pub fn router(gateways: GatewayApi, token: Option<&str>) -> Router {
    let api = Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/clients", get(clients))
        .route("/api/search", get(search))
        .route("/api/kick", post(kick))
        .with_state(gateways);
    Router::new()
        .merge(http_listener::require_token(api, token))
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/openapi.json", get(openapi))
}

/// `GET /api/cluster`.
#[derive(Serialize)]
struct Cluster {
    gateways: Vec<GatewayView>,
    workers: Vec<WorkerReport>,
    /// Each group with its number of clients.
    groups: BTreeMap<String, u32>,
    uids: Vec<String>,
}

async fn cluster(State(api): State<GatewayApi>) -> Result<Json<Cluster>, AdminError> {
    let ClusterView { gateways, workers } = api.cluster().await?;
    let groups = api.get_all_group_client_counts().await?.into_map();
    let uids = api.get_all_uids().await?;
    Ok(Json(Cluster {
        gateways,
        workers,
        groups,
        uids,
    }))
}

/// One client as the page shows it.
#[derive(Serialize)]
struct ClientView {
    id: ClientId,
    /// Its gateway's internal address.
    gateway: String,
    uid: Option<String>,
    groups: Vec<String>,
    /// Only in search results.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<Session>,
}

/// Every client's groups, from the gateways' group tables.
async fn groups_by_client(api: &GatewayApi) -> Result<BTreeMap<ClientId, Vec<String>>, OpError> {
    let mut by_client: BTreeMap<ClientId, Vec<String>> = BTreeMap::new();
    for (group, members) in api.get_all_group_client_ids().await?.into_vec() {
        for id in members {
            by_client.entry(id).or_default().push(group.clone());
        }
    }
    Ok(by_client)
}

/// `GET /api/clients`: as `wasmgate connections`, but for the whole cluster.
async fn clients(State(api): State<GatewayApi>) -> Result<Json<Vec<ClientView>>, AdminError> {
    let ids = api.get_all_client_ids().await?;
    let mut groups = groups_by_client(&api).await?;
    let uids = api.get_all_uids().await?;
    let mut uid_of = BTreeMap::new();
    if !uids.is_empty() {
        for (uid, clients) in api.get_client_ids_by_uids(&uids[..]).await?.into_vec() {
            uid_of.extend(clients.into_iter().map(|id| (id, uid.clone())));
        }
    }
    let mut views: Vec<ClientView> = ids
        .into_iter()
        .map(|id| ClientView {
            id,
            gateway: id.gateway.to_string(),
            uid: uid_of.remove(&id),
            groups: groups.remove(&id).unwrap_or_default(),
            session: None,
        })
        .collect();
    views.sort_by_key(|v| v.id);
    Ok(Json(views))
}

#[derive(Deserialize)]
struct Search {
    q: String,
}

/// `GET /api/search?q=…`: the client with id `q`, the clients bound to uid `q` and the members
/// of group `q`, each with its session.
async fn search(
    State(api): State<GatewayApi>,
    Query(Search { q }): Query<Search>,
) -> Result<Json<Vec<ClientView>>, AdminError> {
    let q = q.trim();
    let mut found = BTreeSet::new();
    if let Ok(id) = q.parse::<ClientId>()
        && api.is_online(id).await?
    {
        found.insert(id);
    }
    if check_name(q).is_ok() {
        found.extend(api.get_client_ids_by_uid(q).await?);
        found.extend(api.get_client_ids_by_group(q).await?);
    } else if found.is_empty() {
        return Err(AdminError::bad_request(format!(
            "`{q}` is no client id, uid or group name"
        )));
    }
    let mut groups = groups_by_client(&api).await?;
    let mut views = Vec::with_capacity(found.len());
    for id in found {
        views.push(ClientView {
            id,
            gateway: id.gateway.to_string(),
            uid: api.get_uid_by_client_id(id).await?,
            groups: groups.remove(&id).unwrap_or_default(),
            session: api.get_session(id).await?,
        });
    }
    Ok(Json(views))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kick {
    client_id: String,
}

/// `POST /api/kick`: the client is closed at once (its `on-close` follows).
async fn kick(
    State(api): State<GatewayApi>,
    body: Result<Json<Kick>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let Json(Kick { client_id }) = body.map_err(|e| AdminError::bad_request(e.body_text()))?;
    api.destroy_client(client_id.as_str()).await?;
    tracing::info!(client = %client_id, "admin: client kicked");
    Ok(Json(serde_json::json!({ "result": null })))
}

async fn openapi() -> Response {
    http_listener::json_document(OPENAPI)
}

/// A failed request, answered as `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message,
        }
    }
}

impl From<OpError> for AdminError {
    fn from(e: OpError) -> Self {
        let (status, code) = match e {
            OpError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            OpError::Unreachable(Unreachable::NotLinked(_)) => {
                (StatusCode::NOT_FOUND, "gateway_not_linked")
            }
            OpError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unreachable"),
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
