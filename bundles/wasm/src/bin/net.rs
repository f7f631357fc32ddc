//! A WASI 0.2 command that uses the container's network through
//! wasi:sockets (Rust's std::net on wasm32-wasip2): it listens on the
//! loopback, connects to itself, sends a line, and prints what arrived.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let mut client = TcpStream::connect(addr).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"over wasi:sockets").expect("write");
    drop(client);
    let mut got = String::new();
    server.read_to_string(&mut got).expect("read");
    println!("{got} on {}", addr.ip());
}
