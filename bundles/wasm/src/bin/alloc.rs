//! Grows memory in 1 MiB steps until allocation fails, then reports how far it got.
fn main() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut v = Vec::new();
        if v.try_reserve_exact(1 << 20).is_err() {
            println!("allocation failed after {} MiB", held.len());
            return;
        }
        v.resize(1 << 20, 1u8);
        held.push(v);
        if held.len() > 4096 {
            println!("no limit hit after 4 GiB");
            return;
        }
    }
}
