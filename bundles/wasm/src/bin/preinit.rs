//! A program whose start is mostly its own initialization, as an
//! interpreter's is: it builds a table of the first 200,000 primes by trial
//! division before it does anything. `wizer.initialize` builds the table
//! too, so that with amphi's pre-initialization (`io.github.amphi.preinit`)
//! every start finds it built in the module's snapshot.
//!
//! Prints whether the table came with the module ("preinitialized") or was
//! built now ("cold"), then its size and checksum, the same either way;
//! under CGI (`amphi serve`) after a header, which shows the environment
//! is the invocation's, not the snapshot's.
#[path = "../primes.rs"]
mod primes;

#[export_name = "wizer.initialize"]
pub extern "C" fn initialize() {
    primes::initialize();
}

fn main() {
    primes::report();
}
