#!/usr/bin/env bash
# Install the Debian packages this project needs, when they are missing.
#   scripts/deps.sh build   compilers' libraries and the test suite's tools (make, make test)
#   scripts/deps.sh bench   plus the anchors and charts (make bench, make lab)
#   scripts/deps.sh all     everything
# As root it runs apt-get; otherwise it prints the command to run and fails.
set -euo pipefail

build=(gcc make pkg-config libcurl4-openssl-dev libjansson-dev libsqlite3-dev zlib1g-dev
       libcmocka-dev liblua5.4-dev curl python3 python3-jsonschema)
build+=(liburing-dev) # loadgen --engine uring, server-uring
build+=(libhiredis-dev redis-server) # the incrementor's web nodes and writer (--queue, --consume)
# nginx-light and haproxy are the proxy scenario's anchors; the suite runs that
# scenario too (tests/scripts/test_bench.py), so `make test` installs them.
anchors=(nginx-light haproxy)
bench=(wrk "${anchors[@]}" sqlite3)
test_extra=(valgrind clang libclang-rt-14-dev clang-format "${anchors[@]}")
test_extra+=(iproute2) # ss: the proxy's receive buffers (tests/integration/test_proxy.c)
test_extra+=(prometheus) # promtool: every server's /metrics checked (tests/scripts/test_live.py)
# chromium loads the bench's and the lab's pages in tests/scripts/test_report.py.
test_extra+=(chromium)

case "${1:-build}" in
    build) want=("${build[@]}" "${test_extra[@]}") ;;
    bench) want=("${build[@]}" "${bench[@]}") ;;
    all)   want=("${build[@]}" "${test_extra[@]}" "${bench[@]}") ;;
    *) echo "usage: scripts/deps.sh [build|bench|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
# Installing nginx or haproxy starts their system services where an init
# system runs (nginx on port 80): a policy-rc.d refusing every start (exit
# 101, Debian's convention) keeps them stopped while apt-get runs. Only the
# processes the project starts itself, on ports of its own, ever run.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
