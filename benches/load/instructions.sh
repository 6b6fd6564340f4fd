#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does
# not move with the machine's noise, to compare builds and to find where the
# instructions go (see benches/load/README.md, "Instructions per request").
#
#   benches/load/instructions.sh [targets...]     # default: b c d
#
# Each target runs under `valgrind --tool=callgrind` on core 0 with the
# upstream on core 1; wrk (-c8) warms it up for WARMUP seconds, the counters
# are zeroed, wrk runs for D seconds, and the counters are dumped. The
# figure is the instructions executed in that window divided by the requests
# wrk completed. Profiles are kept in OUT (callgrind_annotate them).
#
# Environment: D [8], WARMUP [3], OUT [./callgrind], NO_BUILD [0],
# CARGO_TARGET_DIR [target].
set -euo pipefail

D=${D:-8}
WARMUP=${WARMUP:-3}
OUT=${OUT:-$PWD/callgrind}
NO_BUILD=${NO_BUILD:-0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(b c d)

for tool in valgrind callgrind_control callgrind_annotate wrk taskset; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 1; }
done
if [[ $NO_BUILD != 1 ]]; then
    (cd "$ROOT" && cargo build --release --quiet --features redis,otel \
        --example load_upstream --example load_bare_proxy --example load_gateway)
fi
mkdir -p "$OUT"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port() { echo $((20000 + RANDOM % 20000)); }
wait_port() {
    local i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

UP_PORT=$(port)
taskset -c 1 "$BIN/load_upstream" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"
"$BIN/load_gateway" tokens 1 "$OUT/token.txt"
TOKEN=$(cat "$OUT/token.txt")

declare -A RESULT
for t in "${TARGETS[@]}"; do
    LP=$(port)
    header=()
    case $t in
        b) cmd=("$BIN/load_bare_proxy" "127.0.0.1:$LP" "127.0.0.1:$UP_PORT") ;;
        c) cmd=("$BIN/load_gateway" proxy "127.0.0.1:$LP" "127.0.0.1:$UP_PORT") ;;
        d) cmd=("$BIN/load_gateway" full "127.0.0.1:$LP" "127.0.0.1:$UP_PORT")
           header=(-H "Authorization: Bearer $TOKEN") ;;
        *) echo "error: unknown target $t (b, c or d)" >&2; exit 1 ;;
    esac
    profile="$OUT/callgrind.$t.out"
    rm -f "$profile" "$profile".*
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$profile" "${cmd[@]}" \
        >"$OUT/$t.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$LP" || { cat "$OUT/$t.log" >&2; exit 1; }
    taskset -c 1 wrk -t1 -c8 -d"${WARMUP}s" "${header[@]}" "http://127.0.0.1:$LP/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    requests=$(taskset -c 1 wrk -t1 -c8 -d"${D}s" "${header[@]}" "http://127.0.0.1:$LP/" |
        awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    total=$(callgrind_annotate "$profile.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    RESULT[$t]=$((total / requests))
    printf '(%s) %9d instructions per request (%d requests)\n' "$t" "${RESULT[$t]}" "$requests"
done
if [[ -n ${RESULT[b]:-} ]]; then
    for t in "${TARGETS[@]}"; do
        awk -v t="$t" -v x="${RESULT[$t]}" -v b="${RESULT[b]}" \
            'BEGIN {printf "(%s)/(b) %.2f\n", t, x / b}'
    done
fi
