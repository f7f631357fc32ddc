//! Outgoing `wasi:http` requests of functions: both ends of the way out.
//!
//! A function's envelope has no network of its own. An outgoing request
//! is sent, unchanged and with its absolute URI, over a stream socket the
//! worker gets from the host ([`Dialer`]): the host is an HTTP forward
//! proxy on that socket, which checks the URI against the function's
//! `allowed_outbound_hosts`, makes the request from its own network
//! namespace with its own timeouts and body limits ([`send`]), and streams
//! the answer back. A refusal or a failure the host meets comes back as a
//! response carrying [`ERROR_HEADER`], which the worker turns into the
//! `wasi:http` error the guest sees ([`Hooks`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::io::TokioIo;
pub use wasmtime_wasi_http::{Error, WasiBody};
use wasmtime_wasi_http::{RequestOptions, WasiHttpHooks};

/// The header of a host's answer that is not the backend's: its value
/// names the `wasi:http` error (see [`error_kind`]).
pub const ERROR_HEADER: &str = "amphi-outbound-error";

/// Connects the worker to the host's proxy for one outgoing request.
pub type Dialer = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<tokio::net::UnixStream>> + Send>>
        + Send
        + Sync,
>;

type Pending = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// How long the worker waits for the host when the guest says nothing:
/// the invocation's own timeout ends it sooner.
const GUEST_DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The `wasi:http` hooks of a function's instances: outgoing requests go
/// to the host, or are denied when the function may call nothing.
#[derive(Clone, Default)]
pub struct Hooks {
    pub(crate) dial: Option<Dialer>,
    /// The W3C trace context of the request being handled, given to its
    /// outgoing requests that have none (the host's trace links them).
    pub(crate) traceparent: Option<http::HeaderValue>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Pending,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Pending)>> + Send,
    > {
        let dial = self.dial.clone();
        if let Some(tp) = &self.traceparent {
            if !request.headers().contains_key("traceparent") {
                request.headers_mut().insert("traceparent", tp.clone());
            }
        }
        Box::new(async move {
            let dial = dial.ok_or(Error::HttpRequestDenied)?;
            let connect = options
                .and_then(|o| o.connect_timeout)
                .unwrap_or(GUEST_DEFAULT_TIMEOUT);
            let first_byte = options
                .and_then(|o| o.first_byte_timeout)
                .unwrap_or(GUEST_DEFAULT_TIMEOUT);
            let stream = tokio::time::timeout(connect, dial())
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Connect)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let io = tokio::spawn(conn);
            // The URI stays absolute: it is a forward proxy's request form,
            // and the host routes by it.
            let response = tokio::time::timeout(first_byte, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)??;
            if let Some(kind) = response.headers().get(ERROR_HEADER) {
                return Err(error_from_kind(kind.to_str().unwrap_or("")));
            }
            let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
            let io: Pending = Box::new(async move {
                match io.await {
                    Ok(r) => r.map_err(Error::from),
                    Err(_) => Err(Error::ConnectionTerminated),
                }
            });
            Ok((response, io))
        })
    }
}

/// The host's limits on one outgoing request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connect: Duration,
    /// To the first byte of the answer, and between its bytes.
    pub idle: Duration,
    /// Of the request's body and of the answer's.
    pub body: usize,
}

/// Make an allowed request from the host. `request` is what the worker
/// sent: its URI is absolute.
pub async fn send(
    request: http::Request<hyper::body::Incoming>,
    limits: Limits,
) -> Result<http::Response<WasiBody>, Error> {
    let (mut head, body) = request.into_parts();
    // Hop-by-hop headers are the connection to the host's, not the backend's.
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        head.headers.remove(name);
    }
    // The backend's virtual host is the one the allow-list was checked
    // against, whatever a worker sent.
    let host = head.uri.authority().map(|a| a.as_str().parse());
    if let Some(Ok(host)) = host {
        head.headers.insert(http::header::HOST, host);
    }
    let body = Limited::new(body, limits.body)
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => Error::from(*e),
            Err(_) => Error::HttpRequestBodySize(None),
        })
        .boxed_unsync();
    let options = RequestOptions {
        connect_timeout: Some(limits.connect),
        first_byte_timeout: Some(limits.idle),
        between_bytes_timeout: Some(limits.idle),
    };
    let (response, io) = wasmtime_wasi_http::default_send_request(
        http::Request::from_parts(head, body),
        Some(options),
    )
    .await?;
    tokio::spawn(io);
    Ok(response.map(|body| {
        Limited::new(body, limits.body)
            .map_err(|e| match e.downcast::<Error>() {
                Ok(e) => *e,
                Err(_) => Error::HttpResponseBodySize(None),
            })
            .boxed_unsync()
    }))
}

/// The host's answer for a request it did not make or that failed: the
/// worker reads the kind from [`ERROR_HEADER`], a person the body.
pub fn refusal(error: &Error, why: &str) -> http::Response<WasiBody> {
    let status = match error {
        Error::HttpRequestDenied => http::StatusCode::FORBIDDEN,
        _ => http::StatusCode::BAD_GATEWAY,
    };
    http::Response::builder()
        .status(status)
        .header(ERROR_HEADER, error_kind(error))
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(format!("{why}\n")))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("refusal response")
}

/// The name of a `wasi:http` error on the way from host to worker. Errors
/// with details travel without them (the host logs them).
pub fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::HttpRequestDenied => "denied",
        Error::DnsTimeout | Error::DnsError { .. } | Error::DestinationNotFound => "not-found",
        Error::ConnectionRefused | Error::Connect(_) => "connection-refused",
        Error::ConnectionTimeout => "connection-timeout",
        Error::ConnectionReadTimeout | Error::HttpResponseTimeout => "read-timeout",
        Error::HttpRequestBodySize(_) => "request-body-size",
        Error::HttpResponseBodySize(_) => "response-body-size",
        Error::HttpRequestUriInvalid => "uri-invalid",
        Error::Tls(_)
        | Error::InvalidDnsNameError(_)
        | Error::TlsProtocolError
        | Error::TlsCertificateError
        | Error::TlsAlertReceived { .. } => "tls",
        _ => "protocol",
    }
}

fn error_from_kind(kind: &str) -> Error {
    match kind {
        "denied" => Error::HttpRequestDenied,
        "not-found" => Error::DestinationNotFound,
        "connection-refused" => Error::ConnectionRefused,
        "connection-timeout" => Error::ConnectionTimeout,
        "read-timeout" => Error::HttpResponseTimeout,
        "request-body-size" => Error::HttpRequestBodySize(None),
        "response-body-size" => Error::HttpResponseBodySize(None),
        "uri-invalid" => Error::HttpRequestUriInvalid,
        "tls" => Error::TlsProtocolError,
        _ => Error::HttpProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_survive_the_way_back() {
        for e in [
            Error::HttpRequestDenied,
            Error::DestinationNotFound,
            Error::ConnectionRefused,
            Error::ConnectionTimeout,
            Error::HttpResponseTimeout,
            Error::HttpRequestBodySize(None),
            Error::HttpResponseBodySize(None),
            Error::HttpRequestUriInvalid,
            Error::TlsProtocolError,
            Error::HttpProtocolError,
        ] {
            let back = error_from_kind(error_kind(&e));
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
    }
}
