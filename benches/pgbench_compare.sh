#!/usr/bin/env bash
# pgbench through pgshard, PgBouncer and straight to PostgreSQL, interleaved.
#
# Starts `pgshard demo --backends 1` (one local PostgreSQL cluster plus the proxy), a
# second pgshard without shared connections (`pipeline_connections = 0`) and our own
# PgBouncer (transaction mode) in front of the same cluster, loads pgbench data once,
# then for each pgbench mode runs ROUNDS rounds A B C D, D C B A, ... where
# A = direct PostgreSQL, B = pgshard, C = pgshard-own, D = PgBouncer, and prints
# median tps and ratios. Both proxies reach PostgreSQL over its Unix socket, as the
# demo's pgshard does; clients reach every target over TCP. Everything it starts is
# stopped at exit. See benches/README.md.
#
# With SHARDS=N (default 0: none; issue 3 uses 4) a fifth target, `sharded`, is a second
# `pgshard demo --backends N`, loaded with `pgbench -i` through the proxy: each backend
# holds the rows of its vshards only, as in a sharded deployment, and the same
# pgbench modes run against it as against the other targets. A sixth, `sharded-1pg`,
# is a pgshard with the same map whose N backends are N databases of the first
# demo's one cluster: what sharding costs when the backends are not N PostgreSQL
# instances sharing these CPUs. A seventh, `pgshard-nc`, is pgshard over the first
# demo's one backend with `pipeline_connections = N`: as many PostgreSQL processes
# serving shared requests as the sharded target has, without routing.
#
# Environment (defaults in brackets):
#   DURATION [10]  seconds per pgbench run      ROUNDS [3]   rounds per mode
#   CLIENTS [16]   pgbench -c                   THREADS [2]  pgbench -j
#   SCALE [2]      pgbench -i -s                POOL_SIZE [20] pgshard and PgBouncer pool
#   PROXY_PORT [6510], OWN_PORT [6512], BOUNCER_PORT [6511], SHARD_PORT [6513],
#   ONE_PORT [6514], NC_PORT [6515]:
#                  first port tried; the next free one is used
#   SHARDS [0]     backends of the sharded target (0: no sharded target)
#   PG_BIN [/usr/lib/postgresql/15/bin]     LOG_DIR: keep every run's output there
#   SKIP_BUILD=1: use the existing target/release/pgshard
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
SCALE=${SCALE:-2}
POOL_SIZE=${POOL_SIZE:-20}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
LOG_DIR=${LOG_DIR:-}
# Waits, in tenths of a second.
READY_WAIT=1200
STOP_WAIT=600
# A pgbench run that outlives DURATION by this much is killed and counted as failed.
RUN_GRACE_S=60
PG_OS_USER=postgres
# max_connections of a demo cluster (src/cluster/node.rs).
DEMO_MAX_CONNECTIONS=200
DB_USER=pgshard
DB_PASSWORD=pgshard
DB_NAME=postgres
READY_LINE="pgshard demo is ready"
MODES=("-S" "-M prepared -S")
SHARDS=${SHARDS:-0}
TARGETS=(direct pgshard pgshard-own pgbouncer)
((SHARDS > 0)) && TARGETS+=(sharded sharded-1pg pgshard-nc)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGSHARD=$ROOT/target/release/pgshard
PGBENCH=$PG_BIN/pgbench
export PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=10

WORK=""
DEMO_PID=""
OWN_PID=""
SHARD_PID=""
ONE_PID=""
NC_PID=""
# The last `pgshard run` started, known to cleanup before it is ready.
RUN_PID=""
BOUNCER_PID=""
RUN_TPS=0
FAILURES=()
declare -A TPS=() FAILED=()

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Waits up to $2 tenths of a second for process $1 to end; true if it did.
wait_gone() {
    local pid=$1 i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -z $BOUNCER_PID && -n $WORK && -s $WORK/bouncer/pgbouncer.pid ]]; then
        BOUNCER_PID=$(cat "$WORK/bouncer/pgbouncer.pid")
    fi
    if [[ -n $BOUNCER_PID ]] && kill -0 "$BOUNCER_PID" 2>/dev/null; then
        kill -TERM "$BOUNCER_PID"
        wait_gone "$BOUNCER_PID" "$STOP_WAIT" || kill -KILL "$BOUNCER_PID"
    fi
    if [[ -n $SHARD_PID ]] && kill -0 "$SHARD_PID" 2>/dev/null; then
        kill -TERM "$SHARD_PID"
        wait_gone "$SHARD_PID" "$STOP_WAIT" || kill -KILL "$SHARD_PID"
        wait "$SHARD_PID" 2>/dev/null
    fi
    local pid
    for pid in "$OWN_PID" "$ONE_PID" "$NC_PID" "$RUN_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            wait_gone "$pid" "$STOP_WAIT" || kill -KILL "$pid"
        fi
    done
    if [[ -n $DEMO_PID ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        # The demo stops its PostgreSQL clusters on SIGTERM.
        kill -TERM "$DEMO_PID"
        if ! wait_gone "$DEMO_PID" "$STOP_WAIT"; then
            log "pgshard demo did not stop; killing it"
            kill -KILL "$DEMO_PID"
        fi
        wait "$DEMO_PID" 2>/dev/null
    fi
    # Clusters left behind by a demo that died or was killed.
    if [[ -n $WORK ]]; then
        local pidfile
        for pidfile in "$WORK"/demo/*/postmaster.pid "$WORK"/sharded/*/postmaster.pid; do
            [[ -e $pidfile ]] || continue
            log "stopping leftover cluster $(dirname "$pidfile")"
            runuser -u "$PG_OS_USER" -- "$PG_BIN/pg_ctl" -D "$(dirname "$pidfile")" \
                -m fast -w stop >/dev/null
        done
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() {
    if command -v ss >/dev/null; then
        ss -Htln "sport = :$1" | grep -q .
    else
        (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# First free TCP port at or after $1, skipping the ports after it (already handed
# out, perhaps not listened on yet).
free_port() {
    local port=$1
    shift
    while port_in_use "$port" || [[ " $* " == *" $port "* ]]; do
        port=$((port + 1))
    done
    echo "$port"
}

ensure_pgbouncer() {
    command -v pgbouncer >/dev/null && return 0
    log "installing pgbouncer"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y pgbouncer >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y pgbouncer >/dev/null; } ||
        die "could not install pgbouncer"
}

start_demo() {
    log "starting pgshard demo on 127.0.0.1:$PROXY_PORT"
    : >"$WORK/demo.log"
    NO_COLOR=1 "$PGSHARD" demo --backends 1 --port "$PROXY_PORT" --http-port 0 \
        --pool-size "$POOL_SIZE" --dir "$WORK/demo" >"$WORK/demo.log" 2>&1 &
    DEMO_PID=$!
    local i
    for ((i = 0; i < READY_WAIT; i++)); do
        grep -qF "$READY_LINE" "$WORK/demo.log" && break
        if ! kill -0 "$DEMO_PID" 2>/dev/null; then
            cat "$WORK/demo.log" >&2
            die "pgshard demo exited before it was ready"
        fi
        sleep 0.1
    done
    grep -qF "$READY_LINE" "$WORK/demo.log" || {
        cat "$WORK/demo.log" >&2
        die "pgshard demo not ready after $((READY_WAIT / 10)) s"
    }
    BACKEND_PORT=$(sed -n 's|^primary = "postgresql://[^@]*@127\.0\.0\.1:\([0-9]*\)/.*|\1|p' \
        "$WORK/demo/shardmap.toml" | head -n1)
    [[ -n $BACKEND_PORT ]] || die "no backend port in $WORK/demo/shardmap.toml"
    # The demo's cluster keeps its Unix socket in its data directory.
    BACKEND_SOCKET_DIR=$WORK/demo/b0
    [[ -S $BACKEND_SOCKET_DIR/.s.PGSQL.$BACKEND_PORT ]] ||
        die "no PostgreSQL socket in $BACKEND_SOCKET_DIR"
    log "backend PostgreSQL on 127.0.0.1:$BACKEND_PORT and $BACKEND_SOCKET_DIR"
}

# A demo with SHARDS backends, loaded through the proxy (rows split by key).
start_sharded() {
    log "starting pgshard demo --backends $SHARDS on 127.0.0.1:$SHARD_PORT"
    NO_COLOR=1 "$PGSHARD" demo --backends "$SHARDS" --port "$SHARD_PORT" --http-port 0 \
        --pool-size "$POOL_SIZE" --dir "$WORK/sharded" >"$WORK/sharded.log" 2>&1 &
    SHARD_PID=$!
    local i
    for ((i = 0; i < READY_WAIT; i++)); do
        grep -qF "$READY_LINE" "$WORK/sharded.log" && break
        kill -0 "$SHARD_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -qF "$READY_LINE" "$WORK/sharded.log" || {
        cat "$WORK/sharded.log" >&2
        die "sharded pgshard demo did not start"
    }
    "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$SHARD_PORT" -U "$DB_USER" "$DB_NAME" \
        >>"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; die "pgbench -i through the sharded proxy failed"; }
}

# `pgshard run` with $1 (config) logging to $2; sets RUN_PID once it listens.
run_proxy() {
    local config=$1 logfile=$2 i
    NO_COLOR=1 "$PGSHARD" run --config "$config" >"$logfile" 2>&1 &
    RUN_PID=$!
    for ((i = 0; i < READY_WAIT; i++)); do
        grep -q '^pgshard listening on' "$logfile" && return 0
        kill -0 "$RUN_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$logfile" >&2
    die "pgshard run --config $config did not start"
}

# The first demo's config with another listen port, and the extra line $2.
proxy_config() {
    sed -e "s|^listen = .*|listen = \"127.0.0.1:$1\"|" \
        -e "s|^http_listen = .*|http_listen = \"127.0.0.1:0\"|" \
        -e "s|^pool_size = .*|&\n$2|" \
        "$WORK/demo/pgshard.toml"
}

# A second pgshard beside the demo's, over its cluster: the demo's config with listen
# port $1 and `pipeline_connections = $3`, written to $WORK/demo/$2.toml, with its own
# state folder (each proxy records there the map it starts with); logs to
# $WORK/$2.log. Sets RUN_PID once it listens.
start_second_proxy() {
    local port=$1 name=$2 connections=$3 config=$WORK/demo/$2.toml
    proxy_config "$port" "pipeline_connections = $connections" |
        sed -e "s|^pool_size = .*|&\nstate_dir = \"$WORK/demo/$name-state\"|" >"$config"
    grep -q "^pipeline_connections = $connections\$" "$config" &&
        grep -q '^state_dir = ' "$config" || die "could not write $config"
    run_proxy "$config" "$WORK/$name.log"
}

# The same proxy over the same cluster, with no shared connections (PgBouncer's model).
start_own() {
    log "starting pgshard without shared connections on 127.0.0.1:$OWN_PORT"
    start_second_proxy "$OWN_PORT" own 0
    OWN_PID=$RUN_PID
}

# The first demo's proxy with as many shared connections as the sharded target has
# backends. At most half the pool may be shared.
start_nconn() {
    ((2 * SHARDS <= POOL_SIZE)) ||
        die "pgshard-nc needs POOL_SIZE of at least $((2 * SHARDS)) for $SHARDS shared connections"
    log "starting pgshard with $SHARDS shared connections on 127.0.0.1:$NC_PORT"
    start_second_proxy "$NC_PORT" nc "$SHARDS"
    NC_PID=$RUN_PID
}

# The sharded demo's map with backend k moved to database shard<k> of the first
# demo's cluster, behind a proxy of its own, loaded through it.
start_one_cluster() {
    local dir=$WORK/one k dsn
    mkdir -p "$dir"
    dsn=$(sed -n 's|^primary = "\(.*\)"$|\1|p' "$WORK/demo/shardmap.toml" | head -n1)
    [[ $dsn == */postgres\?* ]] || die "unexpected backend DSN in $WORK/demo/shardmap.toml"
    for ((k = 0; k < SHARDS; k++)); do
        "$PG_BIN/psql" -qAt -h "$BACKEND_SOCKET_DIR" -p "$BACKEND_PORT" -U "$DB_USER" \
            -c "CREATE DATABASE shard$k" "$DB_NAME" >/dev/null ||
            die "could not create database shard$k"
    done
    awk -v dsn="$dsn" '/^primary = / { d = dsn; sub(/\/postgres[?]/, "/shard" k++ "?", d);
        print "primary = \"" d "\""; next } { print }' \
        "$WORK/sharded/shardmap.toml" >"$dir/shardmap.toml"
    [[ $(grep -c '/shard[0-9]*?' "$dir/shardmap.toml") == "$SHARDS" ]] ||
        die "could not write $dir/shardmap.toml"
    proxy_config "$ONE_PORT" "state_dir = \"$dir/state\"" |
        sed -e "s|^shard_map = .*|shard_map = \"$dir/shardmap.toml\"|" >"$dir/pgshard.toml"
    grep -qF "shard_map = \"$dir/shardmap.toml\"" "$dir/pgshard.toml" ||
        die "could not write $dir/pgshard.toml"
    log "starting pgshard over $SHARDS databases of one cluster on 127.0.0.1:$ONE_PORT"
    run_proxy "$dir/pgshard.toml" "$WORK/one.log"
    ONE_PID=$RUN_PID
    "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$ONE_PORT" -U "$DB_USER" "$DB_NAME" \
        >>"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; die "pgbench -i through the one-cluster proxy failed"; }
}

start_pgbouncer() {
    local dir=$WORK/bouncer
    mkdir -p "$dir"
    printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$DB_NAME = host=$BACKEND_SOCKET_DIR port=$BACKEND_PORT dbname=$DB_NAME

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $dir
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 100
ignore_startup_parameters = extra_float_digits,options
EOF
    chmod 600 "$dir/userlist.txt"
    chown -R "$PG_OS_USER:" "$dir"
    log "starting pgbouncer $(pgbouncer --version | head -n1) on 127.0.0.1:$BOUNCER_PORT"
    # -d: pgbouncer daemonizes; the daemon, not this process, writes the pid file.
    runuser -u "$PG_OS_USER" -- pgbouncer -d "$dir/pgbouncer.ini" ||
        { cat "$dir/pgbouncer.log" >&2; die "pgbouncer did not start"; }
    # runuser returns when the parent exits, possibly before the pid file exists.
    local i
    for ((i = 0; i < READY_WAIT; i++)); do
        [[ -s $dir/pgbouncer.pid ]] && break
        sleep 0.1
    done
    BOUNCER_PID=$(cat "$dir/pgbouncer.pid")
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$BOUNCER_PORT" -t 10 ||
        { cat "$dir/pgbouncer.log" >&2; die "pgbouncer is not accepting connections"; }
}

port_of() {
    case $1 in
    direct) echo "$BACKEND_PORT" ;;
    pgshard) echo "$PROXY_PORT" ;;
    pgshard-own) echo "$OWN_PORT" ;;
    sharded) echo "$SHARD_PORT" ;;
    sharded-1pg) echo "$ONE_PORT" ;;
    pgshard-nc) echo "$NC_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    esac
}

# One pgbench run; sets RUN_TPS (0 when it failed, and FAILURES says why).
run_pgbench() {
    local mode=$1 target=$2 round=$3 out rc=0 tps failed
    local -a args
    read -r -a args <<<"$mode"
    out=$WORK/runs/$(tr -c 'a-zA-Z0-9\n' _ <<<"$mode")-$target-$round.log
    timeout $((DURATION + RUN_GRACE_S)) "$PGBENCH" -h 127.0.0.1 -p "$(port_of "$target")" \
        -U "$DB_USER" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -n "${args[@]}" "$DB_NAME" \
        >"$out" 2>&1 || rc=$?
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n1)
    if ((rc != 0)) || [[ -z $tps ]] || [[ -n $failed && $failed != 0 ]]; then
        local why
        why=$(grep -m1 -E 'ERROR|FATAL|error|aborted|failed' "$out" || true)
        ((rc == 124)) && why="timed out after $((DURATION + RUN_GRACE_S)) s"
        FAILURES+=("[$mode] $target round $round: exit $rc, failed tx ${failed:-?}: ${why:-no tps}")
        FAILED[$mode,$target]=$((${FAILED[$mode,$target]:-0} + 1))
        RUN_TPS=0
        return
    fi
    RUN_TPS=$(printf '%.0f' "$tps")
}

median() {
    tr ' ' '\n' <<<"$1" | grep . | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# a/b to two decimals; n/a when either side failed (median 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

report() {
    local mode target line
    local -A med
    echo
    echo "pgbench -c $CLIENTS -j $THREADS -T $DURATION, scale $SCALE, $ROUNDS round(s), pool size" \
        "$POOL_SIZE, pgshard $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')," \
        "$(nproc) CPUs"
    local -a ratios=(sh/dir own/dir pgb/dir sh/pgb)
    ((SHARDS > 0)) && ratios+=(shard/sh 1pg/sh nc/sh shard/nc)
    line=$(printf '%-16s' mode)
    for target in "${TARGETS[@]}"; do line+=$(printf ' %11s' "$target"); done
    for target in "${ratios[@]}"; do line+=$(printf ' %8s' "$target"); done
    echo "$line"
    for mode in "${MODES[@]}"; do
        line=$(printf '%-16s' "$mode")
        for target in "${TARGETS[@]}"; do
            med[$target]=$(median "${TPS[$mode,$target]}")
            local cell
            cell=$(printf '%.0f' "${med[$target]}")
            [[ -n ${FAILED[$mode,$target]:-} ]] && cell="$cell(${FAILED[$mode,$target]}F)"
            line+=$(printf ' %11s' "$cell")
        done
        line+=$(printf ' %8s %8s %8s %8s' "$(ratio "${med[pgshard]}" "${med[direct]}")" \
            "$(ratio "${med[pgshard-own]}" "${med[direct]}")" \
            "$(ratio "${med[pgbouncer]}" "${med[direct]}")" \
            "$(ratio "${med[pgshard]}" "${med[pgbouncer]}")")
        ((SHARDS > 0)) && line+=$(printf ' %8s %8s %8s %8s' \
            "$(ratio "${med[sharded]}" "${med[pgshard]}")" \
            "$(ratio "${med[sharded-1pg]}" "${med[pgshard]}")" \
            "$(ratio "${med[pgshard-nc]}" "${med[pgshard]}")" \
            "$(ratio "${med[sharded]}" "${med[pgshard-nc]}")")
        echo "$line"
    done
    echo "sh = pgshard, own = pgshard-own (no shared connections), pgb = PgBouncer, dir = direct"
    ((SHARDS > 0)) && echo "shard = sharded (pgshard over $SHARDS backends)," \
        "1pg = sharded-1pg (the same map over $SHARDS databases of one cluster)," \
        "nc = pgshard-nc (one backend, $SHARDS shared connections)"
    echo "median tps over rounds (a failed run counts as 0; (nF): n runs failed); every run:"
    for mode in "${MODES[@]}"; do
        for target in "${TARGETS[@]}"; do
            echo "  $mode $target: ${TPS[$mode,$target]}"
        done
    done
    if ((${#FAILURES[@]})); then
        echo "failed runs:"
        printf '  %s\n' "${FAILURES[@]}"
    fi
    # pgshard's own complaints during the runs (client-visible errors show up above).
    local warnings
    warnings=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/demo.log" | grep -E '\b(WARN|ERROR)\b' || true)
    if [[ -n $warnings ]]; then
        echo "pgshard logged $(wc -l <<<"$warnings") warning/error line(s); first ones:"
        head -n 5 <<<"$warnings" | sed 's/^/  /'
    fi
}

main() {
    [[ $EUID -eq 0 ]] || die "run as root (PgBouncer and PostgreSQL run as user $PG_OS_USER)"
    [[ -x $PGBENCH ]] || die "no pgbench at $PGBENCH (set PG_BIN)"
    if [[ -z ${SKIP_BUILD:-} ]]; then
        log "building pgshard (release)"
        (cd "$ROOT" && cargo build --release --quiet)
    fi
    [[ -x $PGSHARD ]] || die "no $PGSHARD"
    ensure_pgbouncer

    WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
    # The demo hands $WORK/demo to the postgres user, who must be able to reach it.
    chmod 755 "$WORK"
    mkdir "$WORK/runs"
    PROXY_PORT=$(free_port "${PROXY_PORT:-6510}")
    BOUNCER_PORT=$(free_port "${BOUNCER_PORT:-6511}" "$PROXY_PORT")
    OWN_PORT=$(free_port "${OWN_PORT:-6512}" "$PROXY_PORT" "$BOUNCER_PORT")
    SHARD_PORT=$(free_port "${SHARD_PORT:-6513}" "$PROXY_PORT" "$BOUNCER_PORT" "$OWN_PORT")
    start_demo
    start_own
    start_pgbouncer
    if ((SHARDS > 0)); then
        # The first demo's cluster serves pgshard, pgshard-own, PgBouncer,
        # pgshard-nc and a pool per database of sharded-1pg.
        (((SHARDS + 4) * POOL_SIZE + 10 <= DEMO_MAX_CONNECTIONS)) ||
            die "SHARDS=$SHARDS with POOL_SIZE=$POOL_SIZE needs more than the demo cluster's $DEMO_MAX_CONNECTIONS connections"
        ONE_PORT=$(free_port "${ONE_PORT:-6514}" "$SHARD_PORT")
        NC_PORT=$(free_port "${NC_PORT:-6515}" "$PROXY_PORT" "$BOUNCER_PORT" "$OWN_PORT" \
            "$SHARD_PORT" "$ONE_PORT")
        start_nconn
        start_sharded
        start_one_cluster
    fi

    log "pgbench -i -s $SCALE on the backend"
    "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$BACKEND_PORT" -U "$DB_USER" "$DB_NAME" \
        >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; die "pgbench -i failed"; }

    local mode round target
    for mode in "${MODES[@]}"; do
        for ((round = 1; round <= ROUNDS; round++)); do
            local -a order=("${TARGETS[@]}")
            # Odd rounds A B C, even rounds C B A: drift hits every target alike.
            if ((round % 2 == 0)); then
                local i
                order=()
                for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
            fi
            for target in "${order[@]}"; do
                run_pgbench "$mode" "$target" "$round"
                log "  [$mode] round $round $target: $RUN_TPS tps"
                TPS[$mode,$target]+="$RUN_TPS "
            done
        done
    done
    report
    if [[ -n $LOG_DIR ]]; then
        mkdir -p "$LOG_DIR"
        cp -r "$WORK/runs" "$WORK/init.log" "$WORK/demo.log" "$WORK/own.log" \
            "$WORK/bouncer/pgbouncer.log" "$LOG_DIR/"
        [[ -f $WORK/sharded.log ]] && cp "$WORK/sharded.log" "$WORK/one.log" "$WORK/nc.log" "$LOG_DIR/"
        log "logs kept in $LOG_DIR"
    fi
}

main "$@"
