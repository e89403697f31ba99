#!/usr/bin/env bash
# Map swaps and vshard moves while pgbench writes: how long a swap takes, and how
# long each move holds its vshard's writes (p50, p99, max).
#
# Starts `pgshard demo --backends 4` (release build), loads `pgbench -i -s SCALE`
# through it (about 1,000 account rows per vshard at scale 10), starts a pgbench
# read/write script on single keys (-c CLIENTS) and meanwhile applies SWAPS map swaps
# (`pgshard map apply`, version bumps) and MOVES vshard moves (`pgshard move`, each to
# the next backend). Prints the percentiles of each figure, and pgbench's
# failed-transaction count. The swap time is the proxy's own (building the topology
# and storing it); the pause is the time the mover held the vshard's writes. Everything
# it starts is stopped at exit.
#
# Environment (defaults in brackets): SCALE [10], CLIENTS [8], MOVES [20],
# SWAPS [10], PORT [6530], HTTP_PORT [6531], PG_BIN [/usr/lib/postgresql/15/bin],
# SKIP_BUILD=1: use the existing target/release/pgshard.
set -euo pipefail

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
MOVES=${MOVES:-20}
SWAPS=${SWAPS:-10}
PORT=${PORT:-6530}
HTTP_PORT=${HTTP_PORT:-6531}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGSHARD=$ROOT/target/release/pgshard
ADMIN=http://127.0.0.1:$HTTP_PORT
export PGPASSWORD=pgshard

WORK=$(mktemp -d /tmp/pgshard-move-pause.XXXXXX)
chmod 755 "$WORK"
DEMO_PID=""
LOAD_PID=""
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    if [[ -n $DEMO_PID ]]; then
        kill "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi

log "starting pgshard demo --backends 4 on 127.0.0.1:$PORT"
"$PGSHARD" demo --backends 4 --port "$PORT" --http-port "$HTTP_PORT" --dir "$WORK/demo" \
    >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 1 600); do
    grep -qF "pgshard demo is ready" "$WORK/demo.log" && break
    kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log" >&2; exit 1; }
    sleep 0.1
done
grep -qF "pgshard demo is ready" "$WORK/demo.log" || { cat "$WORK/demo.log" >&2; exit 1; }

PGB=("$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U pgshard)
log "pgbench -i -s $SCALE through the proxy"
"${PGB[@]}" -i -q -s "$SCALE" postgres >"$WORK/init.log" 2>&1

cat >"$WORK/rw.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL
# Long enough for every swap and move (each move takes well under 2 s here).
LOAD_S=$((10 + MOVES * 2))
"${PGB[@]}" -n -c "$CLIENTS" -j 2 -T "$LOAD_S" -D scale="$SCALE" -f "$WORK/rw.sql" postgres \
    >"$WORK/load.log" 2>&1 &
LOAD_PID=$!
sleep 2

swap_us=()
log "$SWAPS map swaps"
for _ in $(seq 1 "$SWAPS"); do
    "$PGSHARD" map show --admin "$ADMIN" 2>/dev/null >"$WORK/map.toml"
    version=$(grep -E '^version = ' "$WORK/map.toml" | head -1 | awk '{print $3}')
    sed -i "s/^version = $version\$/version = $((version + 1))/" "$WORK/map.toml"
    out=$("$PGSHARD" map apply "$WORK/map.toml" --admin "$ADMIN")
    swap_us+=("$(sed -n 's/.*swapped in \([0-9]*\) us.*/\1/p' <<<"$out")")
done

pause_ms=()
log "$MOVES vshard moves"
for i in $(seq 1 "$MOVES"); do
    vshard=$(((i * 37) % 1000))
    to="b$((((vshard * 4 / 1000) + 1) % 4))"
    out=$("$PGSHARD" move "$vshard" --to "$to" --admin "$ADMIN")
    echo "  $out" >&2
    pause_ms+=("$(sed -n 's/.*write pause \([0-9.]*\) ms.*/\1/p' <<<"$out")")
done

log "waiting for pgbench (-T $LOAD_S) to finish"
wait "$LOAD_PID" || true
LOAD_PID=""

percentiles() { # name unit values...
    local name=$1 unit=$2
    shift 2
    printf '%s\n' "$@" | sort -g | awk -v name="$name" -v unit="$unit" '
        { v[NR] = $1 }
        END {
            p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
            printf "%-22s n=%-3d p50 %8.2f %s   p99 %8.2f %s   max %8.2f %s\n", name, NR, p50, unit, p99, unit, v[NR], unit
        }'
}
echo
percentiles "map swap" us "${swap_us[@]}"
percentiles "move write pause" ms "${pause_ms[@]}"
grep -E "number of (transactions actually processed|failed transactions)|^tps" "$WORK/load.log" || true
