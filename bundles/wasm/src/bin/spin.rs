//! Spins forever without calling the host: only an outside stop ends it.
fn main() {
    println!("spinning");
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
