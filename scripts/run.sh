#!/usr/bin/env bash
# The main job until the gateway lands: an echo Backend on 127.0.0.1:5080 and a 100-call run of
# the load generator against it (20 calls/s, 5 s hold, G.711 RTP), with the report printed and
# written to loadgen-report.json. Extra arguments go to `voxgate-loadgen call`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p voxgate-loadgen
bin=target/release/voxgate-loadgen
"$bin" backend --listen 127.0.0.1:5080 --max-sessions 200 &
backend=$!
trap 'kill -TERM $backend 2>/dev/null; wait $backend 2>/dev/null || true' EXIT
sleep 0.5
"$bin" call --target 127.0.0.1:5080 --rate 20 --concurrency 100 --total 100 --hold 5s \
    --report loadgen-report.json --max-failure-rate 0 "$@"
