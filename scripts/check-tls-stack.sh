#!/usr/bin/env bash
# One TLS stack: rustls with aws-lc-rs. Fails if ring, OpenSSL or native-tls is
# compiled into any workspace crate, for any target.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in ring openssl-sys openssl native-tls; do
  if cargo tree --locked --workspace --target all -e normal,build -i "$crate" 2>/dev/null | grep -q "^$crate v"; then
    echo "check-tls-stack: $crate is in the build graph:" >&2
    cargo tree --locked --workspace --target all -e normal,build -i "$crate" >&2
    status=1
  fi
done
((status == 0)) && echo "check-tls-stack: rustls + aws-lc-rs only"
exit $status
