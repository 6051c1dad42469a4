//! The HTTP push API: `POST /api/<operation>` with a JSON body, one route per [`PushClient`]
//! method, so that a backend in any language can do what a plugin does.
//!
//! This layer only translates: JSON in (payloads as `data`, UTF-8 text, or `b64data`, base64
//! bytes), one `PushClient` call, JSON out as `{"result": …}`. Failures are
//! `{"error": {"code", "message"}}` with a real status: 400 for a body that does not fit (the
//! message names the field), 401 for a missing or wrong token, 404 for an unknown operation,
//! 413 for a body over the limit, 503 when no gateway is reachable. The operations, bodies and
//! answers are described in `openapi.json`, served at `GET /api/openapi.json`; a test checks
//! the description against this router.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::client::{PushClient, PushError};
use crate::client_id::ClientId;
use crate::ops::Session;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The router: every operation under `/api/`, behind the token check when `token` is set, and
/// the OpenAPI description (public: it holds no secret).
pub fn router(push: PushClient, token: Option<&str>) -> Router {
    let mut api = operations().with_state(push);
    if let Some(token) = token {
        let token: Arc<[u8]> = token.as_bytes().into();
        api = api.layer(middleware::from_fn_with_state(token, authorize));
    }
    Router::new()
        .merge(api)
        .route("/api/openapi.json", get(openapi))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(method_not_allowed)
}

// ---- Operations -------------------------------------------------------------------------------

/// Declares every operation once: its handler, named as its route, and its row in
/// [`OPERATIONS`]. Each is `name(client, body pattern, body type) => result;` where the result
/// expression calls the client and converts its answer to what the JSON `result` holds.
macro_rules! operations {
    ($($name:ident($push:ident, $body:pat, $ty:ty) => $result:expr;)*) => {
        /// Every operation's name: the routes are `POST /api/<name>`.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name)),*];

        fn operations() -> Router<PushClient> {
            Router::new()$(.route(concat!("/api/", stringify!($name)), post($name)))*
        }

        $(
            async fn $name(
                State($push): State<PushClient>,
                Body($body): Body<$ty>,
            ) -> Result<Response, ApiError> {
                Ok(json(StatusCode::OK, &Answer { result: $result }))
            }
        )*
    };
}

operations! {
    send_to_all(p, b, SendToAll) =>
        p.send_to_all(payload(b.data, b.b64data)?, &b.exclude_client_ids).await?;
    send_to_clients(p, b, SendToClients) =>
        p.send_to_clients(&b.client_ids, payload(b.data, b.b64data)?).await?;
    send_to_client(p, b, SendToClient) =>
        p.send_to_client(b.client_id, payload(b.data, b.b64data)?).await?;
    close_client(p, b, CloseClient) =>
        p.close_client(b.client_id, bytes("farewell", b.farewell, b.b64farewell)?).await?;
    destroy_client(p, b, OfClient) => p.destroy_client(b.client_id).await?;
    is_online(p, b, OfClient) => p.is_online(b.client_id).await?;

    bind_uid(p, b, ClientUid) => p.bind_uid(b.client_id, &b.uid).await?;
    unbind_uid(p, b, ClientUid) => p.unbind_uid(b.client_id, &b.uid).await?;
    send_to_uid(p, b, SendToUid) => p.send_to_uid(&b.uids, payload(b.data, b.b64data)?).await?;
    is_uid_online(p, b, OfUid) => p.is_uid_online(&b.uid).await?;
    are_uids_online(p, b, OfUids) => keyed(p.are_uids_online(&b.uids).await?, |v| v);
    get_client_ids_by_uid(p, b, OfUid) => ids(p.get_client_ids_by_uid(&b.uid).await?);
    get_client_ids_by_uids(p, b, OfUids) => keyed(p.get_client_ids_by_uids(&b.uids).await?, ids);
    get_uid_by_client_id(p, b, OfClient) => p.get_uid_by_client_id(b.client_id).await?;
    get_all_uids(p, Nothing {}, Nothing) => p.get_all_uids().await?;
    get_all_uid_count(p, Nothing {}, Nothing) => p.get_all_uid_count().await?;

    join_group(p, b, ClientGroup) => p.join_group(b.client_id, &b.group).await?;
    leave_group(p, b, ClientGroup) => p.leave_group(b.client_id, &b.group).await?;
    ungroup(p, b, OfGroup) => p.ungroup(&b.group).await?;
    send_to_group(p, b, SendToGroup) =>
        p.send_to_group(&b.groups, payload(b.data, b.b64data)?, &b.exclude_client_ids).await?;
    get_client_count_by_group(p, b, OfGroup) => p.get_client_count_by_group(&b.group).await?;
    get_client_counts_by_groups(p, b, OfGroups) =>
        keyed(p.get_client_counts_by_groups(&b.groups).await?, |n| n);
    get_client_ids_by_group(p, b, OfGroup) => ids(p.get_client_ids_by_group(&b.group).await?);
    get_client_sessions_by_group(p, b, OfGroup) =>
        sessions(p.get_client_sessions_by_group(&b.group).await?);
    get_uids_by_group(p, b, OfGroup) => p.get_uids_by_group(&b.group).await?;
    get_uid_count_by_group(p, b, OfGroup) => p.get_uid_count_by_group(&b.group).await?;
    get_all_group_ids(p, Nothing {}, Nothing) => p.get_all_group_ids().await?;
    get_all_group_client_ids(p, Nothing {}, Nothing) =>
        keyed(p.get_all_group_client_ids().await?, ids);
    get_all_group_client_counts(p, Nothing {}, Nothing) =>
        keyed(p.get_all_group_client_counts().await?, |n| n);
    get_all_group_uids(p, Nothing {}, Nothing) => keyed(p.get_all_group_uids().await?, |u| u);
    get_all_group_uid_counts(p, Nothing {}, Nothing) =>
        keyed(p.get_all_group_uid_counts().await?, |n| n);

    get_all_client_count(p, Nothing {}, Nothing) => p.get_all_client_count().await?;
    get_all_client_ids(p, Nothing {}, Nothing) => ids(p.get_all_client_ids().await?);
    get_all_client_sessions(p, Nothing {}, Nothing) => sessions(p.get_all_client_sessions().await?);

    set_session(p, b, SetSession) => p.set_session(b.client_id, b.session).await?;
    update_session(p, b, UpdateSession) => p.update_session(b.client_id, b.changes).await?;
    get_session(p, b, OfClient) => p.get_session(b.client_id).await?;
}

// ---- Bodies -----------------------------------------------------------------------------------
//
// Unknown fields are refused, so a misspelt optional field (`exclude` for
// `exclude_client_ids`) is a 400 instead of a push to the wrong clients.

/// `send_to_all`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendToAll {
    data: Option<String>,
    b64data: Option<String>,
    #[serde(default, deserialize_with = "client_ids")]
    exclude_client_ids: Vec<ClientId>,
}

/// `send_to_clients`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendToClients {
    #[serde(deserialize_with = "client_ids")]
    client_ids: Vec<ClientId>,
    data: Option<String>,
    b64data: Option<String>,
}

/// `send_to_client`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendToClient {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    data: Option<String>,
    b64data: Option<String>,
}

/// `close_client`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseClient {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    farewell: Option<String>,
    b64farewell: Option<String>,
}

/// `send_to_uid`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendToUid {
    uids: Vec<String>,
    data: Option<String>,
    b64data: Option<String>,
}

/// `send_to_group`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendToGroup {
    groups: Vec<String>,
    data: Option<String>,
    b64data: Option<String>,
    #[serde(default, deserialize_with = "client_ids")]
    exclude_client_ids: Vec<ClientId>,
}

/// Operations on one client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfClient {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
}

/// `bind_uid`, `unbind_uid`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientUid {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    uid: String,
}

/// `join_group`, `leave_group`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientGroup {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    group: String,
}

/// Queries about one uid.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfUid {
    uid: String,
}

/// Queries about several uids.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfUids {
    uids: Vec<String>,
}

/// Operations on one group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfGroup {
    group: String,
}

/// Queries about several groups.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfGroups {
    groups: Vec<String>,
}

/// Operations without arguments: `{}` or no body at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

/// `set_session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSession {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    session: Session,
}

/// `update_session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSession {
    #[serde(deserialize_with = "client_id")]
    client_id: ClientId,
    changes: Session,
}

/// A client id given as its 20 hex characters.
struct Id(ClientId);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Id).map_err(serde::de::Error::custom)
    }
}

fn client_id<'de, D: Deserializer<'de>>(d: D) -> Result<ClientId, D::Error> {
    Id::deserialize(d).map(|id| id.0)
}

fn client_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ClientId>, D::Error> {
    let ids = Vec::<Id>::deserialize(d)?;
    Ok(ids.into_iter().map(|id| id.0).collect())
}

/// The payload of a send: exactly one of `data` and `b64data`.
fn payload(data: Option<String>, b64data: Option<String>) -> Result<Bytes, ApiError> {
    bytes("data", data, b64data)?.ok_or_else(|| {
        ApiError::bad_request("missing field `data` (or `b64data` for binary data)".into())
    })
}

/// Optional bytes given as text in `name` or as base64 in `b64<name>`, not both.
fn bytes(name: &str, text: Option<String>, b64: Option<String>) -> Result<Option<Bytes>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give `{name}` or `b64{name}`, not both"
        ))),
        (Some(text), None) => Ok(Some(Bytes::from(text))),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|e| ApiError::bad_request(format!("b64{name}: not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A JSON body, deserialised with the path of whatever does not fit (`groups[1]: invalid
/// type…`); an empty body reads as `{}`.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            let code = match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                _ => "bad_request",
            };
            ApiError::new(e.status(), code, e.body_text())
        })?;
        let body: &[u8] = if body.trim_ascii().is_empty() {
            b"{}"
        } else {
            &body
        };
        let mut json = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut json)
            .map(Body)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

// ---- Answers ----------------------------------------------------------------------------------

/// A successful answer; commands answer `{"result": null}` once queued.
#[derive(Serialize)]
struct Answer<T> {
    result: T,
}

fn ids(ids: Vec<ClientId>) -> Vec<String> {
    ids.iter().map(ClientId::to_string).collect()
}

/// Pairs as a JSON object.
fn keyed<V, W>(pairs: Vec<(String, V)>, f: impl Fn(V) -> W) -> BTreeMap<String, W> {
    pairs.into_iter().map(|(k, v)| (k, f(v))).collect()
}

/// Sessions by client id as a JSON object.
fn sessions(pairs: Vec<(ClientId, Session)>) -> BTreeMap<String, Session> {
    pairs
        .into_iter()
        .map(|(id, session)| (id.to_string(), session))
        .collect()
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).expect("answers serialise");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

// ---- Errors -----------------------------------------------------------------------------------

/// A failed request, answered as `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::InvalidArgument { .. } => Self::bad_request(e.to_string()),
            PushError::Unreachable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unreachable",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn unknown_operation(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_operation",
        format!(
            "no operation at {}; GET /api/openapi.json lists them",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} takes POST", request.uri().path()),
    )
}

// ---- Authentication ---------------------------------------------------------------------------

/// Lets a request through if it carries the token as `Authorization: Bearer <token>` or
/// `X-API-Key: <token>`, compared in constant time.
async fn authorize(State(token): State<Arc<[u8]>>, request: Request, next: Next) -> Response {
    match presented_token(request.headers()) {
        Some(given) if bool::from(given.ct_eq(&token)) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong token".into(),
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the token as `Authorization: Bearer <token>` or `X-API-Key: <token>`".into(),
        )
        .into_response(),
    }
}

fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.as_bytes().split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
    });
    bearer.or_else(|| headers.get("x-api-key").map(HeaderValue::as_bytes))
}
