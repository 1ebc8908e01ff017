#!/usr/bin/env bash
# Load test: the gateway (release build) side by side with the nginx peer,
# using the shared harness in ../shared/bench (TLS upstream stand-in on
# 127.0.0.1:18443, nginx peer on :18081, wrk). Bounded: every wrk run is
# capped by the harness (10 s points, 15 s hard cap).
#
#   scripts/load.sh                 # proxied GET/POST, 32 and 128 connections
#   MODE=replay scripts/load.sh     # POSTs with one fixed Idempotency-Key (replays)
#   STORE=redis MODE=replay ...     # same with the Redis store (needs REDIS_URL;
#                                   # REDIS_CACHE=0B measures a Redis round trip per replay)
#   LOG_LEVEL=info scripts/load.sh  # default "warn": like the peer's access_log off
#
# Env: BENCH (harness dir, default ../shared/bench), BENCH_STATE, PORT (18080),
# plus the harness's own knobs (DURATION, CONNS, METHODS, REPEAT, PEER_WORKERS).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
B=${BENCH_STATE:-/tmp/paymongo-gateway-bench}
PORT=${PORT:-18080}
MODE=${MODE:-proxy}
STORE=${STORE:-memory}
LOG_LEVEL=${LOG_LEVEL:-warn}
[[ -s $B/certs/ca.pem ]] || "$BENCH/setup.sh"

cargo build --release --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
printf 'sk_test_bench\n' >"$work/sk"
redis_line=""
if [[ $STORE == redis ]]; then
  : "${REDIS_URL:?STORE=redis needs REDIS_URL}"
  redis_line="redis_url = { env = \"REDIS_URL\" }
redis_cache = \"${REDIS_CACHE:-16MiB}\""
fi
cat >"$work/gateway.toml" <<TOML
mode = "test"
[upstream]
url = "https://127.0.0.1:18443"
ca_file = "$B/certs/ca.pem"
pool_max_idle = 512
[[service]]
name = "bench"
listen = "127.0.0.1:$PORT"
secret_key = { file = "$work/sk" }
[idempotency]
store = "$STORE"
$redis_line
[admin]
listen = "127.0.0.1:0"
[log]
level = "$LOG_LEVEL"
TOML
"$root/target/release/paymongo-gateway" --no-watch --config "$work/gateway.toml" 2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

harness=$BENCH
if [[ $MODE == replay ]]; then
  # The harness with one change to wrk.lua: every request carries the same
  # Idempotency-Key, so every gateway POST after the first is a replay. The
  # peers just forward the header; their numbers stay proxied throughput.
  harness=$work/bench
  cp -r "$BENCH" "$harness"
  chmod -R u+w "$harness"
  sed -i 's/^function init(args)$/function init(args)\n  wrk.headers["Idempotency-Key"] = "bench-replay-1"/' "$harness/wrk.lua"
  grep -q Idempotency-Key "$harness/wrk.lua"
fi
# run.sh starts the upstream and the nginx peer, loads each target, prints the table.
BENCH_STATE=$B "$harness/run.sh" "http://127.0.0.1:$PORT"
echo "gateway log: $(wc -l <"$work/gateway.log") lines"
