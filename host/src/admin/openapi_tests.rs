//! Checks `openapi.json` against the admin router: every described path and method is
//! routed, behind the token (401 without it or with a wrong one, as described) except the
//! description itself; every answer fits its described schema, errors included.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::http::{OPENAPI, PAGE, router};
use crate::openapi_tests::{Double, Down, assert_described, send};
use crate::ops::GatewayApi;

const TOKEN: &str = "admin-token";

fn spec() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

fn app(down: Down) -> Router {
    router(GatewayApi::new(Arc::new(Double { down })), Some(TOKEN))
}

/// Every described endpoint: path, method, its operation object, and a request for it (the
/// request body's example, a search for a uid) with the `authorization` header given.
fn endpoints(doc: &Value, authorization: Option<&str>) -> Vec<(String, Value, Request<Body>)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let uri = match path.as_str() {
                "/api/search" => "/api/search?q=alice".to_owned(),
                other => other.to_owned(),
            };
            let mut request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(uri);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let example = &operation["requestBody"]["content"]["application/json"]["example"];
            let body = match example {
                Value::Null => Body::empty(),
                example => {
                    request = request.header("content-type", "application/json");
                    Body::from(example.to_string())
                }
            };
            out.push((
                format!("{method} {path}"),
                operation.clone(),
                request.body(body).unwrap(),
            ));
        }
    }
    out
}

/// POSTs `body` to `/api/kick` with the token.
async fn kick(app: &Router, body: &Value) -> (StatusCode, Value) {
    let request = Request::post("/api/kick")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

#[tokio::test]
async fn every_endpoint_answers_as_described() {
    let doc = spec();
    let app = app(Down::None);
    let bearer = format!("Bearer {TOKEN}");
    for (at, operation, request) in endpoints(&doc, Some(&bearer)) {
        let (status, answer) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{at}: {answer}");
        assert_described(&doc, &at, &operation, status, &answer);
    }
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_everywhere_but_the_description_and_page() {
    let doc = spec();
    let app = app(Down::None);
    for authorization in [None, Some("Bearer wrong"), Some("Basic YWRtaW4=")] {
        for (at, operation, request) in endpoints(&doc, authorization) {
            let (status, answer) = send(&app, request).await;
            if at == "get /api/openapi.json" {
                assert_eq!((status, &answer), (StatusCode::OK, &doc));
                continue;
            }
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{at}: {answer}");
            assert_described(&doc, &at, &operation, status, &answer);
        }
    }
    let page = Request::get("/").body(Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(app, page).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(bytes, PAGE.as_bytes());
}

#[tokio::test]
async fn unreachable_gateways_and_bad_requests_are_described_errors() {
    let doc = spec();
    let bearer = format!("Bearer {TOKEN}");
    for (at, operation, request) in endpoints(&doc, Some(&bearer)) {
        if at == "get /api/openapi.json" {
            continue;
        }
        let (status, answer) = send(&app(Down::All), request).await;
        assert!(status.is_client_error() || status.is_server_error(), "{at}");
        assert_described(&doc, &at, &operation, status, &answer);
    }
    let kicking = &doc["paths"]["/api/kick"]["post"];
    let app = app(Down::ClientsGateway);
    for body in [
        json!({}),
        json!({"client_id": "nope"}),
        json!({"client_id": "7f00000108fc00000001", "x": 1}),
    ] {
        let (status, answer) = kick(&app, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_described(&doc, "kick", kicking, status, &answer);
    }
    let example = &kicking["requestBody"]["content"]["application/json"]["example"];
    let (status, answer) = kick(&app, example).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_described(&doc, "kick", kicking, status, &answer);
    let search = &doc["paths"]["/api/search"]["get"];
    let request = Request::get("/api/search?q=%20")
        .header("authorization", &bearer)
        .body(Body::empty())
        .unwrap();
    let (status, answer) = send(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_described(&doc, "search", search, status, &answer);
}
