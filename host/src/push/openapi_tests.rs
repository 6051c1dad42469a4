//! Checks `openapi.json` against the router, so that the description and the API cannot drift:
//! the same operations; every example body accepted and answered as its response schema says;
//! every required field required and no undescribed field accepted; the error statuses each
//! operation can answer described, with the error schema.
//!
//! The router runs in-process over a gateway double, so these checks need no cluster; the
//! end-to-end tests (`tests/tests/e2e/push.rs`) check what the operations do.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::http::{OPENAPI, OPERATIONS, router};
use crate::client_id::ClientId;
use crate::openapi_tests::{Double, Down, assert_described, conforms, resolve, send};
use crate::ops::GatewayApi;

const TOKEN: &str = "secret-token";

fn spec() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

fn app(down: Down) -> Router {
    router(GatewayApi::new(Arc::new(Double { down })), Some(TOKEN))
}

/// POSTs `body` to `path` (with the token unless `token` is false).
async fn call(app: &Router, path: &str, body: &Value, token: bool) -> (StatusCode, Value) {
    let mut request = Request::post(path);
    if token {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    send(app, request.body(Body::from(body.to_string())).unwrap()).await
}

/// Every described operation: its name, its `post` object and its request body schema with the
/// example bodies.
fn operations(doc: &Value) -> Vec<(String, &Value, &Value, Vec<&Value>)> {
    let paths = doc["paths"].as_object().unwrap();
    paths
        .iter()
        .filter_map(|(path, item)| {
            let post = item.get("post")?;
            let name = path.strip_prefix("/api/").expect("under /api/").to_owned();
            let media = &resolve(doc, &post["requestBody"])["content"]["application/json"];
            let examples = media["examples"]
                .as_object()
                .unwrap_or_else(|| panic!("{name}: no examples"))
                .values()
                .map(|e| &e["value"])
                .collect();
            Some((name, post, &media["schema"], examples))
        })
        .collect()
}

#[test]
fn the_described_operations_are_the_routed_ones() {
    let doc = spec();
    let described: BTreeSet<String> = operations(&doc).into_iter().map(|o| o.0).collect();
    let routed: BTreeSet<String> = OPERATIONS.iter().map(|o| o.to_string()).collect();
    assert_eq!(described, routed);
    assert!(doc["paths"]["/api/openapi.json"]["get"].is_object());
}

#[tokio::test]
async fn examples_are_accepted_and_answered_as_described() {
    let doc = spec();
    let app = app(Down::None);
    for (name, post, schema, examples) in operations(&doc) {
        let mut fields_used = BTreeSet::new();
        for example in examples {
            conforms(&doc, schema, example, &name).unwrap();
            fields_used.extend(example.as_object().unwrap().keys().cloned());
            let (status, answer) = call(&app, &format!("/api/{name}"), example, true).await;
            assert_eq!(status, StatusCode::OK, "{name} {example}: {answer}");
            assert_described(&doc, &name, post, status, &answer);
        }
        let described: BTreeSet<String> = resolve(&doc, schema)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            fields_used, described,
            "{name}: examples should use every field"
        );
    }
}

#[tokio::test]
async fn bodies_are_accepted_exactly_when_they_fit_their_schema() {
    let doc = spec();
    let app = app(Down::None);
    for (name, post, schema, examples) in operations(&doc) {
        let path = format!("/api/{name}");
        for example in examples {
            let example = example.as_object().unwrap();
            for field in example.keys() {
                let mut body = example.clone();
                body.remove(field);
                let body = Value::Object(body);
                let fits = conforms(&doc, schema, &body, &name).is_ok();
                let (status, answer) = call(&app, &path, &body, true).await;
                assert_described(&doc, &name, post, status, &answer);
                if fits {
                    assert_eq!(status, StatusCode::OK, "{name} {body}: {answer}");
                } else {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{name} {body}: {answer}");
                    let message = answer["error"]["message"].as_str().unwrap();
                    assert!(message.contains(field.as_str()), "{name}: {message:?}");
                }
            }
            let mut body = example.clone();
            body.insert("surprise".into(), json!(1));
            let (status, answer) = call(&app, &path, &Value::Object(body), true).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{name} with an extra field"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("surprise")
            );
        }
    }
}

#[tokio::test]
async fn unreachable_gateways_and_missing_tokens_are_described_errors() {
    let doc = spec();
    let down = app(Down::All);
    for (name, post, _, examples) in operations(&doc) {
        let path = format!("/api/{name}");
        let (status, answer) = call(&down, &path, examples[0], false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {answer}");
        assert_described(&doc, &name, post, status, &answer);
        let (status, answer) = call(&down, &path, examples[0], true).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {answer}");
        assert_described(&doc, &name, post, status, &answer);
    }
}

/// An operation about one client whose gateway is not linked is a described 404 naming that
/// gateway, except `is_online`, which is false; the others answer as when all are linked.
#[tokio::test]
async fn a_clients_gateway_that_is_not_linked_is_named() {
    let doc = spec();
    let app = app(Down::ClientsGateway);
    for (name, post, _, examples) in operations(&doc) {
        let path = format!("/api/{name}");
        let example = examples[0];
        let (status, answer) = call(&app, &path, example, true).await;
        assert_described(&doc, &name, post, status, &answer);
        let one_client = example.get("client_id").and_then(Value::as_str);
        match one_client {
            Some(_) if name == "is_online" => assert_eq!(answer, json!({"result": false})),
            Some(id) => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {answer}");
                assert_eq!(answer["error"]["code"], "gateway_not_linked");
                let gateway = id.parse::<ClientId>().unwrap().gateway.to_string();
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains(&gateway), "{name}: {message:?}");
            }
            None => assert_eq!(status, StatusCode::OK, "{name}: {answer}"),
        }
    }
}

#[tokio::test]
async fn routing_errors_and_the_description_are_served_as_described() {
    let doc = spec();
    let app = app(Down::None);
    let error = json!({"$ref": "#/components/schemas/Error"});
    let (status, answer) = call(&app, "/api/send_to_everybody", &json!({}), true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    conforms(&doc, &error, &answer, "404").unwrap();
    let get = Request::get("/api/send_to_all")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (status, answer) = send(&app, get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    conforms(&doc, &error, &answer, "405").unwrap();
    let huge = json!({"data": "x".repeat(3 << 20)});
    let (status, answer) = call(&app, "/api/send_to_all", &huge, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let post = &doc["paths"]["/api/send_to_all"]["post"];
    assert_described(&doc, "send_to_all", post, status, &answer);
    let lowercase = Request::post("/api/get_all_uid_count")
        .header("authorization", format!("bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, lowercase).await.0, StatusCode::OK);
    let description = Request::get("/api/openapi.json")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, description).await, (StatusCode::OK, doc));
}
