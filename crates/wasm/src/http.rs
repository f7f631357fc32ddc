//! `wasi:http/proxy` components, as `wasmtime serve` runs them, for
//! `amphi serve`: compiled and pre-instantiated once in the envelope, then
//! one fresh instance per request.
//!
//! A request is handled in a process of its own (the function worker forks
//! one per invocation): the head comes in memory, the body on stdin, and
//! the response goes out on stdout in CGI form (`Status:`, headers, a blank
//! line, the body), so the host reads every function's answer alike. The
//! guest's own stdout goes to stderr, the invocation's log.

use std::io::{Read, Write};

use amphi_core::executor::PrepareContext;
use amphi_core::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::{fail, store_limits, Cache, TRAP_EXIT};

/// The request line and headers of one invocation.
pub struct RequestHead {
    pub method: String,
    /// Path and query, as the client sent them.
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoNetwork,
    limits: StoreLimits,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A function's envelope has no network: outgoing requests are refused.
struct NoNetwork;

type Pending = Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for NoNetwork {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _response_done: Pending,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Pending)>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

pub struct Proxy {
    cache: Cache,
    memory_limit: Option<u64>,
    pre: Option<ProxyPre<HttpState>>,
}

impl Proxy {
    pub fn new(cache: Cache, memory_limit: Option<u64>) -> Proxy {
        Proxy {
            cache,
            memory_limit,
            pre: None,
        }
    }

    pub fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.cache.raw_fd().into_iter().collect()
    }

    /// Compile (or load from the cache) and link the component named by
    /// `process.args[0]`.
    pub fn prepare(&mut self, ctx: &PrepareContext) -> Result<()> {
        let arg0 = &ctx.process.args().as_ref().expect("validated")[0];
        let (path, bytes) = crate::Wasm::read_module(ctx, arg0)?;
        let what = format!("process.args[0] {}", path.display());
        if crate::flavor(&bytes) != Some(crate::Flavor::Component) {
            return Err(fail(format!(
                "{what}: not a WebAssembly component; interface \"http\" runs components \
                 of the wasi:http/proxy world"
            )));
        }
        let engine = crate::engine();
        let component: Component = self
            .cache
            .load_or_compile(
                engine,
                &bytes,
                |b| Component::new(engine, b),
                |c| c.serialize(),
                |a| {
                    // SAFETY: written by this cache for this engine's
                    // compatibility hash, checksum verified.
                    unsafe { Component::deserialize(engine, a) }
                },
            )
            .map_err(|e| fail(format!("{what}: {e:#}")))?;
        let mut linker = Linker::<HttpState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| fail(format!("link wasi:http: {e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(ProxyPre::new)
            .map_err(|e| {
                fail(format!(
                    "{what}: {e:#}; interface \"http\" runs components of the wasi:http/proxy world"
                ))
            })?;
        self.pre = Some(pre);
        self.cache.close();
        Ok(())
    }

    /// Handle one request (body on stdin) and write the response to stdout;
    /// the exit status of the invocation: 0, or [`TRAP_EXIT`] when the guest
    /// trapped or answered nothing.
    pub fn handle(&self, head: RequestHead, env: &[(String, String)]) -> i32 {
        match self.try_handle(head, env) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("amphi: wasi:http guest failed: {e:#}");
                TRAP_EXIT
            }
        }
    }

    fn try_handle(&self, head: RequestHead, env: &[(String, String)]) -> wasmtime::Result<()> {
        let pre = self.pre.clone().expect("prepare ran");
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        // The response owns stdout; what the guest prints goes to the log.
        let response = nix::unistd::dup(std::io::stdout())?;
        nix::unistd::dup2_stdout(std::io::stderr())?;
        let mut response = std::fs::File::from(response);

        let mut request = hyper::Request::builder()
            .method(head.method.as_str())
            .uri(head.uri.as_str());
        for (k, v) in &head.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request.body(Full::new(Bytes::from(body)))?;

        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr();
        wasi.envs(
            &env.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        let mut store = Store::new(
            pre.engine(),
            HttpState {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: NoNetwork,
                limits: store_limits(self.memory_limit),
            },
        );
        store.limiter(|s| &mut s.limits);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            let guest = tokio::task::spawn(async move {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            });
            let resp = match rx.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(code)) => wasmtime::bail!("the guest answered with error {code:?}"),
                Err(_) => {
                    guest.await??;
                    wasmtime::bail!("the guest never set a response");
                }
            };
            let (parts, mut body) = resp.into_parts();
            let mut head = format!("Status: {}\r\n", parts.status.as_u16());
            for (k, v) in &parts.headers {
                head.push_str(&format!(
                    "{}: {}\r\n",
                    k,
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
            head.push_str("\r\n");
            response.write_all(head.as_bytes())?;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    response.write_all(&data)?;
                }
            }
            guest.await??;
            Ok(())
        })
    }
}
