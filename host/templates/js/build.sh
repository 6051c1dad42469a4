#!/bin/sh
# Builds the plugin into plugins/{{name}}.wasm, where wasmgate.toml's worker host loads it.
# Uses componentize-js from PATH, or installs it (package.json) with npm the first time.
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-js >/dev/null 2>&1; then
    [ -x node_modules/.bin/componentize-js ] || npm install --no-audit --no-fund
    PATH="$PWD/node_modules/.bin:$PATH"
fi
mkdir -p plugins
# `--disable fetch-event`: a plugin exports `events`, not an HTTP handler. Built aside, then
# renamed: a running server never sees half a file.
componentize-js app.js --wit wit --world-name plugin --disable fetch-event --out plugins/.{{name}}.partial
mv plugins/.{{name}}.partial plugins/{{name}}.wasm
echo "built plugins/{{name}}.wasm"
