//! `amphi-wasm`: amphi's command line with wasmtime in; `amphi` hands it
//! what needs the engine.

fn main() -> std::process::ExitCode {
    amphi_cli::amphi_wasm()
}
