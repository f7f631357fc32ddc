//! What both pre-initialization guests do (`preinit.rs`, a core module,
//! and `preinit-component`): build the first 200,000 primes by trial
//! division, in their initialization export or at start, and report a
//! checksum that shows the table is the same either way.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

const PRIMES: usize = 200_000;

static TABLE: OnceLock<Vec<u32>> = OnceLock::new();

pub fn table() -> &'static [u32] {
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

fn checksum(table: &[u32]) -> u64 {
    table
        .iter()
        .fold(0u64, |s, p| s.wrapping_mul(31).wrapping_add(u64::from(*p)))
}

static PREINITIALIZED: AtomicBool = AtomicBool::new(false);

/// The initialization export's work: the table, in the snapshot.
pub fn initialize() {
    table();
    PREINITIALIZED.store(true, Ordering::Relaxed);
}

/// Prints "preinitialized" or "cold", then the table's size and checksum;
/// under CGI (`amphi serve`) after a header, which shows the environment
/// is the invocation's, not the snapshot's.
pub fn report() {
    if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        print!("Content-Type: text/plain\r\n\r\n");
    }
    let preinitialized = PREINITIALIZED.load(Ordering::Relaxed);
    let t = table();
    println!(
        "{} {} {:x}",
        if preinitialized { "preinitialized" } else { "cold" },
        t.len(),
        checksum(t)
    );
}
