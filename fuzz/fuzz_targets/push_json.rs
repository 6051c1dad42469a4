//! The push API's JSON bodies: a request to one of its operations (the first byte picks
//! which) with an arbitrary body, through the real router, over gateways that take every
//! command and are unreachable for queries. Every answer must be a JSON object.
#![no_main]

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use wasmgate::ops::{
    Command, CommandFuture, GatewayApi, Gateways, Query, QueryFuture, Unreachable,
};
use wasmgate::push::http::{OPERATIONS, router};
use wasmgate_fuzz::RUNTIME;

struct Nowhere;

impl Gateways for Nowhere {
    fn command(&self, _: Command) -> CommandFuture {
        Box::pin(async { Ok(()) })
    }

    fn query(&self, _: Query) -> QueryFuture {
        Box::pin(async { Err(Unreachable::NoGateway) })
    }
}

static ROUTER: LazyLock<axum::Router> =
    LazyLock::new(|| router(GatewayApi::new(Arc::new(Nowhere)), None));

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let operation = OPERATIONS[usize::from(which) % OPERATIONS.len()];
    let request = Request::post(format!("/api/{operation}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    RUNTIME.block_on(async {
        let response = ROUTER.clone().oneshot(request).await.expect("infallible");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        assert!(
            bytes.first() == Some(&b'{'),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    });
});
