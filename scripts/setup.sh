#!/usr/bin/env bash
# Installs whatever `make test` needs and is missing; skips what is already there.
# Safe to run again and again. Runs as root on CI (a fresh clone, a machine of the same kind).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages for tests: Chromium (page tests), nats-server and redis-server (cluster
#    adapters). `--build-only` (used by `make run`) skips them.
need_apt=()
if [ "${1:-}" != "--build-only" ]; then
  # Debian puts nats-server in /usr/sbin, which a non-login PATH may lack.
  have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
  have chromium || need_apt+=(chromium)
  have nats-server || need_apt+=(nats-server)
  have redis-server || need_apt+=(redis-server)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# 2. The wasm target for rustc.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# 3. wasm-bindgen CLI at exactly the Cargo.lock version of wasm-bindgen (no --locked: the
#    registry mirror lacks some of the CLI's locked dependency versions). A debug build of the
#    tool produces byte-identical output and installs in about half the time.
wb_ver=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_ver" ]; then
  say "cargo install wasm-bindgen-cli $wb_ver (a few minutes, once per machine)"
  cargo install wasm-bindgen-cli --version "=$wb_ver" --debug --force
fi

# 4. wasm-pack, which builds the npm package's WebAssembly module (from crates.io: npm's
#    wasm-pack downloads from GitHub). Always run with `--mode no-install`, so it uses the
#    wasm-bindgen CLI above and never tries to fetch one. A debug build of the tool is enough.
if [ "$(wasm-pack --version 2>/dev/null)" != "wasm-pack 0.15.1" ]; then
  say "cargo install wasm-pack 0.15.1 (a few minutes, once per machine)"
  cargo install wasm-pack --version =0.15.1 --locked --debug --force
fi

# 5. Node modules: the npm package's (phoenix for interop tests, ws, playwright-core, binaryen,
#    tsup, typescript) and the pinned front-end toolchains its package tests build apps with
#    (npm/toolchains: Vite, webpack, esbuild, Rollup, Jest, Vitest, publint, attw). Kept between
#    runs; reinstalled when a lock file changes.
for dir in npm npm/toolchains; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "npm ci ($dir/)"
    npm ci --prefix "$dir" --no-audit --no-fund >/dev/null
  fi
done
say "tools ready"
