//! The HTTP push API: `POST /api/<operation>` with a JSON body, one route per gateway
//! operation, generated from the table ([`crate::ops::gateway_operations`]), so that a backend
//! in any language can do what a plugin does.
//!
//! This layer only translates: JSON fields in, named as the table names the arguments
//! (payloads as `data`, UTF-8 text, or `b64data`, base64 bytes), one [`GatewayApi`] call, JSON
//! out as `{"result": …}`. Failures are
//! `{"error": {"code", "message"}}` with a real status: 400 for a body that does not fit (the
//! message names the field), 401 for a missing or wrong token, 404 for an unknown operation or
//! a client whose gateway is not linked (naming the gateway), 413 for a body over the limit,
//! 503 when no gateway is reachable. The operations, bodies and
//! answers are described in `openapi.json`, served at `GET /api/openapi.json`; a test checks
//! the description against this router.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::client_id::ClientId;
use crate::http_listener;
use crate::ops::{
    Excluded, GatewayApi, Name, OpError, Session, Unreachable, gateway_operations, partial,
};

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The router: every operation under `/api/`, behind the token check when `token` is set, and
/// the OpenAPI description (public: it holds no secret).
pub fn router(gateways: GatewayApi, token: Option<&str>) -> Router {
    let api = http_listener::require_token(operations().with_state(gateways), token);
    Router::new()
        .merge(api)
        .route("/api/openapi.json", get(openapi))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(method_not_allowed)
}

// ---- Operations -------------------------------------------------------------------------------

/// Generates a route per operation of the table, and [`OPERATIONS`]. Each handler takes the
/// operation's arguments from the body's fields by name ([`FromJson`]), refuses any other
/// field, runs the operation and answers its result.
macro_rules! http_routes {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident($api:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
    )*) => {
        /// Every operation's name: the routes are `POST /api/<name>`.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name)),*];

        fn operations() -> Router<GatewayApi> {
            Router::new()$(.route(concat!("/api/", stringify!($name)), post($name)))*
        }

        $(
            async fn $name(
                State(api): State<GatewayApi>,
                Fields(mut fields): Fields,
            ) -> Result<Response, ApiError> {
                $(let $arg = <$ty as FromJson>::take(&mut fields, stringify!($arg))?;)*
                refuse_unknown(&mut fields)?;
                let (result, missing) = partial::gathering(api.$name($($arg),*)).await;
                let answer = Answer {
                    result: result?,
                    partial: !missing.is_empty(),
                    missing_gateways: missing.iter().map(ToString::to_string).collect(),
                };
                Ok(json(StatusCode::OK, &answer))
            }
        )*
    };
}

gateway_operations!(http_routes);

// ---- Bodies -----------------------------------------------------------------------------------
//
// Unknown fields are refused, so a misspelt optional field (`exclude` for
// `exclude_client_ids`) is a 400 instead of a push to the wrong clients.

/// An argument type as a JSON body gives it: taken out of the body's fields by name, in the
/// form the operation's [`crate::ops::Argument`] conversion checks.
trait FromJson {
    /// The value as JSON holds it.
    type Json;
    /// Takes the argument `name` out of `fields`.
    fn take(fields: &mut Map<String, Value>, name: &str) -> Result<Self::Json, ApiError>;
}

/// Takes the required field `name` as a `T`, naming whatever does not fit: `groups[1]: invalid
/// type…`.
fn required<T: DeserializeOwned>(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<T, ApiError> {
    let value = fields
        .remove(name)
        .ok_or_else(|| ApiError::bad_request(format!("missing field `{name}`")))?;
    typed(name, value)
}

fn typed<T: DeserializeOwned>(name: &str, value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = match e.path().to_string() {
            path if path == "." => String::new(),
            path if path.starts_with('[') => path,
            path => format!(".{path}"),
        };
        ApiError::bad_request(format!("{name}{at}: {}", e.inner()))
    })
}

/// Arguments given as one JSON value of their own field.
macro_rules! json_field {
    ($($ty:ty => $json:ty),* $(,)?) => {
        $(impl FromJson for $ty {
            type Json = $json;
            fn take(fields: &mut Map<String, Value>, name: &str) -> Result<$json, ApiError> {
                required(fields, name)
            }
        })*
    };
}

json_field! {
    ClientId => String,
    Vec<ClientId> => Vec<String>,
    Name => String,
    Vec<Name> => Vec<String>,
    String => String,
    Session => Session,
}

/// Clients to leave out: none when the field is absent.
impl FromJson for Excluded {
    type Json = Vec<String>;
    fn take(fields: &mut Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
        match fields.remove(name) {
            Some(value) => typed(name, value),
            None => Ok(Vec::new()),
        }
    }
}

/// A payload: UTF-8 text in `name`, or base64 bytes in `b64<name>`, exactly one of them.
impl FromJson for Bytes {
    type Json = Bytes;
    fn take(fields: &mut Map<String, Value>, name: &str) -> Result<Bytes, ApiError> {
        <Option<Bytes> as FromJson>::take(fields, name)?.ok_or_else(|| {
            ApiError::bad_request(format!(
                "missing field `{name}` (or `b64{name}` for binary data)"
            ))
        })
    }
}

/// An optional payload: as [`Bytes`], or neither field.
impl FromJson for Option<Bytes> {
    type Json = Option<Bytes>;
    fn take(fields: &mut Map<String, Value>, name: &str) -> Result<Option<Bytes>, ApiError> {
        let b64name = format!("b64{name}");
        let text: Option<String> = fields.remove(name).map(|v| typed(name, v)).transpose()?;
        let b64: Option<String> = fields
            .remove(&b64name)
            .map(|v| typed(&b64name, v))
            .transpose()?;
        match (text, b64) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
                "give `{name}` or `{b64name}`, not both"
            ))),
            (Some(text), None) => Ok(Some(Bytes::from(text))),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|bytes| Some(Bytes::from(bytes)))
                .map_err(|e| ApiError::bad_request(format!("{b64name}: not base64: {e}"))),
            (None, None) => Ok(None),
        }
    }
}

/// Refuses the fields no argument took.
fn refuse_unknown(fields: &mut Map<String, Value>) -> Result<(), ApiError> {
    match fields.keys().next() {
        Some(field) => Err(ApiError::bad_request(format!("unknown field `{field}`"))),
        None => Ok(()),
    }
}

/// A JSON object body; an empty body reads as `{}`.
struct Fields(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            let code = match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                _ => "bad_request",
            };
            ApiError::new(e.status(), code, e.body_text())
        })?;
        if body.trim_ascii().is_empty() {
            return Ok(Fields(Map::new()));
        }
        serde_json::from_slice(&body)
            .map(Fields)
            .map_err(|e| ApiError::bad_request(format!("the body is not a JSON object: {e}")))
    }
}

// ---- Answers ----------------------------------------------------------------------------------

/// A successful answer; commands answer `{"result": null}` once queued. A query some gateway
/// did not answer in time says so (`"partial": true`) and names those gateways.
#[derive(Serialize)]
struct Answer<T> {
    result: T,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing_gateways: Vec<String>,
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
    http_listener::json_document(OPENAPI)
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

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::InvalidArgument { .. } => Self::bad_request(e.to_string()),
            // The client's gateway is not linked: the client cannot be found, though other
            // gateways may well be reachable.
            OpError::Unreachable(Unreachable::NotLinked(_)) => {
                Self::new(StatusCode::NOT_FOUND, "gateway_not_linked", e.to_string())
            }
            OpError::Unreachable(_) => Self::new(
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
        json(self.status, &body)
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
