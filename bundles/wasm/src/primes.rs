//! The table both pre-initialization guests build at start (`preinit.rs`,
//! a core module, and `preinit-component`): the first 200,000 primes by
//! trial division, and a checksum that shows it is the same either way.
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

pub fn checksum(table: &[u32]) -> u64 {
    table
        .iter()
        .fold(0u64, |s, p| s.wrapping_mul(31).wrapping_add(u64::from(*p)))
}
