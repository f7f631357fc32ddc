//! `preinit.rs` as a `wasi:cli/command` component: its start builds a
//! table of the first 200,000 primes, unless its `wizer-initialize`
//! export (a function of the component, as Wizer's component support
//! runs it) already has, in a snapshot amphi took at compile time.
//!
//! Prints "preinitialized" or "cold", then the table's size and checksum,
//! the same either way, as `preinit.wasm` prints them (under CGI, after a
//! header).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

wit_bindgen::generate!({
    inline: "
        package amphi:guests;
        world preinit {
            export wizer-initialize: func();
        }
    ",
});

const PRIMES: usize = 200_000;

static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
static PREINITIALIZED: AtomicBool = AtomicBool::new(false);

fn table() -> &'static [u32] {
    TABLE.get_or_init(|| {
        let mut primes: Vec<u32> = Vec::with_capacity(PRIMES);
        let mut n = 2u32;
        while primes.len() < PRIMES {
            if primes
                .iter()
                .take_while(|p| **p * **p <= n)
                .all(|p| n % p != 0)
            {
                primes.push(n);
            }
            n += 1;
        }
        primes
    })
}

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
    let sum = t
        .iter()
        .fold(0u64, |s, p| s.wrapping_mul(31).wrapping_add(u64::from(*p)));
    println!(
        "{} {} {:x}",
        if preinitialized { "preinitialized" } else { "cold" },
        t.len(),
        sum
    );
}
