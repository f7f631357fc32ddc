//! A WASI 0.2 command that makes one request with wasi:http's client
//! (`outgoing-handler`) and prints the response's status and body:
//! `http-get AUTHORITY PATH`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(authority), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: http-get AUTHORITY PATH");
        std::process::exit(2);
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).expect("scheme");
    request.set_authority(Some(&authority)).expect("authority");
    request.set_path_with_query(Some(&path)).expect("path");
    let pending = outgoing_handler::handle(request, None).expect("send the request");
    pending.subscribe().block();
    let response = pending
        .get()
        .expect("ready after block")
        .expect("taken once")
        .unwrap_or_else(|e| panic!("request failed: {e:?}"));
    let body = response.consume().expect("the body, once");
    let stream = body.stream().expect("the body's stream, once");
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => data.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(e) => panic!("read the body: {e:?}"),
        }
    }
    println!("{} {}", response.status(), String::from_utf8_lossy(&data));
}
