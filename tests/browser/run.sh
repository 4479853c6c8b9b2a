#!/usr/bin/env bash
# End-to-end tests of the chat page in headless Chromium (tests/browser/*.test.mjs).
# Installs what a fresh machine lacks: Debian's chromium (apt) and playwright-core (npm ci).
# Builds target/debug/hubbub unless HUBBUB_BIN names a binary to test.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n== %s\n' "$*"; }

if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
/usr/bin/chromium --version 2>/dev/null || true

# npm ci when nothing is installed, or the lock file is newer than the last install.
if [ ! -d tests/browser/node_modules/playwright-core ] ||
  [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  log "npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

if [ -z "${HUBBUB_BIN:-}" ]; then
  log "build hubbub"
  cargo build --locked --bin hubbub
fi

log "browser tests"
# Files, not the directory: Node 21+ no longer expands a directory given to --test.
node --test tests/browser/*.test.mjs
