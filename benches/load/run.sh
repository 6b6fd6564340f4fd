#!/usr/bin/env bash
# Whole-gateway load benchmark: see benches/load/README.md.
#
# One machine, one run: every target is driven by the same wrk settings in
# interleaved rounds, the target pinned to core 0, the upstream and wrk to
# core 1. Prints throughput, latency percentiles, CPU per request and the
# ratios to the bare hyper proxy (b) and nginx (g), then memory figures.
#
# Environment (defaults in brackets):
#   TARGETS  targets to run, any of "a b b2 c c0 d d_ts d_tu e f g h"
#            [a b b2 c d e f g h]
#            (d_ts / d_tu: (d) with tracing on, every request sampled / none
#            sampled; compare them with (d) of the same rounds)
#            (h: (d)'s valid users while load_forger floods the same gateway
#            with forged ES256 tokens from 127.0.0.2)
#            (c0: the crate's proxy on a bare hyper-util accept loop instead
#            of server::serve, to tell the server's share from the proxy's)
#   D        seconds per measured run                  [10]
#   R        interleaved rounds                        [3]
#   C        wrk connections                           [32]
#   WARMUP   seconds of warm-up per target             [2]
#   C1_D     seconds per concurrency-1 run (0: skip)   [5]
#   MEM      1: measure memory, 0: skip                [1]
#   IDLE_N   idle connections for the per-connection RSS  [1000]
#   BIG_N    idle connections for the large RSS figure    [10000]
#   TOKENS_N distinct tokens for target (e)             [50000]
#   NO_BUILD 1: use the binaries already built          [0]
#   LOAD_REQUEST_ID  1: d_ts / d_tu also run the RequestIdLayer [unset]
#   BASE_GATEWAY  another build of load_gateway (say, of the previous
#            release) for targets cB and dB: (c) and (d) as that build
#            runs them, measured in the same rounds, so a change's cost
#            reads as a same-run ratio                           []
#   CORE_PROXY / CORE_LOAD  the two cores               [0 / 1]
#   PERF     a target to profile with `perf record -g` under load after
#            the rounds (e.g. PERF=c), written to PERF_OUT [perf.<t>.data]
set -euo pipefail

TARGETS=${TARGETS:-"a b b2 c d e f g h"}
D=${D:-10}
R=${R:-3}
C=${C:-32}
WARMUP=${WARMUP:-2}
C1_D=${C1_D:-5}
MEM=${MEM:-1}
IDLE_N=${IDLE_N:-1000}
BIG_N=${BIG_N:-10000}
TOKENS_N=${TOKENS_N:-50000}
NO_BUILD=${NO_BUILD:-0}
CORE_PROXY=${CORE_PROXY:-0}
CORE_LOAD=${CORE_LOAD:-1}
PERF=${PERF:-}
PERF_OUT=${PERF_OUT:-$PWD/perf.$PERF.data}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/examples
TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-load.XXXXXX")
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

has() { [[ " $TARGETS " == *" $1 "* ]]; }

for tool in wrk taskset; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if has g && ! command -v nginx >/dev/null; then
    log "nginx is not installed: skipping target (g)"
    TARGETS=${TARGETS//g/}
fi
if has f && ! command -v redis-server >/dev/null; then
    log "redis-server is not installed: skipping target (f)"
    TARGETS=${TARGETS//f/}
fi
[[ $(nproc --all) -ge 2 ]] || die "needs two cores"
if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
    log "warning: load average $(cut -d' ' -f1-3 /proc/loadavg): other processes compete for the cores (see oth%)"
fi

# Enough descriptors for BIG_N idle connections (the children inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $MEM == 1 && $(ulimit -n) -lt $((BIG_N + 200)) ]]; then
    log "ulimit -n is $(ulimit -n): large idle-connection figure uses $(($(ulimit -n) - 200)) connections"
    BIG_N=$(($(ulimit -n) - 200))
fi

# --- build -------------------------------------------------------------------
if [[ $NO_BUILD != 1 ]]; then
    log "building (release) ..."
    (cd "$ROOT" && cargo build --release --quiet --features redis,otel \
        --example load_upstream --example load_bare_proxy \
        --example load_gateway --example load_idle_conns --example load_forger)
fi
for b in load_upstream load_bare_proxy load_gateway load_idle_conns load_forger; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing (build it or unset NO_BUILD)"
done

# --- process helpers ---------------------------------------------------------
# free_port <var>: a free loopback port below the ephemeral range, not handed
# out before (no command
# substitution: the list of ports handed out lives in this shell).
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % 20000))
        if [[ $USED_PORTS != *" $p "* ]] && ! ss -Htan "sport = :$p" | grep -q .; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
}

wait_port() { # port
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# start <name> <core> <port> <command...>: runs pinned, in the background;
# sets LAST_PID.
start() {
    local name=$1 core=$2 port=$3
    shift 3
    taskset -c "$core" "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$port" || { cat "$TMP/$name.log" >&2; die "$name did not start"; }
}

stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# CPU time (clock ticks) of a process and its children (nginx's worker).
cpu_ticks() {
    local total=0 pid t
    for pid in "$1" $(pgrep -P "$1" || true); do
        t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
        total=$((total + t))
    done
    echo "$total"
}

rss_kb() { # pid (and children)
    local total=0 pid t
    for pid in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        total=$((total + t))
    done
    echo "$total"
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# --- the upstream and the targets --------------------------------------------
free_port UP_PORT
start upstream "$CORE_LOAD" "$UP_PORT" "$BIN/load_upstream" "127.0.0.1:$UP_PORT"
UP_PID=$LAST_PID
UP=127.0.0.1:$UP_PORT

declare -A PORT PID WRK_ARGS DESC
DESC[a]="upstream alone"
DESC[b]="bare hyper proxy"
DESC[b2]="bare hyper proxy, auto server"
DESC[c]="tower-gateway proxy"
DESC[c0]="proxy, bare accept loop"
DESC[d]="full stack, 1 token"
DESC[e]="full stack, cache-miss tokens"
DESC[h]="(d) under a forged-token flood"
DESC[d_ts]="(d), tracing on, sampled"
DESC[d_tu]="(d), tracing on, unsampled"
DESC[f]="full stack, Redis limiter"
DESC[g]="nginx proxy_pass"
DESC[cB]="(c), BASE_GATEWAY build"
DESC[dB]="(d), BASE_GATEWAY build"

if has d || has dB || has d_ts || has d_tu || has e || has f || [[ $MEM == 1 ]]; then
    "$BIN/load_gateway" tokens "$TOKENS_N" "$TMP/tokens.txt"
    TOKEN=$(head -n1 "$TMP/tokens.txt")
fi

if has a; then
    free_port PORT[a]
    start a "$CORE_PROXY" "${PORT[a]}" "$BIN/load_upstream" "127.0.0.1:${PORT[a]}"
    PID[a]=$LAST_PID
fi
if has b; then
    free_port PORT[b]
    start b "$CORE_PROXY" "${PORT[b]}" "$BIN/load_bare_proxy" "127.0.0.1:${PORT[b]}" "$UP"
    PID[b]=$LAST_PID
fi
if has b2; then
    free_port PORT[b2]
    start b2 "$CORE_PROXY" "${PORT[b2]}" "$BIN/load_bare_proxy" "127.0.0.1:${PORT[b2]}" "$UP" auto
    PID[b2]=$LAST_PID
fi
if has c; then
    free_port PORT[c]
    start c "$CORE_PROXY" "${PORT[c]}" "$BIN/load_gateway" proxy "127.0.0.1:${PORT[c]}" "$UP"
    PID[c]=$LAST_PID
fi
if has c0; then
    free_port PORT[c0]
    start c0 "$CORE_PROXY" "${PORT[c0]}" "$BIN/load_gateway" proxy-bare-server "127.0.0.1:${PORT[c0]}" "$UP"
    PID[c0]=$LAST_PID
fi
if has d || has h; then
    free_port PORT[d]
    start d "$CORE_PROXY" "${PORT[d]}" "$BIN/load_gateway" full "127.0.0.1:${PORT[d]}" "$UP"
    PID[d]=$LAST_PID
    WRK_ARGS[d]="-H|Authorization: Bearer $TOKEN"
fi
if has h; then
    # The same gateway as (d), measured while it is attacked.
    PORT[h]=${PORT[d]}
    PID[h]=${PID[d]}
    WRK_ARGS[h]=${WRK_ARGS[d]}
fi
# Tracing on: (d) with the tracing-opentelemetry layer and a server span per
# request; spans are sampled (and dropped by the exporter) or not sampled.
for t in d_ts d_tu; do
    has "$t" || continue
    mode=full-traced
    [[ $t == d_tu ]] && mode=full-unsampled
    free_port PORT[$t]
    start "$t" "$CORE_PROXY" "${PORT[$t]}" "$BIN/load_gateway" "$mode" "127.0.0.1:${PORT[$t]}" "$UP"
    PID[$t]=$LAST_PID
    WRK_ARGS[$t]="-H|Authorization: Bearer $TOKEN"
done
if has e; then
    free_port PORT[e]
    start e "$CORE_PROXY" "${PORT[e]}" "$BIN/load_gateway" full "127.0.0.1:${PORT[e]}" "$UP"
    PID[e]=$LAST_PID
    WRK_ARGS[e]="-s|$HERE/tokens.lua"
fi
if has f; then
    free_port REDIS_PORT
    mkdir -p "$TMP/redis"
    start redis "$CORE_LOAD" "$REDIS_PORT" redis-server --port "$REDIS_PORT" \
        --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP/redis"
    free_port PORT[f]
    start f "$CORE_PROXY" "${PORT[f]}" "$BIN/load_gateway" full-redis "127.0.0.1:${PORT[f]}" \
        "$UP" "redis://127.0.0.1:$REDIS_PORT"
    PID[f]=$LAST_PID
    WRK_ARGS[f]="-H|Authorization: Bearer $TOKEN"
fi
if has g; then
    free_port PORT[g]
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile 30000;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream up {
        server $UP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[g]};
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    start g "$CORE_PROXY" "${PORT[g]}" nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" \
        -c "$TMP/nginx/nginx.conf"
    PID[g]=$LAST_PID
fi

if has cB || has dB; then
    [[ -x ${BASE_GATEWAY:-} ]] || die "targets cB/dB need BASE_GATEWAY (a load_gateway binary)"
fi
if has cB; then
    free_port PORT[cB]
    start cB "$CORE_PROXY" "${PORT[cB]}" "$BASE_GATEWAY" proxy "127.0.0.1:${PORT[cB]}" "$UP"
    PID[cB]=$LAST_PID
fi
if has dB; then
    free_port PORT[dB]
    start dB "$CORE_PROXY" "${PORT[dB]}" "$BASE_GATEWAY" full "127.0.0.1:${PORT[dB]}" "$UP"
    PID[dB]=$LAST_PID
    WRK_ARGS[dB]="-H|Authorization: Bearer $TOKEN"
fi

ORDER=()
for t in a b b2 c cB c0 d dB d_ts d_tu e f g h; do has "$t" && ORDER+=("$t"); done
[[ ${#ORDER[@]} -gt 0 ]] || die "no targets"

# --- load --------------------------------------------------------------------
# wrk_run <target> <core> <conns> <seconds>: prints the RESULT line.
wrk_run() {
    local t=$1 core=$2 conns=$3 secs=$4 extra=()
    if [[ -n ${WRK_ARGS[$t]:-} ]]; then
        IFS='|' read -r -a extra <<<"${WRK_ARGS[$t]}"
    fi
    local script=(-s "$HERE/report.lua")
    [[ ${extra[0]:-} == -s ]] && script=()
    TOKENS="$TMP/tokens.txt" taskset -c "$core" wrk -t1 -c"$conns" -d"${secs}s" --latency \
        "${script[@]}" "${extra[@]}" "http://127.0.0.1:${PORT[$t]}/" >"$TMP/wrk.out" 2>&1 || true
    grep '^RESULT' "$TMP/wrk.out" || { cat "$TMP/wrk.out" >&2; echo "RESULT 0 1 0 0 0 1 0 0 0 0"; }
}

# Busy clock ticks of one core, from /proc/stat (all but idle and iowait).
core_busy() {
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# measure <target> <round> <core> <conns> <seconds> <file>: appends
# "round rps p50 p99 p999 cpu_us errors target% load% other%": how busy the
# target process, the load core (upstream + wrk) and, on the target's core,
# everything but the target (other users of the machine) were.
measure() {
    local t=$1 round=$2 core=$3 conns=$4 secs=$5 out=$6 before after lb la pb pa line
    local forger=
    if [[ $t == h ]]; then
        # Forged tokens at full speed from another loopback address, for as
        # long as the valid users' run lasts.
        taskset -c "$CORE_LOAD" "$BIN/load_forger" "127.0.0.1:${PORT[h]}" 127.0.0.2 16 "$secs" \
            distinct >"$TMP/forger.out" 2>&1 &
        forger=$!
    fi
    before=$(cpu_ticks "${PID[$t]}")
    lb=$(core_busy "$CORE_LOAD")
    pb=$(core_busy "$CORE_PROXY")
    line=$(wrk_run "$t" "$core" "$conns" "$secs")
    if [[ -n $forger ]]; then
        wait "$forger" || true
        log "  forger: $(cat "$TMP/forger.out")"
    fi
    after=$(cpu_ticks "${PID[$t]}")
    la=$(core_busy "$CORE_LOAD")
    pa=$(core_busy "$CORE_PROXY")
    awk -v r="$round" -v ticks=$((after - before)) -v load=$((la - lb)) -v other=$((pa - pb - after + before)) -v tck="$TCK" '{
        req = $2; dur = $3 / 1e6
        errs = $7 + $8 + $9 + $10 + $11
        rps = (dur > 0) ? req / dur : 0
        cpu = (req > 0) ? ticks * 1e6 / tck / req : 0
        printf "%s %.0f %d %d %d %.2f %d %.0f %.0f %.0f\n", r, rps, $4, $5, $6, cpu, errs,
            100 * ticks / tck / dur, 100 * load / tck / dur, (other > 0) ? 100 * other / tck / dur : 0
    }' <<<"$line" >>"$out"
}

log "targets: ${ORDER[*]}; $R rounds x ${D}s, wrk -t1 -c$C; warm-up ${WARMUP}s each"
for t in "${ORDER[@]}"; do
    wrk_run "$t" "$CORE_LOAD" "$C" "$WARMUP" >/dev/null
done
for round in $(seq "$R"); do
    for t in "${ORDER[@]}"; do
        measure "$t" "$round" "$CORE_LOAD" "$C" "$D" "$TMP/res.$t"
        log "  round $round ($t): $(tail -n1 "$TMP/res.$t" | awk '{print $2 " req/s, p99 " $4 " us, " $6 " us CPU/req, " $7 " errors; busy: target " $8 "%, load core " $9 "%, others on target core " $10 "%"}')"
    done
done

# fmt <printf format> <value>: "nan" stays.
fmt() { awk -v f="$1" -v x="$2" 'BEGIN {if (x == "nan") print x; else printf f, x}'; }
# col <target> <column> [file prefix]: median over rounds.
col() { awk -v c="$2" '{print $c}' "$TMP/${3:-res}.$1" | median; }
# ratio <target> <ref> <column> [file prefix]: median over rounds of the
# per-round ratio, two decimals.
ratio() {
    [[ -f $TMP/${4:-res}.$2 && -f $TMP/${4:-res}.$1 ]] || { echo nan; return; }
    fmt %.2f "$(paste -d' ' "$TMP/${4:-res}.$1" "$TMP/${4:-res}.$2" |
        awk -v c="$3" '{n = NF / 2; printf "%.4f\n", ($(c + n) > 0) ? $c / $(c + n) : 0}' | median)"
}
# delta <target> <ref> <column>: median over rounds of the per-round
# difference, two decimals.
delta() {
    [[ -f $TMP/res.$2 && -f $TMP/res.$1 ]] || { echo nan; return; }
    fmt %.2f "$(paste -d' ' "$TMP/res.$1" "$TMP/res.$2" |
        awk -v c="$3" '{n = NF / 2; printf "%.4f\n", $c - $(c + n)}' | median)"
}
ms() { awk -v u="$1" 'BEGIN {if (u == "nan") print u; else printf "%.3f", u / 1000}'; }

echo
echo "== throughput, latency, CPU (median of $R rounds x ${D}s, wrk -t1 -c$C; target on core $CORE_PROXY, upstream + wrk on core $CORE_LOAD)"
printf '%-4s %-30s %9s %8s %8s %8s %8s %7s %7s %7s %7s %5s %5s %5s %s\n' \
    "" target "req/s" "p50 ms" "p99 ms" "p99.9ms" "CPU us" "rps/b" "cpu/b" "rps/g" "cpu/g" "tgt%" "load%" "oth%" errors
for t in "${ORDER[@]}"; do
    errs=$(awk '{s += $7} END {print s + 0}' "$TMP/res.$t")
    flag=ok
    [[ $errs -gt 0 ]] && flag="ERRORS($errs)"
    printf '%-4s %-30s %9s %8s %8s %8s %8s %7s %7s %7s %7s %5s %5s %5s %s\n' "($t)" "${DESC[$t]}" \
        "$(fmt %.0f "$(col "$t" 2)")" "$(ms "$(col "$t" 3)")" "$(ms "$(col "$t" 4)")" \
        "$(ms "$(col "$t" 5)")" "$(fmt %.1f "$(col "$t" 6)")" "$(ratio "$t" b 2)" "$(ratio "$t" b 6)" \
        "$(ratio "$t" g 2)" "$(ratio "$t" g 6)" "$(fmt %.0f "$(col "$t" 8)")" \
        "$(fmt %.0f "$(col "$t" 9)")" "$(fmt %.0f "$(col "$t" 10)")" "$flag"
done

echo "tgt%: the target's CPU time over the run (100: its core saturated); load%: the load core (upstream + wrk);"
echo "oth%: other processes on the target's core. tgt% well below 100 with load% near 100: the load core, not the"
echo "target, capped the throughput (CPU us/request stays comparable); oth% above a few %: a noisy run."

# --- the project's targets ---------------------------------------------------
check() { # label, awk condition over x (, y), values...
    local label=$1 cond=$2 x=$3 y=${4:-0}
    if [[ $x == nan || $y == nan ]]; then
        printf '  %-52s %-22s n/a\n' "$label" "$x"
    elif awk -v x="$x" -v y="$y" "BEGIN {exit !($cond)}"; then
        printf '  %-52s %-22s PASS\n' "$label" "$x${4:+ / $y}"
    else
        printf '  %-52s %-22s FAIL\n' "$label" "$x${4:+ / $y}"
    fi
}
echo
echo "== targets"
check "(c)/(b) throughput >= 0.90" "x >= 0.9" "$(ratio c b 2)"
check "(c)/(b) CPU per request <= 1.15" "x <= 1.15" "$(ratio c b 6)"
check "(d)/(b) throughput >= 0.85" "x >= 0.85" "$(ratio d b 2)"
check "(d)/(b) p99 <= 1.20" "x <= 1.2" "$(ratio d b 4)"
check "(f)/(d) throughput >= 0.70" "x >= 0.7" "$(ratio f d 2)"
check "stretch: (d)/(g) CPU per request <= 1.00" "x <= 1.0" "$(ratio d g 6)"
check "(h)/(d) valid users' p99 under a forged flood <= 1.5" "x <= 1.5" "$(ratio h d 4)"
check "(d_tu)-(d) CPU us/request, unsampled, <= 0.5" "x <= 0.5" "$(delta d_tu d 6)"
if has d_ts || has d_tu; then
    echo
    echo "== tracing on against off (same rounds; per-round ratios to (d), median)"
    for t in d_ts d_tu; do
        has "$t" || continue
        printf '  %-30s throughput %s  p99 %s  CPU/request %s (%s us more)\n' "($t) ${DESC[$t]}" \
            "$(ratio "$t" d 2)" "$(ratio "$t" d 4)" "$(ratio "$t" d 6)" "$(delta "$t" d 6)"
    done
fi

# --- profile -----------------------------------------------------------------
if [[ -n $PERF ]] && has "$PERF"; then
    perf record -g -o "$PERF_OUT" -p "${PID[$PERF]}" -- sleep "$D" >"$TMP/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.2
    wrk_run "$PERF" "$CORE_LOAD" "$C" "$D" >/dev/null
    wait "$perf_pid" || { cat "$TMP/perf.log" >&2; log "perf record failed"; }
    echo
    echo "== profile of ($PERF) under load: $PERF_OUT"
    echo "   perf report -i $PERF_OUT --no-children --sort symbol"
fi

# --- concurrency 1, everything on one core -----------------------------------
if [[ $C1_D != 0 ]] && { has b || has c; }; then
    taskset -a -p -c "$CORE_PROXY" "$UP_PID" >/dev/null
    for round in $(seq "$R"); do
        for t in b c; do
            has "$t" && measure "$t" "$round" "$CORE_PROXY" 1 "$C1_D" "$TMP/c1.$t"
        done
    done
    taskset -a -p -c "$CORE_LOAD" "$UP_PID" >/dev/null
    echo
    echo "== concurrency 1 (wrk -c1, upstream, target and wrk all on core $CORE_PROXY; median of $R x ${C1_D}s)"
    printf '%-4s %-30s %9s %8s %8s %8s %8s %7s %7s\n' "" target "req/s" "p50 ms" "p99 ms" "p99.9ms" "CPU us" "p50/b" "cpu/b"
    for t in b c; do
        has "$t" || continue
        printf '%-4s %-30s %9s %8s %8s %8s %8s %7s %7s\n' "($t)" "${DESC[$t]}" \
            "$(fmt %.0f "$(col "$t" 2 c1)")" "$(ms "$(col "$t" 3 c1)")" "$(ms "$(col "$t" 4 c1)")" \
            "$(ms "$(col "$t" 5 c1)")" "$(fmt %.1f "$(col "$t" 6 c1)")" "$(ratio "$t" b 3 c1)" \
            "$(ratio "$t" b 6 c1)"
    done
fi

# --- memory ------------------------------------------------------------------
# A fresh process per figure, so memory freed by an earlier test and kept by
# the allocator cannot hide a later one's growth.
mem_target() { # <kind: b|d> <port> -> LAST_PID
    case $1 in
        b) start "mem-$2" "$CORE_PROXY" "$2" "$BIN/load_bare_proxy" "127.0.0.1:$2" "$UP" ;;
        d) start "mem-$2" "$CORE_PROXY" "$2" "$BIN/load_gateway" full "127.0.0.1:$2" "$UP" ;;
    esac
}

# idle_rss <kind> <proto> <n>: prints "rss_before_kb rss_after_kb opened".
idle_rss() {
    local kind=$1 proto=$2 n=$3 port pid client before after opened i
    free_port port
    mem_target "$kind" "$port"
    pid=$LAST_PID
    sleep 0.3
    before=$(rss_kb "$pid")
    taskset -c "$CORE_LOAD" "$BIN/load_idle_conns" "127.0.0.1:$port" "$n" "$proto" 600 "${TOKEN:-}" \
        >"$TMP/idle.out" 2>&1 &
    client=$!
    PIDS+=("$client")
    for i in $(seq 1200); do
        grep -q '^open' "$TMP/idle.out" 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.5
    after=$(rss_kb "$pid")
    opened=$(awk '/^open/ {print $2}' "$TMP/idle.out")
    stop "$client"
    stop "$pid"
    echo "$before $after ${opened:-0}"
}

if [[ $MEM == 1 ]]; then
    echo
    echo "== memory (VmRSS; a fresh process per line; idle connections made one after another, one request each)"
    per_conn() { # kind proto n label
        local r
        r=$(idle_rss "$1" "$2" "$3")
        awk -v l="$4" -v n="$3" '{
            printf "  %-46s idle %6.1f MiB, with %5d conns %7.1f MiB: %5.1f KiB/conn%s\n",
                l, $1 / 1024, $3, $2 / 1024, ($3 > 0) ? ($2 - $1) / $3 : 0, ($3 < n) ? "  (only " $3 " of " n " opened)" : ""
        }' <<<"$r"
    }
    per_conn b h1 "$IDLE_N" "(b) bare hyper proxy, HTTP/1.1"
    per_conn d h1 "$IDLE_N" "(d) full stack, HTTP/1.1"
    per_conn d h2 "$IDLE_N" "(d) full stack, HTTP/2"
    per_conn d h1 "$BIG_N" "(d) full stack, HTTP/1.1"
    for t in "${ORDER[@]}"; do
        [[ $t == a ]] && continue
        printf '  %-46s after the load above: %7.1f MiB\n' "($t) ${DESC[$t]}" "$(rss_kb "${PID[$t]}" | awk '{printf "%.1f", $1 / 1024}')"
    done
fi
