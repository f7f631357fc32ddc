//! `preinit.rs` as a `wasi:cli/command` component: its start builds a
//! table of the first 200,000 primes, unless its `wizer-initialize`
//! export (a function of the component, as Wizer's component support
//! runs it) already has, in a snapshot amphi took at compile time.
//!
//! Prints "preinitialized" or "cold", then the table's size and checksum,
//! the same either way, as `preinit.wasm` prints them (under CGI, after a
//! header).
use std::sync::atomic::{AtomicBool, Ordering};

#[path = "../../src/primes.rs"]
mod primes;
use primes::table;

wit_bindgen::generate!({
    inline: "
        package amphi:guests;
        world preinit {
            export wizer-initialize: func();
        }
    ",
});

static PREINITIALIZED: AtomicBool = AtomicBool::new(false);

struct Component;

impl Guest for Component {
    fn wizer_initialize() {
        table();
        PREINITIALIZED.store(true, Ordering::Relaxed);
    }
}

export!(Component);

fn main() {
    if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        print!("Content-Type: text/plain\r\n\r\n");
    }
    let preinitialized = PREINITIALIZED.load(Ordering::Relaxed);
    let t = table();
    let sum = primes::checksum(t);
    println!(
        "{} {} {:x}",
        if preinitialized { "preinitialized" } else { "cold" },
        t.len(),
        sum
    );
}
