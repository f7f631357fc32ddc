//! A `wasi:http/proxy` component as a container's process: an HTTP server
//! in the container's own network namespace, a fresh instance per request
//! on the pooling allocator (as `wasmtime serve` and runwasi's wasmtime
//! shim run one), so a wasm HTTP service can sit in a pod beside native
//! sidecars. `kill` and `delete` end it like any guest (see
//! `executor::stop_on_signals`).

use std::net::{Ipv4Addr, SocketAddr};

use amphi_core::{Error, Result};
use oci_spec::runtime::{Process, Spec};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::function::Function;
use crate::guest::fail;

/// The annotation that names the port the service listens on.
pub const PORT_ANNOTATION: &str = "amphi.io/http-port";
/// `wasmtime serve`'s port, and runwasi's.
pub const DEFAULT_PORT: u16 = 8080;

/// Whether a component is an HTTP service: it names wasi:http 0.2's
/// incoming handler or 0.3's handler. Decided before compiling, since a
/// command and a service are compiled for different engines (the
/// service's pools instances).
pub fn exports_incoming_handler(bytes: &[u8]) -> bool {
    [
        &b"wasi:http/incoming-handler@"[..],
        b"wasi:http/handler@0.3",
    ]
    .iter()
    .any(|name| bytes.windows(name.len()).any(|w| w == *name))
}

/// The port from the spec's annotation, or the default.
pub fn port(spec: &Spec) -> Result<u16> {
    let Some(value) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(PORT_ANNOTATION))
    else {
        return Ok(DEFAULT_PORT);
    };
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            fail(format!(
                "annotations[{PORT_ANNOTATION:?}]: {value:?} is not a port; give 1 to 65535"
            ))
        })
}

/// Serve until a signal ends the process; returns only on an error.
pub fn serve(function: Function, port: u16, process: &Process) -> Error {
    crate::function::start_epoch_ticker();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("wasi:http service: tokio runtime: {e}")),
    };
    let args = process.args().clone().unwrap_or_default();
    let env: Vec<(String, String)> = process
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let function = std::rc::Rc::new(function);
    runtime.block_on(async move {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(l) => l,
            Err(e) => {
                return fail(format!(
                    "wasi:http service: listen on {address}: {e}; choose another port with \
                     the {PORT_ANNOTATION} annotation"
                ))
            }
        };
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                loop {
                    let (stream, _) = match listener.accept().await {
                        Ok(s) => s,
                        // Out of fds or memory for a moment: the next
                        // connection may fare better.
                        Err(_) => continue,
                    };
                    let (function, args, env) = (function.clone(), args.clone(), env.clone());
                    tokio::task::spawn_local(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let function = function.clone();
                            let mut wasi = WasiCtxBuilder::new();
                            wasi.args(&args).inherit_stdout().inherit_stderr();
                            for (k, v) in &env {
                                wasi.env(k, v);
                            }
                            async move {
                                let response = function
                                    .handle(wasi.build(), request)
                                    .await
                                    .unwrap_or_else(|e| {
                                        eprintln!("amphi: wasi:http request failed: {e:#}");
                                        internal_error()
                                    });
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                        // A client that goes away mid-request ends only its
                        // own connection.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
            .await
    })
}

/// What the client gets when the guest traps or answers nothing.
fn internal_error() -> hyper::Response<HyperOutgoingBody> {
    use http_body_util::BodyExt;
    let mut response = hyper::Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_annotation() {
        let spec = |port: Option<&str>| -> Spec {
            let mut v = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
            if let Some(p) = port {
                v["annotations"] = serde_json::json!({ PORT_ANNOTATION: p });
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(port(&spec(None)).unwrap(), 8080);
        assert_eq!(port(&spec(Some("9000"))).unwrap(), 9000);
        for bad in ["0", "70000", "http", ""] {
            let e = port(&spec(Some(bad))).unwrap_err().to_string();
            assert!(e.contains(PORT_ANNOTATION), "{e}");
        }
    }
}
