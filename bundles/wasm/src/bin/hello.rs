//! Prints a greeting: the smallest useful workload.
fn main() {
    println!("hello from wasm");
}
