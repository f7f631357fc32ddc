//! `amphi serve` over real HTTP on loopback: CGI functions in wasm and
//! native code, a wasi:http component, an OCI bundle; every failure mode
//! with its status code; limits, isolation between invocations, metrics,
//! scale to zero, the strict pool, start-up errors and shutdown, each
//! followed by the check that nothing is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amphi_tests::serve::{manifest, native_cgi, wasm_guest, Serve};
use amphi_tests::{wait_for, Env};

fn functions(env: &Env) -> PathBuf {
    env.tmp.path().join("functions")
}

fn cgi_pair(env: &Env, extra: &str) -> PathBuf {
    let dir = functions(env);
    manifest(
        &dir,
        "wcgi",
        &format!(
            "route = \"/w\"\nmodule = {:?}\nmemory = \"96Mi\"\nenv = {{ GREETING = \"hi\" }}\n{extra}",
            wasm_guest("cgi.wasm")
        ),
    );
    manifest(
        &dir,
        "ncgi",
        &format!(
            "route = \"/n\"\nprogram = {:?}\nmemory = \"96Mi\"\nenv = {{ GREETING = \"hi\" }}\n{extra}",
            native_cgi()
        ),
    );
    dir
}

#[test]
fn cgi_functions_in_wasm_and_native_round_trip() {
    let env = Env::new();
    let mut s = Serve::start(&env, &cgi_pair(&env, ""), &[]).unwrap();
    assert_eq!(s.get("/w").text(), "hello from wasm\n");
    assert_eq!(s.get("/n").text(), "hello from native\n");
    for (route, kind) in [("/w", "wasm"), ("/n", "native")] {
        let r = s.client().request(
            "POST",
            &format!("{route}/echo?a=1&b=two"),
            &[
                ("X-Test", "t-value"),
                ("Content-Type", "application/octet-stream"),
            ],
            b"the body\0bytes",
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("x-echo"), Some(kind));
        let text = r.text();
        for want in [
            "method=POST\n",
            &format!("script={route}\n"),
            "query=a=1&b=two\n",
            "x-test=t-value\n",
            "content-type=application/octet-stream\n",
            "content-length=14\n",
            "greeting=hi\n",
        ] {
            assert!(text.contains(want), "{kind}: {want:?} missing in {text:?}");
        }
        assert!(
            r.body.ends_with(b"body=the body\0bytes"),
            "{kind}: {text:?}"
        );
        let r = s.get(&format!("{route}/status?418"));
        assert_eq!((r.status, r.text().as_str()), (418, "custom status\n"));
        let r = s.get(&format!("{route}/location"));
        assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
    }
    assert_eq!(s.get("/nowhere").status, 404);
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn an_invocation_is_the_functions_process_not_the_worker() {
    let env = Env::new();
    let mut s = Serve::start(&env, &cgi_pair(&env, ""), &[]).unwrap();
    // The worker keeps CAP_SYS_ADMIN and friends to set each invocation up;
    // the invocation itself has none of them, no_new_privs and the filter.
    let me = s.get("/n/self").text();
    for want in [
        "Uid: 0 0 0 0",
        "CapEff: 0000000000000000",
        "CapPrm: 0000000000000000",
        "CapBnd: 0000000000000000",
        "NoNewPrivs: 1",
        "Seccomp: 2",
    ] {
        assert!(me.contains(want), "{want:?} missing in:\n{me}");
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn wasi_http_component() {
    let env = Env::new();
    let dir = manifest(
        &functions(&env),
        "http",
        &format!(
            "module = {:?}\ninterface = \"http\"\n",
            wasm_guest("http-hello.wasm")
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let r = s.get("/http/hi?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amphi"), Some("wasi-http"));
    assert_eq!(
        r.text(),
        "hello from wasi:http\nmethod=Method::Get\npath=/http/hi?x=1\nbody=0\n"
    );
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = s.client().request("POST", "/http/echo", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body, "the body came back changed");
    let r = s.get("/http/trap");
    assert_eq!(r.status, 502);
    // The worker that served it reports it after answering.
    assert!(
        wait_for(10, || s.log_text().contains("trapping on purpose")),
        "the trap's message goes to the log"
    );
    assert_eq!(
        s.get("/http/again").status,
        200,
        "a trap fails that request only"
    );
    // In the same worker: the keeper loaded the module before cloning the
    // envelope, so wasmtime's trap handlers came from the keeper, and the
    // envelope's init kept them (reset, the trap would end the worker).
    assert!(
        wait_for(10, || s.log().iter().any(|l| l["path"] == "/http/again")),
        "{}",
        s.log_text()
    );
    let envelope_of = |path: &str| {
        s.log()
            .into_iter()
            .find(|l| l["path"] == path)
            .map(|l| l["envelope"].clone())
    };
    assert_eq!(
        envelope_of("/http/trap"),
        envelope_of("/http/again"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// The three isolation levels, seen from a guest global that counts the
/// requests its instance served: a fresh instance (and a fresh envelope)
/// always says 1; a reused one counts on until it is retired, and an
/// instance that trapped is never reused.
#[test]
fn isolation_levels_decide_what_a_request_sees() {
    let env = Env::new();
    let dir = functions(&env);
    let component = wasm_guest("http-hello.wasm");
    for (name, level) in [
        ("inst", "isolation = \"instance\""),
        ("env", "isolation = \"envelope\""),
        ("reuse", "isolation = \"reuse\"\nreuse = 3"),
    ] {
        manifest(
            &dir,
            name,
            &format!("module = {component:?}\ninterface = \"http\"\nconcurrency = 1\n{level}\n"),
        );
    }
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let counts = |route: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let r = s.get(&format!("/{route}/count"));
                assert_eq!(r.status, 200, "{route}: {}", r.text());
                r.text().trim().to_string()
            })
            .collect()
    };
    assert_eq!(counts("inst", 3), ["count=1"; 3]);
    assert_eq!(counts("env", 2), ["count=1"; 2]);
    // Three requests an instance, then a fresh one.
    assert_eq!(
        counts("reuse", 5),
        ["count=1", "count=2", "count=3", "count=1", "count=2"]
    );
    assert_eq!(s.get("/reuse/trap").status, 502);
    assert_eq!(
        counts("reuse", 1),
        ["count=1"],
        "a trapped instance was reused"
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A fresh instance finds its module's image, not what the invocation
/// before it wrote: the pool gives a module back the slot it had, and only
/// the slot's reset keeps one invocation's memory from the next (a static
/// with a value in the module's data, a zeroed one, and pages the memory
/// grew by, each written all over by every invocation).
#[test]
fn invocations_start_from_clean_memory() {
    let env = Env::new();
    let dir = functions(&env);
    manifest(
        &dir,
        "residue",
        &format!("module = {:?}\nconcurrency = 1\n", wasm_guest("cgi.wasm")),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    for i in 0..8 {
        let r = s.get("/residue/residue");
        assert_eq!(
            (r.status, r.text().trim()),
            (200, "clean"),
            "invocation {i}"
        );
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A `wasi:http@0.3` function (an async `handle`, the body a 0.3 stream)
/// serves at every isolation level; at "reuse" a kept instance serves
/// several requests at once (`reuse_concurrency`), each a task in its
/// event loop, as `wasmtime serve` does for 0.3: three requests that each
/// wait, in the guest, until three are in flight in their instance all
/// answer. A trap ends that instance; the next request gets a fresh one.
#[test]
fn a_wasi_http_0_3_function_serves_requests_at_once_in_one_instance() {
    let env = Env::new();
    let dir = functions(&env);
    let component = wasm_guest("p3-http.wasm");
    for (name, level) in [
        ("inst", "isolation = \"instance\""),
        ("env", "isolation = \"envelope\""),
        (
            "kept",
            "isolation = \"reuse\"\nreuse = 100\nreuse_concurrency = 4\nconcurrency = 8",
        ),
    ] {
        manifest(
            &dir,
            name,
            &format!("module = {component:?}\ninterface = \"http\"\n{level}\n"),
        );
    }
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    for route in ["inst", "env", "kept"] {
        let r = s.get(&format!("/{route}/hi"));
        assert_eq!(r.status, 200, "{route}: {}", r.text());
        assert_eq!(
            r.text(),
            format!("hello from wasi:http 0.3: GET /{route}/hi\n")
        );
    }
    assert_eq!(s.get("/inst/count").text(), "count=1\n");
    // At once, in the instance that served /kept/hi.
    let addr = s.addr;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                std::io::Write::write_all(
                    &mut c,
                    b"GET /kept/together/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut c, &mut text).unwrap();
                text
            })
        })
        .collect();
    for w in waiting {
        let text = w.join().unwrap();
        assert!(text.ends_with("together=3\n"), "{text}");
    }
    assert_eq!(s.get("/kept/count").text(), "count=5\n");
    assert_eq!(s.get("/kept/trap").status, 502);
    assert_eq!(
        s.get("/kept/count").text(),
        "count=1\n",
        "a trapped instance was reused"
    );
    assert_eq!(s.get("/inst/trap").status, 502);
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A loopback HTTP/1.1 backend that answers every request with what it
/// saw, and records it.
struct Backend {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Backend {
    fn start() -> Backend {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        // The thread ends with the test process; it holds no other resource.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let (mut host, mut length, mut chunked) = (String::new(), 0usize, false);
                let mut traceparent = String::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let (name, value) = h.split_once(':').unwrap_or((&h, ""));
                    match name.to_ascii_lowercase().as_str() {
                        "host" => host = value.trim().to_string(),
                        "traceparent" => traceparent = format!(" traceparent={}", value.trim()),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "transfer-encoding" => chunked = value.trim() == "chunked",
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                while chunked {
                    let mut size = String::new();
                    let _ = reader.read_line(&mut size);
                    let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0; n + 2];
                    let _ = reader.read_exact(&mut chunk);
                    body.extend_from_slice(&chunk[..n]);
                    chunked = n > 0;
                }
                let mut words = line.split_whitespace();
                let saw = format!(
                    "{} {} host={host}{traceparent} body={}",
                    words.next().unwrap_or(""),
                    words.next().unwrap_or(""),
                    String::from_utf8_lossy(&body)
                );
                record.lock().unwrap().push(saw.clone());
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{saw}",
                    saw.len()
                );
            }
        });
        Backend { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Outgoing wasi:http requests leave through the host, to exactly the
/// URL prefixes of `allowed_outbound_hosts`: the rest fail that request
/// with the guest seeing `HTTP-request-denied`, the host logging why, and
/// no connection made; a function without the list calls nothing.
#[test]
fn outbound_requests_reach_exactly_the_allowed_hosts() {
    let env = Env::new();
    let dir = functions(&env);
    let component = wasm_guest("http-hello.wasm");
    let (allowed, other) = (Backend::start(), Backend::start());
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    manifest(
        &dir,
        "out",
        &format!(
            "module = {component:?}\ninterface = \"http\"\nallowed_outbound_hosts = [\"http://127.0.0.1:{}/allowed\", \"http://127.0.0.1:{down}\"]\n",
            allowed.port
        ),
    );
    manifest(
        &dir,
        "closed",
        &format!("module = {component:?}\ninterface = \"http\"\n"),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let fetch = |s: &Serve, route: &str, spec: String| {
        let r = s
            .client()
            .request("POST", &format!("/{route}/fetch"), &[], spec.as_bytes());
        (r.status, r.text())
    };
    let a = allowed.port;
    assert_eq!(
        fetch(&s, "out", format!("http://127.0.0.1:{a}/allowed/x\nping")),
        (
            200,
            format!("status=200\nPOST /allowed/x host=127.0.0.1:{a} body=ping")
        )
    );
    for url in [
        format!("http://127.0.0.1:{a}/other"),
        format!("http://127.0.0.1:{a}/allowedx"),
        format!("http://127.0.0.1:{a}/allowed/%2e%2e/other"),
        format!("http://localhost:{a}/allowed/x"),
        format!("http://127.0.0.1:{}/allowed/x", other.port),
    ] {
        let (status, text) = fetch(&s, "out", url.clone());
        assert_eq!(
            (status, text.as_str()),
            (502, "error=ErrorCode::HttpRequestDenied\n"),
            "{url}"
        );
    }
    let (status, text) = fetch(&s, "out", format!("http://127.0.0.1:{down}/"));
    assert_eq!(status, 502);
    assert!(text.contains("ConnectionRefused"), "{text}");
    assert_eq!(
        fetch(&s, "closed", format!("http://127.0.0.1:{a}/allowed/x")),
        (502, "error=ErrorCode::HttpRequestDenied\n".to_string()),
        "a function without allowed_outbound_hosts called out"
    );
    assert_eq!(s.get("/out/hi").status, 200, "the server lives on");
    assert_eq!(
        allowed.seen(),
        [format!("POST /allowed/x host=127.0.0.1:{a} body=ping")],
        "the backend saw more than the allowed request"
    );
    assert!(other.seen().is_empty(), "a host off the list was reached");
    let denied: Vec<_> = s
        .log()
        .into_iter()
        .filter(|l| l["msg"] == "outbound" && l["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 5, "{denied:?}");
    for l in &denied {
        assert_eq!(l["function"], "out");
        let error = l["error"].as_str().unwrap();
        assert!(error.contains("not in allowed_outbound_hosts"), "{error}");
    }
    let text = s.get("/metrics").text();
    for want in [
        "amphi_outbound_requests_total{function=\"out\",outcome=\"sent\"} 1",
        "amphi_outbound_requests_total{function=\"out\",outcome=\"denied\"} 5",
        "amphi_outbound_requests_total{function=\"out\",outcome=\"failed\"} 1",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A native CGI function reaches the same allow-list through the proxy its
/// invocations find in `http_proxy` and `https_proxy`: plain requests in
/// the forward-proxy form, and CONNECT tunnels to hosts an https entry
/// without a path allows.
#[test]
fn native_cgi_requests_go_out_through_the_hosts_proxy() {
    let env = Env::new();
    let (backend, other) = (Backend::start(), Backend::start());
    let a = backend.port;
    let dir = functions(&env);
    manifest(
        &dir,
        "nout",
        &format!(
            "program = {:?}\nallowed_outbound_hosts = [\"http://127.0.0.1:{a}/allowed\", \"https://127.0.0.1:{a}\"]\n",
            native_cgi()
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let fetched = s
        .get(&format!("/nout/fetch?http://127.0.0.1:{a}/allowed/n"))
        .text();
    assert!(fetched.starts_with("HTTP/1.1 200 OK\r\n"), "{fetched}");
    assert!(
        fetched.ends_with(&format!("GET /allowed/n host=127.0.0.1:{a} body=")),
        "{fetched}"
    );
    let denied = s
        .get(&format!("/nout/fetch?http://127.0.0.1:{a}/other"))
        .text();
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("amphi-outbound-error: denied"), "{denied}");
    let tunnelled = s.get(&format!("/nout/tunnel?127.0.0.1:{a}/through")).text();
    assert!(tunnelled.starts_with("HTTP/1.1 200 OK\r\n"), "{tunnelled}");
    assert!(
        tunnelled.ends_with(&format!("GET /through host=127.0.0.1:{a} body=")),
        "{tunnelled}"
    );
    let refused = s
        .get(&format!("/nout/tunnel?127.0.0.1:{}/x", other.port))
        .text();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert_eq!(
        backend.seen(),
        [
            format!("GET /allowed/n host=127.0.0.1:{a} body="),
            format!("GET /through host=127.0.0.1:{a} body="),
        ]
    );
    assert!(other.seen().is_empty(), "a host off the list was reached");
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// Invocations are traced over OTLP (here JSON, to a collector the test
/// runs): a server span below the client's `traceparent` with its phases,
/// the function seeing that span as its `traceparent`, and an outgoing
/// request a client span below it whose context reaches the backend. A
/// collector that is down costs nothing but the spans.
#[test]
fn invocations_are_traced_over_otlp() {
    let env = Env::new();
    let (collector, backend) = (Backend::start(), Backend::start());
    let dir = functions(&env);
    manifest(&dir, "traced", &format!("program = {:?}\n", native_cgi()));
    manifest(
        &dir,
        "tout",
        &format!(
            "module = {:?}\ninterface = \"http\"\nallowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n",
            wasm_guest("http-hello.wasm"),
            backend.port
        ),
    );
    // Served by its worker on a port of its own: the worker names the
    // span the server exports afterwards.
    manifest(
        &dir,
        "tport",
        &format!(
            "module = {:?}\ninterface = \"http\"\nlisten = \"127.0.0.1:0\"\nallowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n",
            wasm_guest("http-hello.wasm"),
            backend.port
        ),
    );
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ];
    let mut s = Serve::start_with_env(&env, &dir, &[], &otel).unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let seen = s
        .client()
        .request(
            "GET",
            "/traced/env?HTTP_TRACEPARENT",
            &[("traceparent", &parent)],
            b"",
        )
        .text();
    let fields: Vec<&str> = seen.split('-').collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert_eq!(fields[1], trace_id, "the function is in the client's trace");
    assert_ne!(
        fields[2], "b7ad6b7169203331",
        "the function's parent is the invocation span"
    );
    let invocation_span = fields[2].to_string();
    let spec = format!("http://127.0.0.1:{}/traced-call", backend.port);
    let r = s.client().request(
        "POST",
        "/tout/fetch",
        &[("traceparent", &parent)],
        spec.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let spec = format!("http://127.0.0.1:{}/port-call", backend.port);
    let r = amphi_tests::serve::Client::new(s.port_of("tport")).request(
        "POST",
        "/tport/fetch",
        &[("traceparent", &parent)],
        spec.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);

    // The exported spans, by name.
    let mut spans = Vec::new();
    for export in collector.seen() {
        let body = export.split_once(" body=").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        for rs in v["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                spans.extend(ss["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    let named = |name: &str| -> Vec<&serde_json::Value> {
        spans.iter().filter(|s| s["name"] == name).collect()
    };
    let server = named("GET traced");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server["traceId"], trace_id);
    assert_eq!(server["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(server["spanId"], invocation_span.as_str());
    let phases_below = |invocation: &serde_json::Value, phases: &[&str]| {
        for phase in phases {
            assert!(
                named(phase)
                    .iter()
                    .any(|p| p["parentSpanId"] == invocation["spanId"] && p["traceId"] == trace_id),
                "no {phase} span below {}: {spans:#?}",
                invocation["name"]
            );
        }
    };
    phases_below(server, &["queue", "envelope", "run"]);
    // A wasm function on the server's port: its worker was handed the
    // connection, so its phases are those of a function's own port.
    let wasm = named("POST tout");
    assert_eq!(wasm.len(), 1, "{spans:#?}");
    assert_eq!(wasm[0]["parentSpanId"], "b7ad6b7169203331");
    phases_below(wasm[0], &["queue", "run", "instance", "guest"]);
    let port = named("POST tport");
    assert_eq!(port.len(), 1, "{spans:#?}");
    assert_eq!(port[0]["traceId"], trace_id);
    assert_eq!(port[0]["parentSpanId"], "b7ad6b7169203331");
    phases_below(port[0], &["queue", "run", "instance", "guest"]);
    let outbound = named("GET outbound");
    assert_eq!(outbound.len(), 2, "{spans:#?}");
    let backend_saw = backend.seen();
    assert_eq!(backend_saw.len(), 2);
    for invocation in [wasm[0], port[0]] {
        let out = outbound
            .iter()
            .find(|o| o["parentSpanId"] == invocation["spanId"])
            .unwrap_or_else(|| panic!("no outgoing span below {invocation}: {spans:#?}"));
        assert_eq!(out["traceId"], trace_id);
        let below = format!(
            "traceparent=00-{trace_id}-{}-01",
            out["spanId"].as_str().unwrap()
        );
        assert!(
            backend_saw.iter().any(|b| b.contains(&below)),
            "the backend is below the outgoing span: {backend_saw:?}"
        );
    }

    // A collector that is down: requests are answered all the same.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{down}");
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let mut s = Serve::start_with_env(&env, &dir, &[], &otel).unwrap();
    for _ in 0..20 {
        assert_eq!(s.get("/traced/env?HTTP_TRACEPARENT").status, 200);
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A function's envelope has a user namespace of its own: its uid 0 (the
/// worker's, which holds CAP_SYS_ADMIN to set invocations up, and the
/// invocation's) is an unprivileged host uid, so a file only host root may
/// read stays unread, where the same function without the namespace reads
/// it as the file's owner.
#[test]
fn a_function_is_not_root_on_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let rootfs = env.tmp.path().join("fn-rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(native_cgi(), rootfs.join("bin/cgi")).unwrap();
    let secret = rootfs.join("secret");
    std::fs::write(&secret, "host root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = functions(&env);
    let function = format!("rootfs = {rootfs:?}\nprogram = \"bin/cgi\"\n");
    manifest(&dir, "inns", &function);
    manifest(
        &dir,
        "hostns",
        &format!("{function}user_namespace = false\n"),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let me = s.get("/inns/self").text();
    assert!(me.contains("Uid: 0 0 0 0"), "{me}");
    let map: Vec<u64> = me
        .lines()
        .find_map(|l| l.strip_prefix("uid_map: "))
        .unwrap_or_else(|| panic!("no uid_map in:\n{me}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!((map[0], map[2]), (0, 65536), "{me}");
    assert!(map[1] >= 1 << 30, "uid 0 is host uid {}", map[1]);
    assert_eq!(s.get("/inns/read?/secret").text(), "error: 13");
    assert_eq!(
        s.get("/hostns/read?/secret").text(),
        "read: host root only\n",
        "without the namespace the function is the file's owner"
    );
    assert!(s
        .get("/hostns/self")
        .text()
        .contains("uid_map: 0 0 4294967295"));
    // The worker, seen from the host: the uid it runs as there.
    let envelope = s
        .log()
        .into_iter()
        .find(|l| l["function"] == "inns")
        .and_then(|l| l["envelope"].as_str().map(String::from))
        .expect("an invocation log line with its envelope");
    let pid = env.state(&envelope)["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().nth(1).unwrap(),
        map[1].to_string(),
        "the worker's host uid"
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn an_oci_bundle_is_a_function() {
    let env = Env::new();
    let b = env.bundle("shcgi", &["/bin/sh", "/cgi.sh"]);
    b.write();
    std::fs::write(
        b.rootfs().join("cgi.sh"),
        "echo 'Content-Type: text/plain'\necho\necho \"sh says $REQUEST_METHOD $QUERY_STRING on $(hostname)\"\n",
    )
    .unwrap();
    let dir = manifest(
        &functions(&env),
        "sh",
        &format!("bundle = {:?}\nmemory = \"64Mi\"\n", b.dir),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let r = s.get("/sh?q=1");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "sh says GET q=1 on amphi-test\n")
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn failures_get_their_status_and_the_host_lives_on() {
    let env = Env::new();
    let dir = cgi_pair(&env, "timeout = \"1s\"\nmax_body = 1000\n");
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    for route in ["/w", "/n"] {
        // It would sleep 20 s; a 504 means the 1 s timeout ended it.
        let r = s.get(&format!("{route}/sleep?20000"));
        assert_eq!(r.status, 504, "{route}: {}", r.text());

        let r = s.get(&format!("{route}/crash"));
        assert_eq!(r.status, 502);
        assert!(
            r.text().len() < 100,
            "a short body, details in the log: {:?}",
            r.text()
        );

        assert_eq!(s.get(&format!("{route}/garbage")).status, 502);
        // Past the memory limit: wasm fails its allocation, native is
        // OOM-killed; either way that request fails alone.
        assert_eq!(s.get(&format!("{route}/alloc?200")).status, 502);

        let r = s
            .client()
            .request("POST", &format!("{route}/echo"), &[], &[b'x'; 1001]);
        assert_eq!(r.status, 413);
        let r = s.client().request(
            "POST",
            &format!("{route}/echo"),
            &[("Transfer-Encoding", "chunked")],
            b"3e9\r\n"
                .iter()
                .chain([b'y'; 1001].iter())
                .chain(b"\r\n0\r\n\r\n".iter())
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
        );
        assert_eq!(r.status, 413, "a chunked body over max_body");

        assert_eq!(s.get(route).status, 200, "{route} still serves");
    }
    // The timed-out invocations were killed: nothing runs in the envelopes
    // but their workers.
    for id in s.envelopes(&env) {
        let pids = env.amphi(&["ps", "--format", "json", &id]);
        pids.ok();
        let pids: Vec<i64> = serde_json::from_str(&pids.stdout).unwrap();
        assert_eq!(pids.len(), 1, "envelope {id} still runs {pids:?}");
    }
    // Wasm functions' workers report their requests after answering.
    let errors = || -> Vec<String> {
        s.log()
            .iter()
            .filter_map(|l| l["error"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        wait_for(10, || {
            let errors = errors();
            errors.iter().any(|e| e.contains("timed out"))
                && errors.iter().any(|e| e.contains("status 134"))
        }),
        "{:?}",
        errors()
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// A body over `max_body` gets its 413 on every connection, declared or
/// chunked, never a reset: the server reads and drops a bounded rest of
/// the body before it closes, so the kernel has no unread input to reset
/// the connection for (a reset can destroy the 413 before the client
/// reads it). No retry: each request is one fresh connection.
#[test]
fn every_body_over_max_body_gets_its_413() {
    let env = Env::new();
    let dir = cgi_pair(&env, "max_body = 1000\n");
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let declared = vec![b'x'; 64 << 10];
    let chunked: Vec<u8> = b"fa00\r\n"
        .iter()
        .chain(&declared[..0xfa00])
        .chain(b"\r\n0\r\n\r\n")
        .copied()
        .collect();
    for route in ["/w", "/n"] {
        for i in 0..40 {
            let (headers, body): (&[(&str, &str)], &[u8]) = if i % 2 == 0 {
                (&[], &declared)
            } else {
                (&[("Transfer-Encoding", "chunked")], &chunked)
            };
            let r = s
                .client()
                .try_request("POST", &format!("{route}/echo"), headers, body)
                .unwrap_or_else(|e| panic!("{route}, request {i}: {e}"));
            assert_eq!(r.status, 413, "{route}, request {i}: {}", r.text());
        }
        assert_eq!(s.get(route).status, 200, "{route} still serves");
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn concurrency_beyond_the_limit_is_queued_then_refused() {
    let env = Env::new();
    let dir = manifest(
        &functions(&env),
        "slow",
        &format!(
            "module = {:?}\nconcurrency = 2\nqueue = 1\n",
            wasm_guest("cgi.wasm")
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let addr = s.addr;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                amphi_tests::serve::Client::new(addr).request("GET", "/slow/sleep?700", &[], b"")
            })
        })
        .collect();
    let responses: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 3, "2 running + 1 queued succeed: {responses:?}");
    assert_eq!(busy.len(), 3);
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("1")));
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn concurrent_invocations_do_not_share_a_filesystem_write() {
    let env = Env::new();
    let mut s = Serve::start(&env, &cgi_pair(&env, ""), &[]).unwrap();
    let addr = s.addr;
    for route in ["/w", "/n"] {
        let runs: Vec<_> = ["first", "second"]
            .into_iter()
            .map(|tag| {
                let path = format!("{route}/tmp?{tag}");
                std::thread::spawn(move || {
                    amphi_tests::serve::Client::new(addr)
                        .request("GET", &path, &[], b"")
                        .text()
                })
            })
            .collect();
        let outs: Vec<String> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        // Both ran at once in the same envelope, each wrote /tmp/<tag>, and
        // each saw its own file only.
        assert_eq!(outs[0], "before=\nafter=first\n", "{route}");
        assert_eq!(outs[1], "before=\nafter=second\n", "{route}");
    }
    let envelopes: Vec<_> = s
        .log()
        .iter()
        .filter(|l| l["path"] == "/w/tmp")
        .map(|l| l["envelope"].clone())
        .collect();
    assert_eq!(
        envelopes[0], envelopes[1],
        "both invocations shared one envelope"
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// The inode of the host-side socket of a TCP connection on loopback
/// (`local` is that socket's port, `remote` its peer's), from the test's
/// network namespace, which is the server's.
fn tcp_socket_inode(local: u16, remote: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (port(f[1]) == Some(local) && port(f[2]) == Some(remote)).then(|| f[9].to_string())
    })
}

fn holds_socket(pid: i64, inode: &str) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want))
}

/// Nothing runs in the envelope but its worker (a timed-out guest is gone).
fn assert_only_its_worker_runs(env: &Env, envelope: &str) {
    let pids = env.amphi(&["ps", "--format", "json", envelope]);
    pids.ok();
    let pids: Vec<i64> = serde_json::from_str(&pids.stdout).unwrap();
    assert_eq!(pids.len(), 1, "{pids:?}");
}

fn envelope_pid(env: &Env, id: &str) -> i64 {
    let state = env.amphi(&["state", id]);
    state.ok();
    let state: serde_json::Value = serde_json::from_str(&state.stdout).unwrap();
    state["pid"].as_i64().unwrap()
}

/// A function with a port of its own (`listen`) is served by the worker
/// in its envelope: the accepted connection is the worker's and never the
/// server's; the function's limits hold there as on the server's port;
/// the server still logs and counts each request, scales the function to
/// zero and hands the port to the next envelope, also after a worker dies.
#[test]
fn a_function_with_its_own_port_is_served_by_its_envelope() {
    use std::io::{Read, Write};
    let env = Env::new();
    let dir = functions(&env);
    manifest(
        &dir,
        "w",
        &format!(
            "module = {:?}\nlisten = \"127.0.0.1:0\"\ntimeout = \"1s\"\nmax_body = 1000\nmemory = \"96Mi\"\n",
            wasm_guest("cgi.wasm")
        ),
    );
    manifest(
        &dir,
        "http",
        &format!(
            "module = {:?}\ninterface = \"http\"\nlisten = \"127.0.0.1:0\"\nidle = \"1s\"\n",
            wasm_guest("http-hello.wasm")
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let (w, http) = (s.port_of("w"), s.port_of("http"));
    let on = amphi_tests::serve::Client::new;

    // Who holds the connection: a keep-alive request, then the socket's
    // owner while the connection is still open.
    let mut conn = std::net::TcpStream::connect(http).unwrap();
    conn.write_all(b"GET /http/hi HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("body=0") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let client_port = conn.local_addr().unwrap().port();
    let inode = tcp_socket_inode(http.port(), client_port).expect("the accepted socket");
    let envelopes = s.envelopes(&env);
    let http_envelope = envelopes.iter().find(|id| id.contains("-http-")).unwrap();
    let worker = envelope_pid(&env, http_envelope);
    assert!(
        holds_socket(worker, &inode),
        "the worker has the connection"
    );
    assert!(!holds_socket(s.pid.into(), &inode), "the server does not");
    drop(conn);

    // The same function at its route on the server's port, and the same
    // answer on its own.
    assert_eq!(
        on(w).request("GET", "/w", &[], b"").text(),
        s.get("/w").text()
    );
    assert_eq!(on(w).request("GET", "/elsewhere", &[], b"").status, 404);

    // The function's limits, on its port.
    let r = on(w).request("GET", "/w/sleep?20000", &[], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(on(w).request("GET", "/w/crash", &[], b"").status, 502);
    assert_eq!(
        on(w).request("POST", "/w/echo", &[], &[b'x'; 1001]).status,
        413
    );
    assert_eq!(on(w).request("GET", "/w", &[], b"").status, 200);
    // The worker reports requests after answering them.
    let wants = [
        "amphi_requests_total{function=\"w\",code=\"200\"} 3",
        "amphi_requests_total{function=\"w\",code=\"504\"} 1",
        "amphi_errors_total{function=\"w\",kind=\"timeout\"} 1",
        "amphi_errors_total{function=\"w\",kind=\"too_large\"} 1",
        "amphi_errors_total{function=\"w\",kind=\"crash\"} 1",
    ];
    let mut m = String::new();
    assert!(
        wait_for(10, || {
            m = s.get("/metrics").text();
            wants.iter().all(|w| m.contains(w))
        }),
        "{wants:?} not all in:\n{m}"
    );
    let logged = || -> Vec<serde_json::Value> {
        s.log()
            .into_iter()
            .filter(|l| l["function"] == "w" && l["status"].is_u64())
            .collect()
    };
    assert!(
        wait_for(10, || logged().len() == 6),
        "one line per request: {:?}",
        logged()
    );
    let logged = logged();
    assert!(logged
        .iter()
        .any(|l| l["error"].as_str().is_some_and(|e| e.contains("timed out"))));
    // The timed-out guest is gone: nothing runs in the envelope but its
    // worker.
    let w_envelope = s
        .envelopes(&env)
        .into_iter()
        .find(|id| id.contains("-w-"))
        .unwrap();
    assert_only_its_worker_runs(&env, &w_envelope);

    // Idle: the port's envelope goes; a connection brings a new one.
    assert!(
        wait_for(20, || !s
            .envelopes(&env)
            .iter()
            .any(|id| id.contains("-http-"))),
        "the idle function's envelope is still there"
    );
    assert_eq!(on(http).request("GET", "/http/again", &[], b"").status, 200);
    let cold = || {
        s.log()
            .into_iter()
            .filter(|l| l["function"] == "http" && l["cold"] == true)
            .count()
    };
    assert!(wait_for(10, || cold() == 1), "one cold start: {}", cold());

    // A worker killed: the next connection gets a new envelope.
    let pid = envelope_pid(&env, &w_envelope);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_for(20, || !s.envelopes(&env).contains(&w_envelope)),
        "the dead envelope is removed"
    );
    assert_eq!(on(w).request("GET", "/w", &[], b"").status, 200);
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// Read `n` responses (each with a Content-Length) off one kept-alive
/// connection.
fn responses(conn: &mut std::io::BufReader<std::net::TcpStream>, n: usize) -> Vec<(u16, String)> {
    use std::io::{BufRead, Read};
    (0..n)
        .map(|i| {
            let mut line = String::new();
            conn.read_line(&mut line).unwrap();
            let status = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse()
                .unwrap();
            let mut len = 0;
            loop {
                line.clear();
                conn.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                    // Handing the connection over is not closing it.
                    assert!(
                        !(k.eq_ignore_ascii_case("connection") && v.trim() == "close"),
                        "{line} in response {i}"
                    );
                }
            }
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
        .collect()
}

/// The server's port hands a connection to the worker of the wasm
/// function its request is for: the worker serves that function's
/// requests on it (no hop: the server holds no copy of the socket), with
/// the function's limits, and the server logs and counts each request as
/// on every path. A request on it for another function (a native one, the
/// server's `/metrics`, a path nobody serves), sent alone or pipelined
/// behind others, is answered in order on the same connection, which goes
/// back to the server and on to the next request's function. An idle
/// function's worker gives its connections back before its envelope goes,
/// and the next request on one starts it cold.
#[test]
fn the_servers_port_hands_each_connection_to_its_functions_worker() {
    use std::io::Write;
    let env = Env::new();
    let dir = functions(&env);
    manifest(
        &dir,
        "w",
        &format!(
            "module = {:?}\ntimeout = \"1s\"\nmax_body = 1000\nmemory = \"96Mi\"\n",
            wasm_guest("cgi.wasm")
        ),
    );
    manifest(
        &dir,
        "http",
        &format!(
            "module = {:?}\ninterface = \"http\"\nidle = \"3s\"\n",
            wasm_guest("http-hello.wasm")
        ),
    );
    manifest(&dir, "n", &format!("program = {:?}\n", native_cgi()));
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let worker_of = |s: &Serve, name: &str| {
        let envelopes = s.envelopes(&env);
        let id = envelopes
            .iter()
            .find(|id| id.contains(&format!("-{name}-")))
            .unwrap_or_else(|| panic!("no envelope of {name}: {envelopes:?}"));
        envelope_pid(&env, id)
    };

    // Who holds the connection after a request for a wasm function.
    let stream = std::net::TcpStream::connect(s.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let mut conn = std::io::BufReader::new(stream);
    conn.get_mut()
        .write_all(get("/http/hi").as_bytes())
        .unwrap();
    let r = responses(&mut conn, 1);
    assert_eq!(r[0].0, 200, "{r:?}");
    assert!(r[0].1.contains("path=/http/hi"), "{r:?}");
    let inode = tcp_socket_inode(s.addr.port(), client_port).expect("the accepted socket");
    let http_worker = worker_of(&s, "http");
    assert!(
        holds_socket(http_worker, &inode),
        "the worker has the connection"
    );
    assert!(!holds_socket(s.pid.into(), &inode), "the server does not");

    // The same connection: other functions' requests, the server's own
    // and a path nobody serves, one at a time, then pipelined.
    let sequence = ["/n", "/metrics", "/nowhere", "/w", "/http/again"];
    let mut one_by_one = Vec::new();
    for path in sequence {
        conn.get_mut().write_all(get(path).as_bytes()).unwrap();
        one_by_one.extend(responses(&mut conn, 1));
    }
    let pipelined: String = sequence.iter().map(|p| get(p)).collect();
    conn.get_mut().write_all(pipelined.as_bytes()).unwrap();
    let all_at_once = responses(&mut conn, sequence.len());
    let w_answer = s.get("/w").text();
    for answers in [&one_by_one, &all_at_once] {
        let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        assert_eq!(statuses, [200, 200, 404, 200, 200], "{answers:?}");
        assert_eq!(answers[0].1, "hello from native\n");
        assert!(answers[1].1.contains("amphi_requests_total"), "{answers:?}");
        assert_eq!(answers[3].1, w_answer);
        assert!(answers[4].1.contains("path=/http/again"), "{answers:?}");
    }
    // The last request went to the server with the connection (its
    // holder was w's worker); the next goes on to the wasi:http
    // function's worker, which keeps it.
    conn.get_mut()
        .write_all(get("/http/last").as_bytes())
        .unwrap();
    assert_eq!(responses(&mut conn, 1)[0].0, 200);
    let http_worker = worker_of(&s, "http");
    assert!(
        holds_socket(http_worker, &inode),
        "the connection went on to the function's worker"
    );

    // The function's limits, on the server's port.
    let mut on = s.client();
    let r = on.request("GET", "/w/sleep?20000", &[], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(on.request("GET", "/w/crash", &[], b"").status, 502);
    assert_eq!(
        on.request("POST", "/w/echo", &[], &[b'x'; 1001]).status,
        413
    );
    assert_eq!(on.request("GET", "/w", &[], b"").status, 200);
    // Requests to w: two in the sequences, one to compare with, four here.
    let wants = [
        "amphi_requests_total{function=\"w\",code=\"200\"} 4",
        "amphi_requests_total{function=\"w\",code=\"504\"} 1",
        "amphi_requests_total{function=\"n\",code=\"200\"} 2",
        "amphi_requests_total{function=\"http\",code=\"200\"} 4",
        "amphi_errors_total{function=\"w\",kind=\"timeout\"} 1",
        "amphi_errors_total{function=\"w\",kind=\"too_large\"} 1",
        "amphi_errors_total{function=\"w\",kind=\"crash\"} 1",
    ];
    let mut m = String::new();
    assert!(
        wait_for(10, || {
            m = s.get("/metrics").text();
            wants.iter().all(|w| m.contains(w))
        }),
        "{wants:?} not all in:\n{m}"
    );
    let lines_of = |name: &str| {
        s.log()
            .into_iter()
            .filter(|l| l["function"] == name && l["status"].is_u64())
            .count()
    };
    assert!(
        wait_for(10, || lines_of("w") == 7
            && lines_of("n") == 2
            && lines_of("http") == 4),
        "one line per request: {}",
        s.log_text()
    );
    // The timed-out guest is gone: nothing runs in the envelope but its
    // worker.
    let w_envelope = s
        .envelopes(&env)
        .into_iter()
        .find(|id| id.contains("-w-"))
        .unwrap();
    assert_only_its_worker_runs(&env, &w_envelope);

    // Idle with the connection open: the worker gives it back and its
    // envelope goes; the next request on it starts the function cold.
    assert!(
        wait_for(20, || !s
            .envelopes(&env)
            .iter()
            .any(|id| id.contains("-http-"))),
        "the idle function's envelope is still there"
    );
    assert!(!holds_socket(http_worker, &inode));
    conn.get_mut()
        .write_all(get("/http/later").as_bytes())
        .unwrap();
    let r = responses(&mut conn, 1);
    assert_eq!(r[0].0, 200, "{r:?}");
    assert!(
        wait_for(10, || s
            .log()
            .iter()
            .any(|l| l["path"] == "/http/later" && l["cold"] == true)),
        "the request after scale-to-zero is cold: {}",
        s.log_text()
    );
    assert!(holds_socket(worker_of(&s, "http"), &inode));

    // A worker killed: the next request gets a new envelope, and the dead
    // one is removed.
    let pid = envelope_pid(&env, &w_envelope);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_for(20, || s.get("/w").status == 200),
        "no new envelope for w"
    );
    assert!(
        wait_for(20, || !s.envelopes(&env).contains(&w_envelope)),
        "the dead envelope is removed"
    );
    drop(conn);
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn metrics_and_one_log_line_per_invocation() {
    let env = Env::new();
    let mut s = Serve::start(&env, &cgi_pair(&env, ""), &[]).unwrap();
    for _ in 0..3 {
        assert_eq!(s.get("/w").status, 200);
    }
    assert_eq!(s.get("/n/crash").status, 502);
    // The wasm function's worker reports its requests after answering.
    let mut text = String::new();
    let wants = [
        "# TYPE amphi_requests_total counter",
        "amphi_requests_total{function=\"wcgi\",code=\"200\"} 3",
        "amphi_requests_total{function=\"ncgi\",code=\"502\"} 1",
        "amphi_errors_total{function=\"ncgi\",kind=\"crash\"} 1",
        "# TYPE amphi_request_duration_seconds histogram",
        "amphi_request_duration_seconds_count{function=\"wcgi\"} 3",
        "amphi_request_duration_seconds_bucket{function=\"wcgi\",le=\"+Inf\"} 3",
        "amphi_cold_starts_total{function=\"wcgi\"} 0",
        "amphi_envelopes{function=\"ncgi\"} 1",
    ];
    assert!(
        wait_for(10, || {
            let m = s.get("/metrics");
            assert_eq!(m.status, 200);
            text = m.text();
            wants.iter().all(|want| text.contains(want))
        }),
        "{wants:?} not all in:\n{text}"
    );
    let lines = || -> Vec<serde_json::Value> {
        s.log()
            .into_iter()
            .filter(|l| l["function"].is_string())
            .collect()
    };
    assert!(wait_for(10, || lines().len() == 4), "{:?}", lines());
    let mut lines = lines();
    lines.sort_by_key(|l| l["path"].as_str().map(str::to_string));
    for l in &lines {
        assert!(
            l["status"].is_u64() && l["duration_ms"].is_number() && l["time"].is_string(),
            "{l}"
        );
    }
    // By path: /n/crash, then /w three times.
    assert_eq!(lines[0]["executor"], "native");
    assert_eq!(lines[3]["executor"], "wasm");
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn idle_functions_scale_to_zero_and_start_cold() {
    let env = Env::new();
    let dir = cgi_pair(&env, "idle = \"300ms\"\n");
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    assert_eq!(s.get("/w").status, 200);
    assert!(
        wait_for(10, || s.envelopes(&env).is_empty()),
        "idle envelopes still there: {:?}",
        s.envelopes(&env)
    );
    // An idle function holds no process: no envelope, no worker.
    assert!(s
        .get("/metrics")
        .text()
        .contains("amphi_envelopes{function=\"wcgi\"} 0"));
    for route in ["/w", "/n"] {
        assert_eq!(s.get(route).status, 200);
    }
    let cold = || s.log().into_iter().filter(|l| l["cold"] == true).count();
    assert!(
        wait_for(10, || cold() == 2),
        "the first request after idle is a cold start: {}",
        s.log_text()
    );
    let m = s.get("/metrics").text();
    assert!(
        m.contains("amphi_cold_starts_total{function=\"wcgi\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("amphi_cold_start_duration_seconds_count{function=\"ncgi\"} 1"),
        "{m}"
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn strict_functions_take_an_envelope_per_invocation_from_a_warm_pool() {
    let env = Env::new();
    let dir = manifest(
        &functions(&env),
        "strict",
        &format!(
            "module = {:?}\nstrict = true\npool = 2\n",
            wasm_guest("cgi.wasm")
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let pool_full = |s: &Serve| {
        wait_for(20, || {
            s.get("/metrics")
                .text()
                .contains("amphi_pool{function=\"strict\"} 2")
        })
    };
    assert!(pool_full(&s), "pool not filled: {:?}", s.envelopes(&env));
    for _ in 0..4 {
        assert_eq!(s.get("/strict").status, 200);
        assert!(pool_full(&s), "pool not refilled");
    }
    let served: Vec<_> = s
        .log()
        .into_iter()
        .filter(|l| l["function"] == "strict")
        .collect();
    let mut ids: Vec<_> = served
        .iter()
        .map(|l| l["envelope"].as_str().unwrap().to_string())
        .collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "each invocation in an envelope of its own: {ids:?}"
    );
    assert!(
        served.iter().all(|l| l["cold"] == false),
        "all came from the pool: {served:?}"
    );
    // Used envelopes are removed, the pool is refilled.
    assert!(
        wait_for(20, || {
            let now = s.envelopes(&env);
            now.len() == 2 && !now.iter().any(|e| ids.contains(e))
        }),
        "{:?}",
        s.envelopes(&env)
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

fn fails_to_start(env: &Env, dir: &Path, needles: &[&str]) {
    let f = match Serve::start(env, dir, &[]) {
        Ok(s) => panic!(
            "a bad function must stop start-up; it listens at {}",
            s.addr
        ),
        Err(f) => f,
    };
    assert_ne!(f.code, Some(0));
    for n in needles {
        assert!(f.stderr.contains(n), "stderr lacks {n:?}:\n{}", f.stderr);
    }
    amphi_tests::reap_inits();
    let left: Vec<_> = std::fs::read_dir(&env.root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "wasm-cache")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "state left by a failed start: {left:?}");
    let work: Vec<_> = std::fs::read_dir(env.tmp.path().join("work"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "work dir left: {work:?}");
    for dir in amphi_tests::cgroup_dirs("") {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let prefix = format!("serve{}-", f.pid);
            assert!(
                !e.file_name().to_string_lossy().starts_with(&prefix),
                "cgroup {} left",
                e.path().display()
            );
        }
    }
}

/// `preinit = true`: the module's `wizer.initialize` (a component's
/// `wizer-initialize`) runs once, when the server starts, and every
/// invocation begins from the snapshot (the table built, the
/// invocation's own CGI environment); the same module without it
/// initializes itself per invocation.
#[test]
fn a_preinitialized_function_starts_from_its_snapshot() {
    let env = Env::new();
    let dir = functions(&env);
    let module = wasm_guest("preinit.wasm");
    manifest(
        &dir,
        "pre",
        &format!("route = \"/pre\"\nmodule = {module:?}\npreinit = true\n"),
    );
    manifest(
        &dir,
        "cold",
        &format!("route = \"/cold\"\nmodule = {module:?}\n"),
    );
    manifest(
        &dir,
        "component",
        &format!(
            "route = \"/component\"\nmodule = {:?}\npreinit = true\n",
            wasm_guest("preinit-component.wasm")
        ),
    );
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let cold = s.get("/cold").text();
    let table = cold.strip_prefix("cold ").expect("initialized itself");
    for route in ["/pre", "/pre", "/pre", "/component", "/component"] {
        let r = s.get(route);
        assert_eq!(r.status, 200, "{route}: {}", r.text());
        assert_eq!(
            r.text().strip_prefix("preinitialized "),
            Some(table),
            "{route}"
        );
    }
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

/// The server compiles each wasm function once, at start, and its
/// envelopes map that artifact. An envelope runs as the function's own
/// user, which may not write the host's cache: one that compiled for
/// itself would compile again at every cold start.
#[test]
fn cold_envelopes_map_what_the_server_compiled_at_start() {
    let env = Env::new();
    let dir = functions(&env);
    manifest(
        &dir,
        "c",
        &format!("module = {:?}\nidle = \"0s\"\n", wasm_guest("cgi.wasm")),
    );
    manifest(
        &dir,
        "h",
        &format!(
            "module = {:?}\ninterface = \"http\"\nidle = \"0s\"\n",
            wasm_guest("http-hello.wasm")
        ),
    );
    let mut s =
        Serve::start_with_env(&env, &dir, &[], &[("AMPHI_WASM_CACHE_REPORT", "1")]).unwrap();
    for _ in 0..2 {
        assert!(
            wait_for(20, || s.envelopes(&env).is_empty()),
            "idle envelopes are still there: {:?}",
            s.envelopes(&env)
        );
        assert_eq!(s.get("/c").status, 200);
        assert_eq!(s.get("/h").status, 200);
    }
    let cold = || s.log().iter().filter(|l| l["cold"] == true).count();
    assert!(
        wait_for(10, || cold() == 4),
        "each request after scale-to-zero is cold:\n{}",
        s.log_text()
    );
    assert_eq!(s.stop(), Some(0));
    let text = s.log_text();
    assert_eq!(
        text.matches("wasm cache: Compiled").count(),
        2,
        "one compile a module, at start:\n{text}"
    );
    for never in ["wasm cache: Hit", "wasm cache: Recompiled", "not writable"] {
        assert!(!text.contains(never), "{never}:\n{text}");
    }
    s.assert_clean(&env);
}

#[test]
fn bad_manifests_and_bundles_stop_start_up_with_the_function_and_field_named() {
    let env = Env::new();
    let module = wasm_guest("cgi.wasm");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "typo",
            format!("module = {module:?}\nmemroy = \"1Mi\"\n"),
            vec!["function typo", "unknown field `memroy`"],
        ),
        (
            "preinitnative",
            format!("program = {:?}\npreinit = true\n", native_cgi()),
            vec!["function preinitnative: preinit", "a native program"],
        ),
        (
            "preinitnothing",
            format!(
                "module = {:?}\ninterface = \"http\"\npreinit = true\n",
                wasm_guest("http-hello.wasm")
            ),
            vec![
                "function preinitnothing",
                "the component exports no initialization function",
            ],
        ),
        (
            "nofile",
            "module = \"missing.wasm\"\n".into(),
            vec!["function nofile: module", "missing.wasm"],
        ),
        (
            "badroute",
            format!("route = \"metrics\"\nmodule = {module:?}\n"),
            vec!["function badroute: route"],
        ),
        (
            "badsize",
            format!("module = {module:?}\nmemory = \"lots\"\n"),
            vec!["function badsize: memory"],
        ),
        (
            "notwasm",
            format!("module = {:?}\n", native_cgi()),
            vec!["function notwasm", "not a WebAssembly module"],
        ),
        (
            "notproxy",
            format!("module = {module:?}\ninterface = \"http\"\n"),
            vec!["function notproxy", "wasi:http"],
        ),
        (
            "noprogram",
            "program = \"nothing-here\"\n".into(),
            vec!["function noprogram: program"],
        ),
        (
            "reusecgi",
            format!("module = {module:?}\nisolation = \"reuse\"\n"),
            vec!["function reusecgi: isolation", "runs once per instance"],
        ),
        (
            "badoutbound",
            format!("module = {module:?}\ninterface = \"http\"\nallowed_outbound_hosts = [\"ftp://example.com\"]\n"),
            vec![
                "function badoutbound: allowed_outbound_hosts[0]",
                "\"ftp://example.com\"",
                "give a URL prefix",
            ],
        ),
        (
            "outboundcgi",
            format!("module = {module:?}\nallowed_outbound_hosts = [\"http://127.0.0.1\"]\n"),
            vec!["function outboundcgi: allowed_outbound_hosts", "CGI"],
        ),
        (
            "badport",
            format!("module = {module:?}\nlisten = \"8081\"\n"),
            vec!["function badport: listen", "an address and port"],
        ),
        (
            "strictport",
            format!("module = {module:?}\nisolation = \"envelope\"\nlisten = \"127.0.0.1:0\"\n"),
            vec!["function strictport: listen", "envelope"],
        ),
        (
            "nativeport",
            format!("program = {:?}\nlisten = \"127.0.0.1:0\"\n", native_cgi()),
            vec!["function nativeport: listen", "wasm"],
        ),
        (
            "badlevel",
            format!("module = {module:?}\nisolation = \"shared\"\n"),
            vec![
                "function badlevel: isolation",
                "\"envelope\", \"instance\" or \"reuse\"",
            ],
        ),
    ];
    // A module that is a FIFO: read, it would hang the server's start.
    let fifo = env.tmp.path().join("fifo.wasm");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let fifo_case = (
        "fifo",
        format!("module = {fifo:?}\n"),
        vec!["function fifo", "not a regular file"],
    );
    for (name, text, needles) in cases.into_iter().chain([fifo_case]) {
        let dir = env.tmp.path().join(format!("fn-{name}"));
        // A good function next to the bad one: it must not stay up alone.
        manifest(&dir, "good", &format!("module = {module:?}\n"));
        manifest(&dir, name, &text);
        fails_to_start(&env, &dir, &needles);
    }
    // A port already taken, and one given twice.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap();
    let dir = env.tmp.path().join("fn-port-taken");
    manifest(&dir, "good", &format!("module = {module:?}\n"));
    manifest(
        &dir,
        "busy",
        &format!("module = {module:?}\nlisten = \"{taken}\"\n"),
    );
    fails_to_start(&env, &dir, &["function busy: listen", &taken.to_string()]);
    let dir = env.tmp.path().join("fn-port-twice");
    for name in ["a", "b"] {
        manifest(
            &dir,
            name,
            &format!("module = {module:?}\nlisten = \"{taken}\"\n"),
        );
    }
    fails_to_start(&env, &dir, &["function b: listen", "function a listens"]);
    let dir = env.tmp.path().join("fn-dup");
    manifest(
        &dir,
        "a",
        &format!("route = \"/same\"\nmodule = {module:?}\n"),
    );
    manifest(
        &dir,
        "b",
        &format!("route = \"/same\"\nmodule = {module:?}\n"),
    );
    fails_to_start(
        &env,
        &dir,
        &["function b: route", "also the route of function a"],
    );
    // A bundle whose program is not there fails at its envelope's create.
    let b = env.bundle("broken", &["/no/such/program"]);
    b.write();
    let dir = env.tmp.path().join("fn-bundle");
    manifest(&dir, "broken", &format!("bundle = {:?}\n", b.dir));
    fails_to_start(&env, &dir, &["function broken", "/no/such/program"]);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_removes_every_envelope() {
    let env = Env::new();
    let mut s = Serve::start(&env, &cgi_pair(&env, ""), &[]).unwrap();
    let addr = s.addr;
    let in_flight = std::thread::spawn(move || {
        amphi_tests::serve::Client::new(addr).request("GET", "/n/sleep?800", &[], b"")
    });
    assert!(wait_for(10, || s
        .get("/metrics")
        .text()
        .contains("amphi_in_flight{function=\"ncgi\"} 1")));
    assert_eq!(s.envelopes(&env).len(), 2);
    assert_eq!(s.stop(), Some(0));
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 800 ms\n"));
    s.assert_clean(&env);
}

#[test]
fn a_killed_server_leaves_nothing_behind() {
    let env = Env::new();
    let s = Serve::start(&env, &cgi_pair(&env, ""), &["--keepers", "2"]).unwrap();
    assert_eq!(s.get("/w").status, 200);
    // SIGKILL: no graceful shutdown; each keeper sees its socket end and
    // deletes the envelopes it made itself.
    let keepers: Vec<i32> =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", s.pid, s.pid))
            .unwrap()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    assert_eq!(keepers.len(), 2, "two keeper children: {keepers:?}");
    unsafe { libc::kill(s.pid, libc::SIGKILL) };
    for k in &keepers {
        amphi_tests::remember_init(*k);
    }
    assert!(
        wait_for(30, || s.envelopes(&env).is_empty()),
        "{:?}",
        s.envelopes(&env)
    );
    // Generous: on a loaded machine a keeper's last deletes (cgroup
    // directories that stay busy for a moment each) can take seconds.
    for k in keepers {
        assert!(
            wait_for(60, || {
                amphi_tests::reap_inits();
                !Path::new(&format!("/proc/{k}")).exists()
            }),
            "the keeper {k} outlived its server: {:?}",
            std::fs::read_to_string(format!("/proc/{k}/stat"))
        );
    }
    // The work dir of a killed server stays (no one is left to remove it);
    // everything else is gone.
    let _ = std::fs::remove_dir_all(&s.work_dir);
    std::fs::create_dir_all(&s.work_dir).unwrap();
    s.assert_clean(&env);
}

/// Resident memory (kB) of the server, its keeper and every envelope
/// process (workers and the invocations running now).
fn host_rss_kib(env: &Env, s: &Serve) -> u64 {
    let mut total = amphi_tests::serve::rss_kib(s.pid);
    for id in s.envelopes(env) {
        let pid = std::fs::read_to_string(env.root.join(&id).join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid {
            total += amphi_tests::serve::rss_kib(pid as i32);
        }
    }
    total
}

/// At its concurrency limit for AMPHI_SOAK_SECS (15 s by default; minutes
/// when asked), with crashes mixed in: every request answered as expected
/// and the host's memory steady.
#[test]
fn soak_at_the_concurrency_limit_keeps_memory_steady() {
    let secs: u64 = std::env::var("AMPHI_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let env = Env::new();
    let dir = cgi_pair(&env, "concurrency = 4\nqueue = 0\n");
    let mut s = Serve::start(&env, &dir, &[]).unwrap();
    let addr = s.addr;
    let run = |stop_at: Instant| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                std::thread::spawn(move || {
                    // 4 clients per function: exactly its concurrency.
                    let route = if c % 2 == 0 { "/w" } else { "/n" };
                    let mut client = amphi_tests::serve::Client::new(addr);
                    let (mut n, mut bad) = (0u64, Vec::new());
                    while Instant::now() < stop_at {
                        let (path, body, want): (String, &[u8], u16) = match n % 50 {
                            0 => (format!("{route}/crash"), b"", 502),
                            1..=10 => (format!("{route}/echo"), b"soak body", 201),
                            11 => (format!("{route}/tmp?{c}-{n}"), b"", 200),
                            _ => (route.to_string(), b"", 200),
                        };
                        let r = client.request("POST", &path, &[], body);
                        if r.status != want {
                            bad.push((path, r.status, r.text()));
                        }
                        n += 1;
                    }
                    (n, bad)
                })
            })
            .collect();
        let mut total = 0;
        for c in clients {
            let (n, bad) = c.join().unwrap();
            assert!(
                bad.is_empty(),
                "unexpected answers: {:?}",
                &bad[..bad.len().min(5)]
            );
            total += n;
        }
        total
    };
    // Warm up, then measure the host's memory across the soak.
    run(Instant::now() + Duration::from_secs(3));
    let before = host_rss_kib(&env, &s);
    let mut samples = Vec::new();
    let soak_end = Instant::now() + Duration::from_secs(secs);
    let sampler = {
        let deadline = soak_end;
        std::thread::scope(|scope| {
            let h = scope.spawn(|| run(deadline));
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                samples.push(host_rss_kib(&env, &s));
            }
            h.join().unwrap()
        })
    };
    let after = host_rss_kib(&env, &s);
    eprintln!(
        "soak: {sampler} requests in {secs} s ({:.0}/s); host RSS {before} kB before, {after} kB after, max {} kB",
        sampler as f64 / secs as f64,
        samples.iter().max().unwrap_or(&0)
    );
    assert!(sampler > secs * 20, "only {sampler} requests in {secs} s");
    // Steady: what the host holds after minutes of invocations is what it
    // held after the warm-up, give or take allocator slack.
    assert!(
        after < before + 16 * 1024,
        "host memory grew from {before} kB to {after} kB"
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}
