//! OpenTelemetry traces of invocations, exported over OTLP when the
//! standard variables name an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_EXPORTER_OTLP_PROTOCOL`
//! `http/protobuf` or `http/json`). An invocation is a server span, the
//! child of the request's W3C `traceparent` if it has one, with a span per
//! phase (queue, envelope, run; for wasm, instance and guest as the
//! worker timed them); the function gets the invocation span as
//! its `traceparent` (CGI `HTTP_TRACEPARENT`, the `wasi:http` request
//! header), and an outgoing request is a client span below whatever
//! `traceparent` it carries. Spans are exported in batches from a thread of
//! their own: a slow or absent collector costs dropped spans, never
//! request time.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Start exporting if an endpoint is configured. It starts a thread: call
/// it after the keepers are forked.
pub fn init() -> Result<()> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !configured || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none") {
        return Ok(());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("amphi-serve");
    }
    let provider = SdkTracerProvider::builder()
        .with_id_generator(Ids)
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("amphi-serve");
    let _ = TRACING.set(Tracing { provider, tracer });
    Ok(())
}

/// Whether invocations are traced.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// Export what is left, giving up after a moment (the collector may be gone).
pub fn shutdown() {
    if let Some(t) = TRACING.get() {
        let _ = t.provider.shutdown_with_timeout(Duration::from_secs(2));
    }
}

struct Headers<'a>(&'a hyper::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A span in progress, with the context its children and callees get.
pub struct Traced {
    cx: Context,
}

fn start(
    name: String,
    kind: SpanKind,
    headers: &hyper::HeaderMap,
    attributes: Vec<KeyValue>,
) -> Option<Traced> {
    let t = TRACING.get()?;
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let span = t
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(&t.tracer, &parent);
    Some(Traced {
        cx: parent.with_span(span),
    })
}

/// An invocation's server span (None when tracing is off).
pub fn invocation(
    function: &str,
    method: &str,
    path: &str,
    headers: &hyper::HeaderMap,
) -> Option<Traced> {
    start(
        format!("{method} {function}"),
        SpanKind::Server,
        headers,
        vec![
            KeyValue::new("faas.name", function.to_string()),
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path.to_string()),
        ],
    )
}

thread_local! {
    /// The ids the next span made on this thread takes: those a worker
    /// gave the function before the server exported its span.
    static GIVEN_IDS: std::cell::Cell<(Option<TraceId>, Option<SpanId>)> =
        const { std::cell::Cell::new((None, None)) };
}

/// Random ids, unless [`GIVEN_IDS`] says otherwise.
#[derive(Debug)]
struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        let (trace, span) = GIVEN_IDS.get();
        GIVEN_IDS.set((None, span));
        trace.unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        let (trace, span) = GIVEN_IDS.get();
        GIVEN_IDS.set((trace, None));
        span.unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}

/// For a worker serving its function's port, which runs the guest before
/// the server hears of the request: the client's `traceparent` (if
/// valid) and one for the invocation's span below it, for the guest.
pub fn new_invocation_context(headers: &hyper::HeaderMap) -> (Option<String>, String) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let parent = parent.span().span_context().clone();
    let ids = RandomIdGenerator::default();
    let span = ids.new_span_id();
    if parent.is_valid() {
        let client = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let flags = parent.trace_flags().to_u8();
        let ours = format!("00-{:032x}-{:016x}-{flags:02x}", parent.trace_id(), span);
        (client, ours)
    } else {
        let ours = format!("00-{:032x}-{:016x}-01", ids.new_trace_id(), span);
        (None, ours)
    }
}

/// The server span of an invocation a worker served, with the ids it gave
/// the function (`ours`, a `traceparent`).
pub fn served_invocation(
    function: &str,
    method: &str,
    path: &str,
    client: Option<&str>,
    ours: &str,
    started: SystemTime,
) -> Option<Traced> {
    let t = TRACING.get()?;
    let mut fields = hyper::HeaderMap::new();
    if let Some(v) = client.and_then(|c| hyper::header::HeaderValue::from_str(c).ok()) {
        fields.insert("traceparent", v);
    }
    let parent = TraceContextPropagator::new().extract(&Headers(&fields));
    let mut given = hyper::HeaderMap::new();
    given.insert(
        "traceparent",
        hyper::header::HeaderValue::from_str(ours).ok()?,
    );
    let given = TraceContextPropagator::new().extract(&Headers(&given));
    let given = given.span().span_context().clone();
    if !given.is_valid() {
        return None;
    }
    GIVEN_IDS.set((Some(given.trace_id()), Some(given.span_id())));
    let span = t
        .tracer
        .span_builder(format!("{method} {function}"))
        .with_kind(SpanKind::Server)
        .with_start_time(started)
        .with_attributes(vec![
            KeyValue::new("faas.name", function.to_string()),
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path.to_string()),
        ])
        .start_with_context(&t.tracer, &parent);
    GIVEN_IDS.set((None, None));
    Some(Traced {
        cx: parent.with_span(span),
    })
}

/// An outgoing request's client span, below the request's own
/// `traceparent` (the invocation's, as the function passed it on).
pub fn outbound(
    function: &str,
    method: &str,
    url: &str,
    headers: &hyper::HeaderMap,
) -> Option<Traced> {
    start(
        format!("{method} outbound"),
        SpanKind::Client,
        headers,
        vec![
            KeyValue::new("faas.name", function.to_string()),
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.full", url.to_string()),
        ],
    )
}

impl Traced {
    /// This span as a W3C `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut fields = HashMap::new();
        TraceContextPropagator::new().inject_context(&self.cx, &mut fields);
        fields.remove("traceparent").unwrap_or_default()
    }

    /// A finished child span: one phase of the work, timed by the caller.
    pub fn phase(&self, name: &'static str, from: SystemTime, to: SystemTime) {
        let Some(t) = TRACING.get() else { return };
        let mut span = t
            .tracer
            .span_builder(name)
            .with_start_time(from)
            .start_with_context(&t.tracer, &self.cx);
        span.end_with_timestamp(to);
    }

    pub fn end(
        self,
        status: Option<u16>,
        attributes: Vec<KeyValue>,
        error: Option<&str>,
        at: Option<SystemTime>,
    ) {
        let span = self.cx.span();
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        for a in attributes {
            span.set_attribute(a);
        }
        if let Some(e) = error {
            span.set_status(Status::error(e.to_string()));
        }
        match at {
            Some(at) => span.end_with_timestamp(at),
            None => span.end(),
        }
    }
}
