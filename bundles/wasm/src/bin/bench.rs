//! The compute and file I/O workloads of the benchmarks, the same source
//! built for the host and for wasm32-wasip1. Prints one line per workload:
//! `name milliseconds check`, timed by the program's own clock so that
//! runtime start-up is not counted.
//!
//! Usage: bench [MiB] [DIR]   (default 64 MiB, files in /tmp)

use std::io::{Read, Write};
use std::time::Instant;

use sha2::{Digest, Sha256};

fn timed<T>(name: &str, f: impl FnOnce() -> T, show: impl Fn(&T) -> String) {
    let start = Instant::now();
    let out = f();
    println!("{name} {:.3} {}", start.elapsed().as_secs_f64() * 1e3, show(&out));
}

/// A deterministic byte stream (xorshift), so both builds hash the same data.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = std::env::args().nth(2).unwrap_or_else(|| "/tmp".into());
    let bytes = data(mib << 20);

    timed("sha256", || Sha256::digest(&bytes), |d| format!("{:02x}{:02x}", d[0], d[1]));

    // A JSON document of records, serialised then parsed back.
    let records: Vec<serde_json::Value> = (0..(mib * 4096))
        .map(|i| serde_json::json!({"id": i, "name": format!("item-{i}"), "tags": ["a", "b"], "score": i as f64 * 0.5}))
        .collect();
    let text = serde_json::to_string(&records).unwrap();
    timed(
        "json_parse",
        || serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap().len(),
        |n| n.to_string(),
    );

    let mut words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    timed("sort", || words.sort_unstable(), |_| String::new());

    let path = format!("{dir}/amphi-bench.dat");
    timed(
        "file_write",
        || {
            let mut f = std::fs::File::create(&path).unwrap();
            for chunk in bytes.chunks(1 << 20) {
                f.write_all(chunk).unwrap();
            }
            f.sync_all().unwrap();
        },
        |_| String::new(),
    );
    timed(
        "file_read",
        || {
            let mut f = std::fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        },
        |n| n.to_string(),
    );
    std::fs::remove_file(&path).unwrap();
}
