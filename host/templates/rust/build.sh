#!/bin/sh
# Builds the plugin into plugins/{{name}}.wasm, where wasmgate.toml's worker host loads it.
# Needs Rust with the wasm32-wasip2 target: `rustup target add wasm32-wasip2`.
set -eu
cd "$(dirname "$0")"
cargo build --target wasm32-wasip2 --release
mkdir -p plugins
# Copied aside, then renamed: a running server never sees half a file.
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" plugins/.{{name}}.partial
mv plugins/.{{name}}.partial plugins/{{name}}.wasm
echo "built plugins/{{name}}.wasm"
