#!/usr/bin/env bash
# Installs the real XMPP peers and test clients the tests run against, when missing:
#   Debian: prosody, ejabberd, postgresql (the shared store's suite and the
#           two-replica failover), openssl (test certificates), python3-venv,
#           kamailio with its TLS module (the SIP federation edge's peer)
#   PyPI:   slixmpp (in target/test-venv)
# Idempotent: a machine that has them is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

SLIXMPP_VERSION=1.17.0
packages=(prosody ejabberd postgresql openssl python3-venv kamailio kamailio-tls-modules)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "install-test-deps: missing ${missing[*]} and not root (no sudo): tests that need them will be skipped" >&2
    missing=()
  fi
fi
if ((${#missing[@]})); then
  echo "install-test-deps: installing ${missing[*]}" >&2
  # The tests start their own servers: keep the packages from starting system services.
  policy=/usr/sbin/policy-rc.d
  restore_policy=false
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    restore_policy=true
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $restore_policy; then "${sudo[@]}" rm -f "$policy"; fi
fi

venv=target/test-venv
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c "import slixmpp" 2>/dev/null; then
  echo "install-test-deps: installing slixmpp $SLIXMPP_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "slixmpp==$SLIXMPP_VERSION"
fi
