//! `preinit.rs` as a `wasi:cli/command` component: its start builds a
//! table of the first 200,000 primes, unless its `wizer-initialize`
//! export (a function of the component, as Wizer's component support
//! runs it) already has, in a snapshot amphi took at compile time.
//!
//! Prints "preinitialized" or "cold", then the table's size and checksum,
//! the same either way, as `preinit.wasm` prints them (under CGI, after a
//! header).
#[path = "../../src/primes.rs"]
mod primes;

wit_bindgen::generate!({
    inline: "
        package amphi:guests;
        world preinit {
            export wizer-initialize: func();
        }
    ",
});

struct Component;

impl Guest for Component {
    fn wizer_initialize() {
        primes::initialize();
    }
}

export!(Component);

fn main() {
    primes::report();
}
