#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real peers, then runs lints,
# the Rust tests and the end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --quiet
cargo build --release --quiet -p tollgate-sidecar   # the quick start's binary
# The policy tests: the examples' and the project's own (Intercept's stateful semantics, approvals).
target/release/tollgate test examples tests/policy --junit target/policy-tests.xml
# The differential fuzzer: Tollgate's HTTP/1 server against hyper's, a minute.
fuzz/run.sh 60 http_framing
tests/.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider
