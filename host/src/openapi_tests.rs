//! What the OpenAPI tests of the push API and the admin page share: a gateway double that
//! answers every query with a reply of the right kind, and a check of JSON values against the
//! schemas of an OpenAPI document.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::client_id::ClientId;
use crate::ops::{
    ClusterView, Command, CommandFuture, FaultCounts, FaultReport, GatewayView, Gateways,
    GroupMembers, ListenerView, PluginReport, Query, QueryFuture, Reply, Session, Unreachable,
    WorkerReport,
};

/// Gateways that take every command and answer every query with a reply of the right kind,
/// except where `down` says they are unreachable.
pub(crate) struct Double {
    /// Which gateways are not linked.
    pub(crate) down: Down,
}

/// Which gateways the double has not linked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Down {
    /// None: every operation succeeds.
    None,
    /// Every gateway.
    All,
    /// The gateway of any client an operation is about; the others are linked.
    ClientsGateway,
}

impl Double {
    fn unreachable(&self, target: Option<ClientId>) -> Option<Unreachable> {
        match (self.down, target) {
            (Down::None, _) | (Down::ClientsGateway, None) => None,
            (Down::All, _) => Some(Unreachable::NoGateway),
            (Down::ClientsGateway, Some(client)) => Some(Unreachable::NotLinked(client.gateway)),
        }
    }
}

impl Gateways for Double {
    fn command(&self, command: Command) -> CommandFuture {
        let down = self.unreachable(command.target());
        Box::pin(async move { down.map_or(Ok(()), Err) })
    }

    fn query(&self, query: Query) -> QueryFuture {
        let answer = match self.unreachable(query.target()) {
            Some(down) => Err(down),
            None => Ok(reply_to(query)),
        };
        Box::pin(async move { answer })
    }
}

pub(crate) fn reply_to(query: Query) -> Reply {
    let id = ClientId::new("127.0.0.1:2300".parse().unwrap(), 8);
    let session: Session = [("nick".to_owned(), "alice".to_owned())].into();
    match query {
        Query::IsOnline(_) => Reply::Online(true),
        Query::UidOf(_) => Reply::Uid(Some("alice".into())),
        Query::SessionOf(_) => Reply::Session(Some(session)),
        Query::UidsOnline(uids) => Reply::UidsOnline(uids.into_iter().map(|u| (u, true)).collect()),
        Query::ClientsOfUids(uids) => {
            Reply::ClientsOfUids(uids.into_iter().map(|u| (u, vec![id])).collect())
        }
        Query::AllUids | Query::UidsOfGroup(_) => Reply::Uids(vec!["alice".into()]),
        Query::GroupCounts(groups) => {
            Reply::GroupCounts(groups.into_iter().map(|g| (g, 2)).collect())
        }
        Query::ClientsOfGroup(_) => Reply::Clients(vec![id]),
        Query::SessionsOfGroup(_) => Reply::Sessions(vec![(id, session)]),
        Query::AllGroups => Reply::Groups(vec![GroupMembers {
            group: "lobby".into(),
            clients: vec![id],
            uids: vec!["alice".into()],
        }]),
        Query::Cluster => Reply::Cluster(cluster_view(id)),
    }
}

/// A cluster of one gateway holding `id` and one worker host whose plugin faulted once.
fn cluster_view(id: ClientId) -> ClusterView {
    ClusterView {
        gateways: vec![GatewayView {
            address: id.gateway.into(),
            listeners: vec![ListenerView {
                name: "ws".into(),
                app: "chat".into(),
                port: 8282,
            }],
            clients: 1,
            groups: 1,
            uids: 1,
            worker_links: 1,
        }],
        workers: vec![WorkerReport {
            id: 7,
            name: "worker".into(),
            made_at: 1_700_000_000_000,
            plugins: vec![PluginReport {
                plugin: "chat".into(),
                version: "0123abcd".into(),
                loaded_at: 1_700_000_000,
                instances: 2,
                faults: FaultCounts {
                    trap: 1,
                    ..FaultCounts::default()
                },
                recent_faults: vec![FaultReport {
                    at: 1_700_000_001,
                    callback: "on-message".into(),
                    kind: "trap".into(),
                }],
            }],
        }],
    }
}

/// Returns the status and the JSON answer to `request`.
pub(crate) async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let path = request.uri().path().to_owned();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let answer = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{path}: answer is not JSON ({e}): {bytes:?}");
    });
    (status, answer)
}

/// Follows a `$ref` within the document.
pub(crate) fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            resolve(doc, target)
        }
        None => node,
    }
}

/// Checks `value` against `schema`, for the JSON Schema keywords `openapi.json` uses
/// (`pattern` aside, which the client id tests check).
pub(crate) fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fitting = options
            .iter()
            .filter(|o| conforms(doc, o, value, at).is_ok())
            .count();
        if fitting != 1 {
            return Err(format!("{at}: {value} fits {fitting} of the oneOf options"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: bad type {other}"),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !fits {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        return Err(format!("{at}: {n} is below {min}"));
    }
    if let (Some(min), Some(s)) = (
        schema.get("minLength").and_then(Value::as_u64),
        value.as_str(),
    ) && (s.chars().count() as u64) < min
    {
        return Err(format!("{at}: {s:?} is shorter than {min}"));
    }
    if let Value::Array(items) = value
        && let Some(item) = schema.get("items")
    {
        for (i, v) in items.iter().enumerate() {
            conforms(doc, item, v, &format!("{at}[{i}]"))?;
        }
    }
    if let Value::Object(fields) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !fields.contains_key(name) {
                return Err(format!("{at}: missing required `{name}`"));
            }
        }
        for (name, v) in fields {
            let at = format!("{at}.{name}");
            match (&schema["properties"][name], &schema["additionalProperties"]) {
                (Value::Null, Value::Bool(false)) => return Err(format!("{at}: not described")),
                (Value::Null, Value::Null | Value::Bool(true)) => {}
                (Value::Null, extra) => conforms(doc, extra, v, &at)?,
                (property, _) => conforms(doc, property, v, &at)?,
            }
        }
    }
    Ok(())
}

/// Asserts that `status` is among the responses `operation` describes and the answer fits it;
/// `at` names the operation in the failure.
pub(crate) fn assert_described(
    doc: &Value,
    at: &str,
    operation: &Value,
    status: StatusCode,
    answer: &Value,
) {
    let response = operation["responses"]
        .get(status.as_str())
        .unwrap_or_else(|| panic!("{at}: answered {status}, which is not described"));
    let schema = &resolve(doc, response)["content"]["application/json"]["schema"];
    if let Err(e) = conforms(doc, schema, answer, at) {
        panic!("{at}: the {status} answer does not fit its schema: {e}");
    }
}
