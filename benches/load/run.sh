#!/usr/bin/env bash
# Load comparison: the upstream itself ("direct"), nginx as a plain proxy_pass reverse proxy with
# upstream keep-alive ("nginx", the baseline), and the reference gateway ("gateway"), all on this
# machine, in one run, with the same wrk settings, alternating targets per round and reporting
# medians. See benches/load/README.md.
#
# Usage: benches/load/run.sh [--skip-gateway] [--ratelimit] [--cache]
# Env:   THREADS=1 CONNECTIONS=50 DURATION=10s WARMUP=2s ROUNDS=3
#        UPSTREAM_PORT=18080 NGINX_PORT=18081 GATEWAY_PORT=18082 ADMIN_PORT=19901
#        RATELIMIT=0 GATEWAY_RL_PORT=18083 ADMIN_RL_PORT=19902
#        CACHE=0 NGINX_CACHE_PORT=18084 GATEWAY_CACHE_PORT=18085 ADMIN_CACHE_PORT=19903
#        GATEWAY_BIN=target/release/gateway SKIP_GATEWAY=0 READY_TIMEOUT=20 OUT= KEEP_TMP=0
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/load/run.sh [--skip-gateway] [--ratelimit] [--cache] [--help]

Measures the upstream directly, nginx (proxy_pass + upstream keep-alive) and the gateway with the
same wrk settings, alternating targets each round, and prints the medians as a markdown table.

Options:
  --skip-gateway   measure only direct + nginx (same as SKIP_GATEWAY=1)
  --ratelimit      also measure "gateway-rl": a second gateway whose route has a per-IP rate
                   limit that always admits (the decision and headers on every request;
                   same as RATELIMIT=1)
  --cache          also measure cache hits: "nginx-cache" (proxy_cache, proxy_cache_valid 1h)
                   and "gateway-cache" (a route with `cache: { default_ttl: 1h }`); every
                   measured request is a hit (same as CACHE=1)
  -h, --help       this text

Environment (defaults in brackets):
  THREADS [1]  CONNECTIONS [50]  DURATION [10s]  WARMUP [2s, 0 = none]  ROUNDS [3]
  UPSTREAM_PORT [18080]  NGINX_PORT [18081]  GATEWAY_PORT [18082]  ADMIN_PORT [19901]
  GATEWAY_RL_PORT [18083]  ADMIN_RL_PORT [19902]   (with --ratelimit)
  NGINX_CACHE_PORT [18084]  GATEWAY_CACHE_PORT [18085]  ADMIN_CACHE_PORT [19903]   (with --cache)
  GATEWAY_BIN [<repo>/target/release/gateway; built with cargo if that default is missing]
  READY_TIMEOUT [20]  seconds to wait for the gateway's /readyz
  OUT [unset]         also write the report (markdown) to this file
  KEEP_TMP [0]        1 = keep the temp dir with configs and logs
  RUST_LOG [warn]     passed to the gateway
EOF
}

SKIP_GATEWAY=${SKIP_GATEWAY:-0}
RATELIMIT=${RATELIMIT:-0}
CACHE=${CACHE:-0}
while (($#)); do
    case $1 in
        --skip-gateway) SKIP_GATEWAY=1 ;;
        --ratelimit) RATELIMIT=1 ;;
        --cache) CACHE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)

THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
UPSTREAM_PORT=${UPSTREAM_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
GATEWAY_PORT=${GATEWAY_PORT:-18082}
ADMIN_PORT=${ADMIN_PORT:-19901}
GATEWAY_RL_PORT=${GATEWAY_RL_PORT:-18083}
ADMIN_RL_PORT=${ADMIN_RL_PORT:-19902}
NGINX_CACHE_PORT=${NGINX_CACHE_PORT:-18084}
GATEWAY_CACHE_PORT=${GATEWAY_CACHE_PORT:-18085}
ADMIN_CACHE_PORT=${ADMIN_CACHE_PORT:-19903}
READY_TIMEOUT=${READY_TIMEOUT:-20}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
HOST=127.0.0.1

die() {
    echo "run.sh: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# wrk durations: N, Ns, Nm, Nh (integers only here, so we can bound wrk with `timeout`).
dur_secs() {
    [[ $1 =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$1' (use e.g. 10s, 1m)"
    local n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]}
    case $u in
        h) echo $((n * 3600)) ;;
        m) echo $((n * 60)) ;;
        *) echo "$n" ;;
    esac
}

for v in THREADS CONNECTIONS ROUNDS READY_TIMEOUT UPSTREAM_PORT NGINX_PORT GATEWAY_PORT ADMIN_PORT \
    GATEWAY_RL_PORT ADMIN_RL_PORT NGINX_CACHE_PORT GATEWAY_CACHE_PORT ADMIN_CACHE_PORT; do
    is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((THREADS >= 1)) || die "THREADS must be >= 1"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"
((ROUNDS >= 1)) || die "ROUNDS must be >= 1"
DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
((DURATION_S >= 1)) || die "DURATION must be at least 1s"
[[ $SKIP_GATEWAY == 0 || $SKIP_GATEWAY == 1 ]] || die "SKIP_GATEWAY must be 0 or 1"
[[ $RATELIMIT == 0 || $RATELIMIT == 1 ]] || die "RATELIMIT must be 0 or 1"
[[ $CACHE == 0 || $CACHE == 1 ]] || die "CACHE must be 0 or 1"
if ((SKIP_GATEWAY)); then RATELIMIT=0; fi

PORTS=("$UPSTREAM_PORT" "$NGINX_PORT")
if ((!SKIP_GATEWAY)); then PORTS+=("$GATEWAY_PORT" "$ADMIN_PORT"); fi
if ((RATELIMIT)); then PORTS+=("$GATEWAY_RL_PORT" "$ADMIN_RL_PORT"); fi
if ((CACHE)); then PORTS+=("$NGINX_CACHE_PORT"); fi
if ((CACHE && !SKIP_GATEWAY)); then PORTS+=("$GATEWAY_CACHE_PORT" "$ADMIN_CACHE_PORT"); fi
if [[ $(printf '%s\n' "${PORTS[@]}" | sort -u | wc -l) -ne ${#PORTS[@]} ]]; then
    die "ports must be distinct: ${PORTS[*]}"
fi

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }
nginx_path() {
    if have nginx; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    fi
}

pkgs=()
if [[ -z $(nginx_path) ]] || ! have wrk; then pkgs+=(nginx wrk); fi
if ! have curl; then pkgs+=(curl); fi
if ! have pgrep; then pkgs+=(procps); fi
if ((${#pkgs[@]})); then
    SUDO=()
    if ((EUID != 0)); then
        have sudo || die "need ${pkgs[*]} and not root (no sudo): install them first"
        SUDO=(sudo)
    fi
    echo "==> installing ${pkgs[*]} (apt-get)"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
fi
NGINX_BIN=$(nginx_path)
[[ -n $NGINX_BIN ]] || die "nginx not found after install"
have wrk || die "wrk not found after install"

# ---------------------------------------------------------------------------------------------
# Process bookkeeping and cleanup: everything we start is recorded and stopped on exit.
# ---------------------------------------------------------------------------------------------
WORKDIR=""
STARTED=() # long-running processes we started (nginx masters, gateway)
WRK_PID=""

descendants() { # pid -> all descendant pids, one per line
    local c
    for c in $(pgrep -P "$1" || true); do
        echo "$c"
        descendants "$c"
    done
}

stop_tree() { # pid: TERM, wait up to 5s, then KILL it and whatever children it left behind
    local pid=$1 kids k i
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        kill -KILL "$k" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]]; then stop_tree "$WRK_PID"; fi
    for pid in ${STARTED[@]+"${STARTED[@]}"}; do
        stop_tree "$pid"
    done
    if [[ -n $WORKDIR && -d $WORKDIR ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            echo "run.sh: kept $WORKDIR" >&2
        else
            rm -rf -- "$WORKDIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "${PORTS[@]}"; do
    if port_busy "$p"; then
        die "port $p on $HOST is already in use (override UPSTREAM_PORT/NGINX_PORT/GATEWAY_PORT/ADMIN_PORT)"
    fi
done

WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/gateway-load.XXXXXX")
chmod 0755 "$WORKDIR" # nginx workers may run as an unprivileged user
mkdir -p "$WORKDIR/results"

# ---------------------------------------------------------------------------------------------
# Machine info
# ---------------------------------------------------------------------------------------------
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
nginx_version=$("$NGINX_BIN" -v 2>&1 | head -n1)
wrk_version=$({ wrk -v 2>&1 || true; } | head -n1)
git_rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null || true) ]]; then git_rev+=" (dirty)"; fi
TARGETS=(direct nginx)
if ((!SKIP_GATEWAY)); then TARGETS+=(gateway); fi
if ((RATELIMIT)); then TARGETS+=(gateway-rl); fi
if ((CACHE)); then TARGETS+=(nginx-cache); fi
if ((CACHE && !SKIP_GATEWAY)); then TARGETS+=(gateway-cache); fi
est=$((ROUNDS * ${#TARGETS[@]} * (DURATION_S + WARMUP_S)))

{
    echo "## Load comparison"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- nproc: $(nproc)"
    echo "- cpu: ${cpu_model:-unknown}"
    echo "- kernel: $(uname -srm)"
    echo "- nginx: $nginx_version"
    echo "- wrk: $wrk_version"
    echo "- repo: $git_rev"
    echo "- load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP per run," \
        "$ROUNDS round(s), targets alternate each round, medians reported"
} >"$WORKDIR/header.md"
cat "$WORKDIR/header.md"
echo
echo "==> targets: ${TARGETS[*]}; about ${est}s of load"

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
NGINX_HAS_E=0
if "$NGINX_BIN" -h 2>&1 | grep -q -- '-e filename'; then NGINX_HAS_E=1; fi

nginx_common() { # dir: main-context and http-context lines shared by both nginx instances
    local d=$1
    cat <<EOF
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
EOF
}

nginx_http_common() {
    local d=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 65s;
EOF
}

write_upstream_conf() { # dir
    local d=$1
    {
        echo "worker_processes 1;"
        nginx_common "$d"
        echo "events { worker_connections 4096; }"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    default_type text/plain;
    server {
        listen $HOST:$UPSTREAM_PORT;
        location / { return 200 "ok\n"; }
    }
}
EOF
    } >"$d/nginx.conf"
}

write_proxy_conf() { # dir
    local d=$1
    {
        echo "worker_processes auto;"
        nginx_common "$d"
        echo "events { worker_connections 4096; }"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    upstream bench {
        server $HOST:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
        if ((CACHE)); then
            cat <<EOF
    proxy_cache_path $d/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=1h use_temp_path=off;
    server {
        listen $HOST:$NGINX_CACHE_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
EOF
        fi
        echo "}"
    } >"$d/nginx.conf"
}

show_log() { # file
    if [[ -s $1 ]]; then
        echo "---- last lines of $1:" >&2
        tail -n 30 "$1" >&2
    fi
}

# Poll until url answers (any HTTP status with -f off, 2xx with -f on); fail if pid dies or timeout.
wait_url() { # name pid url timeout_s log
    local name=$1 pid=$2 url=$3 limit=$4 log=$5 deadline
    deadline=$((SECONDS + limit))
    until curl -fs -o /dev/null --max-time 1 "$url"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log "$log"
            die "$name exited before becoming ready ($url)"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$log"
            die "$name not ready after ${limit}s ($url)"
        fi
        sleep 0.2
    done
}

start_nginx() { # name dir port
    local name=$1 d=$2 port=$3 eflag=() pid
    if ((NGINX_HAS_E)); then eflag=(-e "$d/error.log"); fi
    "$NGINX_BIN" -t -q -p "$d/" -c "$d/nginx.conf" ${eflag[@]+"${eflag[@]}"} >"$d/stdout.log" 2>&1 || {
        show_log "$d/stdout.log"
        die "nginx ($name) config test failed"
    }
    "$NGINX_BIN" -p "$d/" -c "$d/nginx.conf" ${eflag[@]+"${eflag[@]}"} >>"$d/stdout.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    wait_url "nginx ($name)" "$pid" "http://$HOST:$port/" 10 "$d/error.log"
    LAST_PID=$pid
}

mkdir -p "$WORKDIR/upstream" "$WORKDIR/nginx"
write_upstream_conf "$WORKDIR/upstream"
write_proxy_conf "$WORKDIR/nginx"
start_nginx upstream "$WORKDIR/upstream" "$UPSTREAM_PORT"
UPSTREAM_PID=$LAST_PID
start_nginx proxy "$WORKDIR/nginx" "$NGINX_PORT"
NGINX_PID=$LAST_PID
echo "==> upstream nginx pid $UPSTREAM_PID on $HOST:$UPSTREAM_PORT; proxy nginx pid $NGINX_PID on $HOST:$NGINX_PORT"

start_gateway() { # name port admin-port extra-route-lines; sets LAST_PID
    local name=$1 port=$2 admin=$3 extra=$4
    cat >"$WORKDIR/$name.yaml" <<EOF
listeners:
  - bind: $HOST:$port
admin: { bind: $HOST:$admin }
upstreams:
  bench:
    endpoints: [ "$HOST:$UPSTREAM_PORT" ]
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: bench
EOF
    if [[ -n $extra ]]; then echo "$extra" >>"$WORKDIR/$name.yaml"; fi
    RUST_LOG=${RUST_LOG:-warn} "$GATEWAY_BIN" --config "$WORKDIR/$name.yaml" \
        >"$WORKDIR/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    wait_url "$name" "$LAST_PID" "http://$HOST:$admin/readyz" "$READY_TIMEOUT" "$WORKDIR/$name.log"
    echo "==> $name pid $LAST_PID on $HOST:$port (admin $HOST:$admin), binary $GATEWAY_BIN"
}

GATEWAY_PID=""
if ((!SKIP_GATEWAY)); then
    if [[ -n ${GATEWAY_BIN:-} ]]; then
        [[ $GATEWAY_BIN == /* ]] || GATEWAY_BIN=$PWD/$GATEWAY_BIN
        [[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
    else
        target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
        [[ $target_dir == /* ]] || target_dir=$REPO_ROOT/$target_dir
        GATEWAY_BIN=$target_dir/release/gateway
        if [[ ! -x $GATEWAY_BIN ]]; then
            echo "==> $GATEWAY_BIN missing: cargo build --release --bin gateway"
            (cd -- "$REPO_ROOT" && cargo build --release --bin gateway)
            [[ -x $GATEWAY_BIN ]] || die "cargo build did not produce $GATEWAY_BIN"
        fi
    fi
    start_gateway gateway "$GATEWAY_PORT" "$ADMIN_PORT" ""
    GATEWAY_PID=$LAST_PID
    echo "- gateway: $GATEWAY_BIN ($(date -u -r "$GATEWAY_BIN" '+built %Y-%m-%d %H:%M UTC'))" >>"$WORKDIR/header.md"
fi
GATEWAY_RL_PID=""
if ((RATELIMIT)); then
    # The same route with a per-IP rate limit that always admits: every request pays for the
    # key, the in-memory decision and the RateLimit / RateLimit-Policy headers.
    start_gateway gateway-rl "$GATEWAY_RL_PORT" "$ADMIN_RL_PORT" \
        "    rate_limit: { by: ip, rate: 1000000/s, burst: 4000000000 }"
    GATEWAY_RL_PID=$LAST_PID
fi
GATEWAY_CACHE_PID=""
if ((CACHE && !SKIP_GATEWAY)); then
    # The same route behind the HTTP cache (in memory); the upstream's answer has no freshness
    # of its own, so the route's default TTL applies, as proxy_cache_valid does for nginx.
    start_gateway gateway-cache "$GATEWAY_CACHE_PORT" "$ADMIN_CACHE_PORT" \
        "    cache: { default_ttl: 1h }"
    GATEWAY_CACHE_PID=$LAST_PID
fi
if ((SKIP_GATEWAY)); then
    echo "- gateway: skipped" >>"$WORKDIR/header.md"
fi

target_port() {
    case $1 in
        direct) echo "$UPSTREAM_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        gateway) echo "$GATEWAY_PORT" ;;
        gateway-rl) echo "$GATEWAY_RL_PORT" ;;
        nginx-cache) echo "$NGINX_CACHE_PORT" ;;
        gateway-cache) echo "$GATEWAY_CACHE_PORT" ;;
        *) die "unknown target $1" ;;
    esac
}

# Every target must answer GET / with 200 "ok" before we measure it.
for t in "${TARGETS[@]}"; do
    url="http://$HOST:$(target_port "$t")/"
    code=$(curl -s -o "$WORKDIR/probe" -w '%{http_code}' --max-time 5 "$url" || true)
    body=$(tr -s '\r\n' '  ' <"$WORKDIR/probe" 2>/dev/null || true)
    body=${body% }
    if [[ $code != 200 || $body != ok ]]; then
        if [[ $t == gateway* ]]; then show_log "$WORKDIR/$t.log"; fi
        die "$t ($url) answered status '$code' body '${body:0:80}', expected 200 'ok'"
    fi
done

# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------
run_wrk() { # port duration outfile
    local port=$1 dur=$2 out=$3 secs rc=0
    secs=$(dur_secs "$dur")
    timeout --kill-after=5 "$((secs + 30))" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --latency "http://$HOST:$port/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    return "$rc"
}

# wrk --latency output -> "req/s p50_ms p99_ms requests errors" (errors = non-2xx/3xx + socket errors)
parse_wrk() {
    awk '
        function ms(v,   n, u) {
            n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "ns") return n / 1000000
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s") return n * 1000
            if (u == "m") return n * 60000
            if (u == "h") return n * 3600000
            return -1
        }
        /^Requests\/sec:/ { rps = $2 }
        /Latency Distribution/ { dist = 1; next }
        dist && $1 == "50%" { p50 = ms($2) }
        dist && $1 == "99%" { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /Non-2xx or 3xx responses:/ { errs += $NF }
        /Socket errors:/ {
            for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { e = $i; sub(/,/, "", e); errs += e }
        }
        END {
            if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
            printf "%s %.4f %.4f %d %d\n", rps, p50, p99, reqs, errs
        }' "$1"
}

target_pid() {
    case $1 in
        direct) echo "$UPSTREAM_PID" ;;
        nginx) echo "$NGINX_PID" ;;
        gateway) echo "$GATEWAY_PID" ;;
        gateway-rl) echo "$GATEWAY_RL_PID" ;;
        nginx-cache) echo "$NGINX_PID" ;;
        gateway-cache) echo "$GATEWAY_CACHE_PID" ;;
        *) die "unknown target $1" ;;
    esac
}

CLK_TCK=$(getconf CLK_TCK)
tree_ticks() { # pid -> user + system CPU ticks of the process and its descendants (all threads)
    local p total=0 t
    for p in "$1" $(descendants "$1"); do
        # Fields after the parenthesised command name: utime is the 12th, stime the 13th.
        t=$(sed -e 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

measure() { # round target
    local r=$1 t=$2 port line rps p50 p99 reqs errs note="" pid before after
    port=$(target_port "$t")
    pid=$(target_pid "$t")
    if ((WARMUP_S > 0)); then
        run_wrk "$port" "$WARMUP" "$WORKDIR/warmup.txt" || {
            cat "$WORKDIR/warmup.txt" >&2
            die "wrk warm-up against $t failed"
        }
    fi
    before=$(tree_ticks "$pid")
    run_wrk "$port" "$DURATION" "$WORKDIR/results/$t.round$r.txt" || {
        cat "$WORKDIR/results/$t.round$r.txt" >&2
        die "wrk against $t failed"
    }
    after=$(tree_ticks "$pid")
    line=$(parse_wrk "$WORKDIR/results/$t.round$r.txt") || {
        cat "$WORKDIR/results/$t.round$r.txt" >&2
        die "could not parse wrk output for $t"
    }
    read -r rps p50 p99 reqs errs <<<"$line"
    # CPU the target spent per request (µs), from its process tree's user + system time: steadier
    # than req/s on a shared machine, and what a rate limit or an auth check costs.
    echo "$line $(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" \
        'BEGIN { if (n > 0) printf "%.2f", t * 1000000 / hz / n; else print "nan" }')" >>"$WORKDIR/results/$t"
    if ((errs > 0)); then note="  ($errs errors/non-2xx of $reqs)"; fi
    printf 'round %d/%d  %-8s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms%s\n' \
        "$r" "$ROUNDS" "$t" "$rps" "$p50" "$p99" "$note"
}

n=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        measure "$r" "${TARGETS[$(((i + r - 1) % n))]}"
    done
done

# ---------------------------------------------------------------------------------------------
# Peak RSS (VmHWM summed over the process tree: nginx master + workers, gateway + children)
# ---------------------------------------------------------------------------------------------
hwm_mib() { # pid
    local p total=0 kb pids
    mapfile -t pids < <(echo "$1"; descendants "$1")
    for p in "${pids[@]}"; do
        kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }'
}
declare -A RSS=([direct]="-")
RSS[nginx]=$(hwm_mib "$NGINX_PID")
if [[ -n $GATEWAY_PID ]]; then
    kill -0 "$GATEWAY_PID" 2>/dev/null || {
        show_log "$WORKDIR/gateway.log"
        die "gateway died during the run"
    }
    RSS[gateway]=$(hwm_mib "$GATEWAY_PID")
fi
if [[ -n $GATEWAY_RL_PID ]]; then
    kill -0 "$GATEWAY_RL_PID" 2>/dev/null || {
        show_log "$WORKDIR/gateway-rl.log"
        die "gateway-rl died during the run"
    }
    RSS[gateway-rl]=$(hwm_mib "$GATEWAY_RL_PID")
fi
if ((CACHE)); then RSS[nginx-cache]=${RSS[nginx]}; fi
if [[ -n $GATEWAY_CACHE_PID ]]; then
    kill -0 "$GATEWAY_CACHE_PID" 2>/dev/null || {
        show_log "$WORKDIR/gateway-cache.log"
        die "gateway-cache died during the run"
    }
    RSS[gateway-cache]=$(hwm_mib "$GATEWAY_CACHE_PID")
fi

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
col_median() { # file column
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
        { a[NR] = $1 }
        END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
        }'
}

declare -A MED_RPS MED_P50 MED_P99 MED_CPU ERRS
for t in "${TARGETS[@]}"; do
    MED_CPU[$t]=$(col_median "$WORKDIR/results/$t" 6)
    MED_RPS[$t]=$(col_median "$WORKDIR/results/$t" 1)
    MED_P50[$t]=$(col_median "$WORKDIR/results/$t" 2)
    MED_P99[$t]=$(col_median "$WORKDIR/results/$t" 3)
    ERRS[$t]=$(awk '{ s += $5 } END { print s + 0 }' "$WORKDIR/results/$t")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

REPORT=$WORKDIR/report.md
{
    cat "$WORKDIR/header.md"
    echo
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | ratio vs nginx |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %.0f | %.3f | %.3f | %s | %s | %s |\n' "$t" "${MED_RPS[$t]}" "${MED_P50[$t]}" \
            "${MED_P99[$t]}" "${MED_CPU[$t]}" "${RSS[$t]}" "$(ratio "${MED_RPS[$t]}" "${MED_RPS[nginx]}")"
    done
    echo
    echo "Per round (req/s):"
    echo
    for t in "${TARGETS[@]}"; do
        printf -- '- %s: %s\n' "$t" "$(awk '{ printf "%s%.0f (%s µs CPU/req)", (NR > 1 ? ", " : ""), $1, $6 }' "$WORKDIR/results/$t")"
    done
    echo
    echo "direct = the upstream nginx itself (1 worker, no proxy); peak RSS = VmHWM summed over the"
    echo "process and its children (nginx: master + workers)."
    for t in "${TARGETS[@]}"; do
        if ((ERRS[$t] > 0)); then
            echo
            echo "WARNING: $t had ${ERRS[$t]} socket errors or non-2xx/3xx responses; its numbers are suspect."
        fi
    done
    echo
    if [[ -n $GATEWAY_PID ]]; then
        echo "gateway/nginx throughput ratio: $(ratio "${MED_RPS[gateway]}" "${MED_RPS[nginx]}")"
    else
        echo "gateway/nginx throughput ratio: n/a (gateway skipped)"
    fi
    if [[ -n $GATEWAY_RL_PID ]]; then
        echo "gateway-rl/gateway throughput ratio: $(ratio "${MED_RPS[gateway-rl]}" "${MED_RPS[gateway]}");" \
            "CPU per request ratio (the rate limit's cost): $(ratio "${MED_CPU[gateway-rl]}" "${MED_CPU[gateway]}")"
    fi
    if [[ -n $GATEWAY_CACHE_PID ]]; then
        echo "gateway-cache/nginx-cache (hits) throughput ratio: $(ratio "${MED_RPS[gateway-cache]}" "${MED_RPS[nginx-cache]}");" \
            "CPU per request ratio: $(ratio "${MED_CPU[gateway-cache]}" "${MED_CPU[nginx-cache]}")"
    fi
} >"$REPORT"

if [[ -n $OUT ]]; then
    mkdir -p -- "$(dirname -- "$OUT")"
    cp -- "$REPORT" "$OUT"
    echo "==> report written to $OUT"
fi
echo
sed -n '/^| target/,$p' "$REPORT"
