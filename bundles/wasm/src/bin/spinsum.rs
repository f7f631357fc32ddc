//! Steps a 64-bit LCG N times without calling the host, then prints the
//! result: a guest a checkpoint can only catch at a loop back-edge, and
//! whose answer shows whether its state survived.
fn main() {
    let n: u64 = std::env::args().nth(1).map_or(1 << 30, |a| a.parse().expect("N"));
    println!("spinning {n}");
    let mut x: u64 = 1;
    for _ in 0..n {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    println!("{x}");
}
