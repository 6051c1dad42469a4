//! Outbound HTTP: requests sent by the host through the standard
//! `wasi:http/outgoing-handler` (the bindings of the `wasip2` crate), wrapped for the common
//! case of one request, one whole response.
//!
//! The host sends a request only to origins the app is granted (`allowed_outbound_hosts` in
//! `[worker.grants.APP]`); any other fails with [`ErrorCode::HttpRequestDenied`]. A request
//! counts against the callback's `process_timeout`, and a response body over the host's
//! `max_http_response_body` fails with [`ErrorCode::HttpResponseBodySize`].
//!
//! ```no_run
//! match wasmgate_sdk::http::get("https://api.example.com/price") {
//!     Ok(response) if response.status == 200 => { /* use response.body */ }
//!     Ok(response) => { /* the server answered with an error status */ }
//!     Err(e) => { /* denied, unreachable, too slow, too large: e says which */ }
//! }
//! ```
//!
//! For streaming bodies, trailers or request options, use [`wasi`] (the whole interface)
//! directly.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, FutureIncomingResponse, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// The standard bindings (`wasi:http/types`, `wasi:http/outgoing-handler`) this module wraps.
pub use wasip2::http as wasi;
pub use wasip2::http::types::{ErrorCode, Method};

/// Bytes read from or written to a body stream at a time.
const CHUNK: u64 = 64 << 10;

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Every header, names lower-cased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub enum Error {
    /// The URL is not `scheme://authority[/path][?query]`, or a header is not allowed.
    Invalid(String),
    /// The host or the network refused or failed the request, in `wasi:http`'s words:
    /// `HttpRequestDenied` when the origin is not granted, a timeout when the callback's
    /// time ran out, `HttpResponseBodySize` when the body announced is over the host's limit.
    /// A body that fails while it is read (cut at the limit as the excess arrives, a timeout,
    /// a broken connection) is `InternalError` with the host's reason as text: the host's
    /// wasi:http (wasmtime-wasi-http 48) reports body errors without an error code.
    Http(ErrorCode),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid request: {why}"),
            Error::Http(code) => write!(f, "{}", describe(code)),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Error::Http(code)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    send(Method::Get, url, &[], &[])
}

/// Sends one request with `headers` and `body` (empty: none) and reads the whole response.
pub fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response, Error> {
    let (request, outgoing) = prepare(method, url, headers)?;
    // Handed over first, then the body written: the host streams it as it comes.
    let future = outgoing_handler::handle(request, None)?;
    if !body.is_empty() {
        let stream = outgoing
            .write()
            .map_err(|()| Error::Invalid(format!("body of {url:?}")))?;
        for chunk in body.chunks(CHUNK as usize) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(stream_error)?;
        }
    }
    OutgoingBody::finish(outgoing, None)?;
    read(future)
}

/// Sends a request without a body and returns at once with its pending response, for several
/// requests in flight together: wait with `future.subscribe().block()`, then `future.get()`.
/// Each counts against the host's `max_http_requests` until its response body is read to the
/// end or dropped.
pub fn start(
    method: Method,
    url: &str,
    headers: &[(&str, &[u8])],
) -> Result<FutureIncomingResponse, Error> {
    let (request, outgoing) = prepare(method, url, headers)?;
    let future = outgoing_handler::handle(request, None)?;
    OutgoingBody::finish(outgoing, None)?;
    Ok(future)
}

/// The request for `url` with `headers`, and its body to write.
fn prepare(
    method: Method,
    url: &str,
    headers: &[(&str, &[u8])],
) -> Result<(OutgoingRequest, OutgoingBody), Error> {
    let (scheme, authority, path) = split_url(url)?;
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    let fields =
        Fields::from_list(&fields).map_err(|e| Error::Invalid(format!("headers: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let invalid = |what: &str| Error::Invalid(format!("{what} of {url:?}"));
    request
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| invalid("body"))?;
    Ok((request, outgoing))
}

/// Waits for `future`'s response and reads all of it.
fn read(future: FutureIncomingResponse) -> Result<Response, Error> {
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(response)) => response?,
        _ => return Err(Error::Http(ErrorCode::InternalError(None))),
    };
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error::Http(ErrorCode::InternalError(None)))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::Http(ErrorCode::InternalError(None)))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(CHUNK) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The `wasi:http` error behind a failed stream operation.
fn stream_error(e: StreamError) -> Error {
    match e {
        StreamError::LastOperationFailed(e) => Error::Http(
            wasi::types::http_error_code(&e)
                .unwrap_or_else(|| ErrorCode::InternalError(Some(e.to_debug_string()))),
        ),
        StreamError::Closed => Error::Http(ErrorCode::HttpResponseIncomplete),
    }
}

/// `scheme://authority/path?query` split into its request parts; the path defaults to `/`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let invalid = || Error::Invalid(format!("{url:?} is not an http(s) URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid());
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// The name of `wasi:http`'s error code as the WIT spells it, e.g. `HTTP-request-denied`.
pub fn describe(code: &ErrorCode) -> String {
    let debug = format!("{code:?}");
    let name = debug.split('(').next().unwrap_or_default();
    let name = name.rsplit("::").next().unwrap_or(name);
    let mut kebab = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kebab.push('-');
        }
        kebab.push(c.to_ascii_lowercase());
    }
    // The WIT spells these words in upper case.
    for word in ["http", "dns", "tls"] {
        if kebab == word || kebab.starts_with(&format!("{word}-")) {
            kebab.replace_range(..word.len(), &word.to_ascii_uppercase());
        }
    }
    kebab
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_request_parts() {
        let (s, a, p) = split_url("http://127.0.0.1:8080/x?y=1").unwrap();
        assert!(matches!(s, Scheme::Http));
        assert_eq!((a, p), ("127.0.0.1:8080", "/x?y=1"));
        let (s, a, p) = split_url("https://api.example.com").unwrap();
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("api.example.com", "/"));
        assert_eq!(split_url("https://h?q").unwrap().2, "?q");
        for bad in ["api.example.com", "ftp://x/", "http:///x", "http://"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_codes_read_as_in_the_wit() {
        assert_eq!(
            describe(&ErrorCode::HttpRequestDenied),
            "HTTP-request-denied"
        );
        assert_eq!(
            describe(&ErrorCode::ConnectionRefused),
            "connection-refused"
        );
        assert_eq!(
            describe(&ErrorCode::HttpResponseBodySize(Some(10))),
            "HTTP-response-body-size"
        );
        assert_eq!(describe(&ErrorCode::DnsTimeout), "DNS-timeout");
    }
}
