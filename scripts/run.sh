#!/usr/bin/env bash
# The main job: a single-node voxgate gateway on the embedded default config (SIP on
# 0.0.0.0:5060 UDP+TCP, WHIP on 0.0.0.0:8080 with WebRTC media on UDP 3478, metrics/health on
# 127.0.0.1:9090, RTP ports 20000-29999), with the two
# Backends that config names (127.0.0.1:5080 and :5081) run as loadgen echo Backends.
# Arguments go to voxgate (e.g. --max-sessions 50). Ctrl-C drains and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "missing: cargo (the Rust toolchain, 1.88 or newer)" >&2; exit 1; }
source scripts/packages.sh
mapfile -t missing < <(build_packages)
install_missing "${missing[@]}"
cargo build --release --locked -p voxgate-proxy -p voxgate-loadgen
bin=target/release
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for port in 5080 5081; do
    "$bin/voxgate-loadgen" backend --listen "127.0.0.1:$port" --max-sessions 100 &
    pids+=($!)
done
echo "voxgate: place calls with e.g."
echo "  $bin/voxgate-loadgen call --target 127.0.0.1:5060 --rate 20 --concurrency 50 --total 200 --hold 5s"
echo "  $bin/voxgate-loadgen whip --target http://127.0.0.1:8080/whip --concurrency 10 --hold 10s"
echo "  curl -s 127.0.0.1:9090/metrics | grep ^voxgate_"
"$bin/voxgate" "$@" &
pids+=($!)
wait "${pids[-1]}"
