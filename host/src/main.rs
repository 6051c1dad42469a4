//! The `wasmgate` binary; see [`wasmgate::cli`].

fn main() -> std::process::ExitCode {
    wasmgate::cli::main()
}
