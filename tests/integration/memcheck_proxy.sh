#!/usr/bin/env bash
# server-proxy under valgrind's memcheck: no invalid access, no leak at its
# stop, and no allocation per request on the steady path (issue 14): two
# proxies serve the same 8 keep-alive clients, one 1,000 requests and the
# other 11,000 (bodies of 13 B and 64 KiB, pipelined too); their malloc
# counts may differ by the connections' share (a few), not by 10,000.
# About 20 s. Skipped without valgrind, and for sanitizer builds.
set -u
BIN=${BIN:-bin}
case "$BIN" in *san*) echo "skip: sanitizer build"; exit 0 ;; esac
command -v valgrind >/dev/null || { echo "skip: no valgrind"; exit 0; }
for b in server-proxy server-epoll loadgen; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b"; exit 1; }
done

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

# The port a process printed in "listening on HOST:PORT" on its log, within 30 s.
port_of() {
    for _ in $(seq 300); do
        p=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$1" | head -1)
        [ -n "$p" ] && { echo "$p"; return 0; }
        sleep 0.1
    done
    echo "no 'listening on' in $1:" >&2
    cat "$1" >&2
    return 1
}

"$BIN/server-epoll" --port 0 2>"$dir/up.log" &
pids+=($!)
up=$(port_of "$dir/up.log") || exit 1

# Serve n hellos (and a tenth as many 64 KiB answers, pipelined) through a
# proxy under memcheck; print its malloc count.
allocs() {
    local n=$1 log=$dir/vg-$1.log
    valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$BIN/server-proxy" --port 0 --threads 1 --upstream "127.0.0.1:$up" 2>"$log" &
    local vp=$!
    pids+=("$vp")
    local px
    px=$(port_of "$log") || return 1
    "$BIN/loadgen" -q -c 8 -n "$n" "http://127.0.0.1:$px/" >"$dir/lg1" 2>&1 &&
        "$BIN/loadgen" -q -c 8 -n $((n / 10)) --pipeline 4 \
            "http://127.0.0.1:$px/stream?n=65536" >"$dir/lg2" 2>&1 ||
        { echo "loadgen failed:" >&2; cat "$dir/lg1" "$dir/lg2" >&2; return 1; }
    kill -TERM "$vp"
    wait "$vp"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "server-proxy under memcheck exited $rc:" >&2
        grep -v '^--' "$log" | tail -40 >&2
        return 1
    fi
    sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p' "$log" | tr -d ,
}

small=$(allocs 1000) || exit 1
big=$(allocs 11000) || exit 1
echo "mallocs: $small for 1,100 requests, $big for 12,100"
if [ -z "$small" ] || [ -z "$big" ] || [ $((big - small)) -ge 100 ]; then
    echo "allocations grow with requests: $((big - small)) more for 11,000 more requests" >&2
    exit 1
fi
echo "ok: no allocation per request, no memory error, no leak"
