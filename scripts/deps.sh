#!/usr/bin/env bash
# Install the Debian packages this project needs, when they are missing.
#   scripts/deps.sh build   compilers' libraries (make, make test)
#   scripts/deps.sh bench   plus the anchors and charts (make bench, make lab)
#   scripts/deps.sh all     everything
# As root it runs apt-get; otherwise it prints the command to run and fails.
set -euo pipefail

build=(gcc make pkg-config libcurl4-openssl-dev libjansson-dev libsqlite3-dev
       libcmocka-dev liblua5.4-dev curl python3 python3-jsonschema)
bench=(wrk nginx-light gnuplot-nox sqlite3)
test_extra=(valgrind clang libclang-rt-14-dev)

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
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
