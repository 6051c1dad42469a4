#!/bin/sh
# Builds the plugin into plugins/{{name}}.wasm, where wasmgate.toml's worker host loads it.
# Uses componentize-py from PATH, or installs it (requirements.txt) into .venv the first time.
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null 2>&1; then
    if [ ! -x .venv/bin/componentize-py ]; then
        python3 -m venv .venv
        .venv/bin/pip install -r requirements.txt
    fi
    PATH="$PWD/.venv/bin:$PATH"
fi
mkdir -p plugins
# Built aside, then renamed: a running server never sees half a file.
componentize-py -d wit -w plugin componentize app -o plugins/.{{name}}.partial
mv plugins/.{{name}}.partial plugins/{{name}}.wasm
echo "built plugins/{{name}}.wasm"
