//! A program whose start is mostly its own initialization, as an
//! interpreter's is: it builds a table of the first 200,000 primes by trial
//! division before it does anything. `wizer.initialize` builds the table
//! too, so that with amphi's pre-initialization (`io.github.amphi.preinit`)
//! every start finds it built in the module's snapshot.
//!
//! Prints whether the table came with the module ("preinitialized") or was
//! built now ("cold"), then its size and checksum, the same either way;
//! under CGI (`amphi serve`) after a header, which shows the environment
//! is the invocation's, not the snapshot's.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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

#[export_name = "wizer.initialize"]
pub extern "C" fn initialize() {
    table();
    PREINITIALIZED.store(true, Ordering::Relaxed);
}

fn main() {
    if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        print!("Content-Type: text/plain\r\n\r\n");
    }
    let preinitialized = PREINITIALIZED.load(Ordering::Relaxed);
    let t = table();
    let sum = t.iter().fold(0u64, |s, p| s.wrapping_mul(31).wrapping_add(u64::from(*p)));
    println!(
        "{} {} {:x}",
        if preinitialized { "preinitialized" } else { "cold" },
        t.len(),
        sum
    );
}
