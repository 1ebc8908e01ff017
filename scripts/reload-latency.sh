#!/usr/bin/env bash
# Does a reload stall the request path? Same gateway process, same load:
# one wrk run without reloads, one with a SIGHUP reload every second (each
# reload rewrites the allowlist and rotates the key file, so it is a real
# change), alternating ROUNDS times. Prints p50/p99 for both.
# Uses the shared harness's TLS upstream stand-in on 127.0.0.1:18443.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
B=${BENCH_STATE:-/tmp/paymongo-gateway-bench}
PORT=${PORT:-18080} DURATION=${DURATION:-10} CONNS=${CONNS:-64} ROUNDS=${ROUNDS:-2}
[[ -s $B/certs/ca.pem ]] || "$BENCH/setup.sh"
cargo build --release --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
mkdir -p "$B/run/tmp"; cp "$BENCH"/{common,upstream}.conf "$BENCH/wrk.lua" "$B/"
(cd "$B" && nginx -p "$B/" -c "$B/upstream.conf" -e "$B/run/upstream.error.log" -g "daemon off; worker_processes 1;") &
up_pid=$!
trap 'kill "$gw_pid" 2>/dev/null; kill -QUIT "$up_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
printf 'sk_test_bench\n' >"$work/sk"
write_config() {  # write_config N: an allowlist that differs per reload
  cat >"$work/gateway.toml" <<TOML
mode = "test"
[upstream]
url = "https://127.0.0.1:18443"
ca_file = "$B/certs/ca.pem"
[[service]]
name = "bench"
listen = "127.0.0.1:$PORT"
secret_key = { file = "$work/sk" }
allow = ["GET /v1/payment_intents/*", "POST /v1/payment_intents", "GET /v1/reload_$1"]
[admin]
listen = "127.0.0.1:$((PORT + 1))"
[log]
level = "warn"
TOML
}
write_config 0
"$root/target/release/paymongo-gateway" --no-watch --config "$work/gateway.toml" 2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$PORT/v1/payment_intents/x"
timeout 15 wrk -t1 -c"$CONNS" -d2s -s "$B/wrk.lua" "$url" -- GET >/dev/null   # warm the pool
run() { timeout $((DURATION + 5)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$B/wrk.lua" "$url" -- GET | grep '^RESULT'; }
printf '%-10s %5s %9s %8s %8s %7s\n' mode round req/s p50_ms p99_ms errors
for r in $(seq "$ROUNDS"); do
  read -r _ rps p50 p99 _ non2xx sockerr <<<"$(run)"
  printf '%-10s %5s %9s %8.2f %8.2f %7s\n' steady "$r" "$rps" "$(bc -l <<<"$p50/1000")" "$(bc -l <<<"$p99/1000")" $((non2xx + sockerr))
  ( for n in $(seq "$DURATION"); do sleep 1; write_config "$r$n"; printf 'sk_test_bench\n' >"$work/sk.new"; mv "$work/sk.new" "$work/sk"; kill -HUP "$gw_pid"; done ) &
  hup=$!
  read -r _ rps p50 p99 _ non2xx sockerr <<<"$(run)"
  wait "$hup"
  printf '%-10s %5s %9s %8.2f %8.2f %7s\n' reloading "$r" "$rps" "$(bc -l <<<"$p50/1000")" "$(bc -l <<<"$p99/1000")" $((non2xx + sockerr))
done
curl -s "http://127.0.0.1:$((PORT + 1))/metrics" | grep -E '^paymongo_gateway_(reloads_total|config_generation)' 
