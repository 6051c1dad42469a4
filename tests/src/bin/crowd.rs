//! The crowd helper of the cluster tests (`CARGO_BIN_EXE_crowd`): holds thousands of
//! WebSocket clients on a simulated host; see `wasmgate_tests::crowd`.

fn main() -> anyhow::Result<()> {
    wasmgate_tests::crowd::helper::main()
}
