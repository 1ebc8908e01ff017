#!/usr/bin/env bash
# Runs the idempotency memory-bound test with optimisations on, driving the
# full 1M distinct keys (debug test runs use fewer). Prints the RSS figures.
#
#   scripts/idempotency-rss.sh             # release profile
#   PROFILE=bench scripts/idempotency-rss.sh   # reuse `cargo bench` artifacts
#   IDEM_RSS_KEYS=2000000 scripts/idempotency-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
export IDEM_RSS_KEYS="${IDEM_RSS_KEYS:-1000000}"
cargo test --profile "$profile" --test idempotency_memory -- --nocapture 2>&1 |
    grep -E "filling:|idempotency memory:|test result|panicked"
