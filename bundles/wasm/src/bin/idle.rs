//! An idle workload: sleeps for the given seconds (default 600), for the
//! memory benchmarks.
fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(600);
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
