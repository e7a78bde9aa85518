#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is
# missing (see scripts/install-test-deps.sh), then runs `cargo test`.
#
# Optional suites switch on through the environment (see README.md):
#   KUBECONFIG          a cluster for the operator's integration tests
#   XMPPFED_TEST_MSSQL  a SQL Server connection string for the store suite
#   XMPPFED_TEST_POSTGRES=required  the PostgreSQL suites fail instead of
#                       skipping when no server can be started (CI sets it)
#   XMPPFED_TEST_KAMAILIO=required  the SIP edge's Kamailio test fails instead
#                       of skipping when Kamailio is not installed (CI sets it)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# Test clients (slixmpp) live in this virtualenv; tests find it through this variable.
export XMPPFED_TEST_PYTHON="${XMPPFED_TEST_PYTHON:-$PWD/target/test-venv/bin/python}"

exec cargo test --workspace --locked "$@"
