//! Executes `unreachable`: a trap.
fn main() {
    println!("about to trap");
    #[cfg(target_family = "wasm")]
    core::arch::wasm32::unreachable();
}
