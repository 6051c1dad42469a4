//! The `wasmgate` binary; see [`wasmgate::cli`].

fn main() -> anyhow::Result<()> {
    wasmgate::cli::main()
}
