#!/usr/bin/env bash
# Soak: voxgate on the embedded default config (cap 150) with two echo Backends (cap 100 each),
# all on this machine, driven by `voxgate-loadgen soak` above the cap with churn.
#
#   bench/soak.sh DURATION RATE [extra soak options...]
#
# e.g. bench/soak.sh 10m 20        (holds 2-20 s: ~220 calls offered at once, 1.5x the cap)
#      bench/soak.sh 5m 20 --kill-backend-at 2m   (the script fills in the Backend's pid)
#      bench/soak.sh 3m 20 --whip-target http://127.0.0.1:8080/whip --whip-share 0.3  (30 % WebRTC)
#
# The report goes to soak-report.json in the current directory; the exit status is the soak's
# (0 pass, 2 a violation). Builds nothing: run `cargo build --release -p voxgate-proxy
# -p voxgate-loadgen` first.
set -euo pipefail

duration=${1:?duration}; rate=${2:?rate}; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$root/target/release}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for port in 5080 5081; do
    "$bin/voxgate-loadgen" backend --listen 127.0.0.1:$port --max-sessions 100 \
        --status-every 0s > "$work/backend-$port.log" 2>&1 &
    pids+=($!)
done
backend=${pids[0]}
VOXGATE_SIP__LISTEN_UDP=127.0.0.1:5060 VOXGATE_SIP__LISTEN_TCP="" \
VOXGATE_MEDIA__BIND_IP=127.0.0.1 VOXGATE_CLUSTER__STATE_FILE="" \
VOXGATE_WEBRTC__LISTEN=127.0.0.1:8080 VOXGATE_WEBRTC__MEDIA_LISTEN=127.0.0.1:3478 \
    "$bin/voxgate" > "$work/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
sleep 1
args=()
for arg in "$@"; do
    args+=("$arg")
    [[ $arg == --kill-backend-at ]] && kill_at=1
    [[ $arg == --drain-at ]] && drain_at=1
done
[[ -n ${kill_at:-} ]] && args+=(--kill-backend-pid "$backend")
[[ -n ${drain_at:-} ]] && args+=(--drain-pid "$proxy")
status=0
"$bin/voxgate-loadgen" soak --target 127.0.0.1:5060 --metrics http://127.0.0.1:9090/metrics \
    --duration "$duration" --rate "$rate" --hold-min 2s --hold-max 20s --proxy-pid "$proxy" \
    --report soak-report.json "${args[@]}" || status=$?
exit "$status"
