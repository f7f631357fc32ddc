//! `amphi`: runc's command line, with no wasm engine linked in (see the
//! library's introduction).

fn main() -> std::process::ExitCode {
    amphi_cli::amphi()
}
