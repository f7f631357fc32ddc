//! A fixed amount of CPU work (argument: rounds of 10 million steps); prints
//! the milliseconds the work took, as the guest's clock saw it.
fn main() {
    let rounds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let started = std::time::Instant::now();
    let mut x: u64 = 1;
    for _ in 0..rounds * 10_000_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    println!("{} {}", started.elapsed().as_millis(), x % 10);
}
