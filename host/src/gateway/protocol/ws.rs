//! The WebSocket protocol (tokio-tungstenite) over any stream — TCP for `ws://`, TLS for
//! `wss://`: the upgrade handshake, with its path, query and headers kept for
//! `on-websocket-connect`, then messages as bytes.
//!
//! Inbound text and binary frames both become bytes. Outbound bytes go out as a text frame
//! when they are valid UTF-8 and as a binary frame otherwise; the heartbeat's pings are ping
//! frames, and a close carries the code and reason [`Close`] chooses. Pongs to the client's
//! pings are sent by the library.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt, stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

use super::ReadError;
use crate::gateway::outbox::{Close, Outbound};
use crate::wire::messages::WebSocketRequest;

/// Initial read buffer per connection; larger messages grow it.
const READ_BUFFER: usize = 1024;

/// Why a WebSocket handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request's `Origin` (this one, or none) is not in `allowed_origins`: refused with 403.
    #[error("origin {0:?} is not allowed")]
    Origin(Option<String>),
    /// The handshake failed.
    #[error(transparent)]
    WebSocket(#[from] Error),
}

/// Completes the server side of the handshake and splits the connection; a request whose
/// `Origin` is not one of `allowed_origins` (unless that is empty) is answered 403. The
/// caller bounds how long this may take (`handshake_timeout`).
pub async fn accept<S>(
    socket: S,
    max_message_size: usize,
    allowed_origins: &[String],
) -> Result<
    (
        impl Stream<Item = Result<Bytes, ReadError>> + Unpin,
        impl Sink<Outbound, Error = Error> + Unpin,
        WebSocketRequest,
    ),
    HandshakeError,
>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let seen = Arc::new(Mutex::new(WebSocketRequest::default()));
    let record = seen.clone();
    let refused = Arc::new(Mutex::new(None));
    let refuse = refused.clone();
    #[allow(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback type fixes the error type"
    )]
    let callback = move |request: &Request, response: Response| {
        if !allowed_origins.is_empty() {
            let origin = request
                .headers()
                .get(http::header::ORIGIN)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let allowed = origin
                .as_deref()
                .is_some_and(|o| allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !allowed {
                *refuse.lock().unwrap_or_else(|e| e.into_inner()) = Some(origin);
                let mut forbidden = ErrorResponse::new(Some("origin not allowed".into()));
                *forbidden.status_mut() = http::StatusCode::FORBIDDEN;
                return Err(forbidden);
            }
        }
        let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
        seen.path = request.uri().path().to_owned();
        seen.query = request.uri().query().unwrap_or_default().to_owned();
        seen.headers = request
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(response)
    };
    // tungstenite allocates the whole read buffer per connection up front (128 KiB by
    // default): most connections are idle most of the time, so start small and let it grow.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(config))
        .await
        .map_err(
            |e| match refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(origin) => HandshakeError::Origin(origin),
                None => HandshakeError::WebSocket(e),
            },
        )?;
    let request = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let (sink, messages) = ws.split();
    let inbound = messages.filter_map(move |m| async move {
        match m {
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(Message::Binary(data)) => Some(Ok(data)),
            Ok(_) => None,
            Err(Error::Capacity(_)) => Some(Err(ReadError::TooLarge(max_message_size))),
            Err(Error::Io(e)) => Some(Err(ReadError::Io(e))),
            Err(e) => Some(Err(ReadError::Malformed(e.to_string()))),
        }
    });
    let outbound = sink.with_flat_map(|item: Outbound| {
        let messages = match item {
            Outbound::Data(data) => vec![frame(data)],
            Outbound::Ping(data) => vec![Message::Ping(data)],
            Outbound::Close(close) => {
                let farewell = match &close {
                    Close::Normal(Some(data)) => Some(frame(data.clone())),
                    _ => None,
                };
                let frame = CloseFrame {
                    code: close.ws_code().into(),
                    reason: close.ws_reason().into(),
                };
                farewell
                    .into_iter()
                    .chain([Message::Close(Some(frame))])
                    .collect()
            }
        };
        stream::iter(messages.into_iter().map(Ok))
    });
    Ok((Box::pin(inbound), Box::pin(outbound), request))
}

fn frame(data: Bytes) -> Message {
    if std::str::from_utf8(&data).is_ok() {
        // SAFETY: validated as UTF-8 on the line above.
        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(data) })
    } else {
        Message::Binary(data)
    }
}
