//! The `wasmgate` command, built inside the tests crate so that end-to-end tests can start it
//! as separate processes (`CARGO_BIN_EXE_wasmgate-node`).

fn main() -> std::process::ExitCode {
    wasmgate::cli::main()
}
