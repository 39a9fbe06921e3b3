#!/usr/bin/env bash
# The sandbox core's unit tests (the sandbox, and its snapshots) under
# valgrind's memcheck: no invalid access, no use of uninitialised memory, no
# leak, with the arena copies, the write faults, the signal handler's jumps
# and the threads. About 30 s (loop counts divided by 10).
# Skipped without valgrind, and for sanitizer builds (they don't mix).
set -u
BIN=${BIN:-bin}
case "$BIN" in *san*) echo "skip: sanitizer build"; exit 0 ;; esac
command -v valgrind >/dev/null || { echo "skip: no valgrind"; exit 0; }
# Timing is judged by the plain run of the same tests; under valgrind a
# signal can wait seconds for a long C call (a pattern bomb) to return, so
# the time bounds get 30 s of slack here.
# --fair-sched=yes: valgrind runs one thread at a time under one lock, and
# its default lock lets a thread that releases it take it straight back: a
# runner spinning in a tenant's endless loop then starves the watchdog that
# would stop it, and the run took 75 to 95 s here, once over 300 s (a CI
# timeout). With the lock handed over in turn it takes 28 s.
# The sandbox takes write faults on its snapshots' pages and lets the write
# go on (sandbox_arena.c): valgrind must keep every register exact at every
# memory access for that instruction to be run again correctly.
for t in "$BIN/tests/unit-test_sandbox" "$BIN/tests/unit-test_sandbox_arena"; do
    [ -x "$t" ] || { echo "missing $t"; exit 1; }
    SANDBOX_TEST_SCALE=10 SANDBOX_TEST_SLACK_MS=30000 \
        valgrind -q --fair-sched=yes --px-default=allregs-at-mem-access --child-silent-after-fork=yes \
        --error-exitcode=9 --leak-check=full \
        --errors-for-leak-kinds=definite,indirect "$t" || exit 1
done
