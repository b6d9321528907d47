#!/usr/bin/env bash
# Relay benchmark: the loadgen calls through voxgate to two echo Backends, all on this machine.
#
#   bench/relay-bench.sh RATE CONCURRENCY TOTAL HOLD [SETTLE_SECS] [WINDOW_SECS]
#
# e.g. bench/relay-bench.sh 200 1000 1000 65s    (1,000 concurrent calls, 60 s of full load)
#      bench/relay-bench.sh 1000 2000 20000 1s   (setup rate)
#      LOAD=whip bench/relay-bench.sh 20 200 200 60s 15 30                   (WebRTC, Opus through)
#      LOAD=whip CODECS=pcmu,telephone-event bench/relay-bench.sh 20 100 100 60s 10 30 (transcoded)
#
# LOAD=whip runs WHIP sessions (`voxgate-loadgen whip`) instead of SIP calls; CODECS sets what the
# echo Backends accept (their default takes Opus, so WebRTC media passes through). The proxy's
# RSS is also sampled before the load, to give memory per session.
#
# After SETTLE_SECS (default 10) it samples each process's CPU and RSS for WINDOW_SECS (default
# 20), and the proxy's relayed-packet counter over the same window, to give CPU per packet.
# Then it prints the loadgen's summary. The proxy's media workers run at nice -10
# (`media.worker_nice`; WORKER_NICE=N changes it, 0 for none); any `VOXGATE_SECTION__KEY` in the
# environment overrides the proxy's config as usual (e.g. VOXGATE_MEDIA__WORKERS=1); BIN_DIR=DIR takes `voxgate` and
# `voxgate-loadgen` from DIR instead (A/B runs against an older build). Builds nothing: run
# `cargo build --release -p voxgate-proxy -p voxgate-loadgen` first.
set -euo pipefail

rate=${1:?rate}; conc=${2:?concurrency}; total=${3:?total}; hold=${4:?hold}
settle=${5:-10}; window=${6:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
load=${LOAD:-call}
codecs=${CODECS:-pcmu,pcma,opus,telephone-event}
bin=${BIN_DIR:-$root/target/release}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/voxgate.toml" <<EOF
[node]
id = "bench-proxy"
region = "US-EAST"
[sip]
listen_udp = "127.0.0.1:5060"
listen_tcp = ""
[http]
listen = "127.0.0.1:9090"
[webrtc]
listen = "127.0.0.1:8080"
media_listen = "127.0.0.1:3478"
[media]
public_ip = "127.0.0.1"
bind_ip = "127.0.0.1"
port_min = 20000
port_max = 39999
worker_nice = ${WORKER_NICE:--10}
[limits]
max_sessions = 5000
[[backends]]
id = "b1"
address = "127.0.0.1:5080"
max_sessions = 3000
[[backends]]
id = "b2"
address = "127.0.0.1:5081"
max_sessions = 3000
EOF

for port in 5080 5081; do
    "$bin/voxgate-loadgen" backend --listen 127.0.0.1:$port --max-sessions 3000 \
        --codecs "$codecs" --status-every 0s > "$work/backend-$port.log" 2>&1 &
    pids+=($!)
done
"$bin/voxgate" --config "$work/voxgate.toml" > "$work/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
sleep 1
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$proxy/status")
if [[ $load == whip ]]; then
    "$bin/voxgate-loadgen" whip --target http://127.0.0.1:8080/whip --rate "$rate" \
        --concurrency "$conc" --total "$total" --hold "$hold" --quiet \
        --report "${REPORT:-$work/report.json}" > "$work/loadgen.out" 2>&1 &
else
    "$bin/voxgate-loadgen" call --target 127.0.0.1:5060 --rate "$rate" --concurrency "$conc" \
        --total "$total" --hold "$hold" --quiet --report "${REPORT:-$work/report.json}" \
        > "$work/loadgen.out" 2>&1 &
fi
loadgen=$!
pids+=("$loadgen")

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
relayed() {
    curl -s 127.0.0.1:9090/metrics |
        awk '/^voxgate_rtp_packets_total/ {sum += $2} END {printf "%d", sum}'
}
sleep "$settle"
declare -A t0 rss
for pid in "${pids[@]}"; do t0[$pid]=$(cpu_ticks "$pid"); rss[$pid]=0; done
p0=$(relayed)
for _ in $(seq "$window"); do
    sleep 1
    for pid in "${pids[@]}"; do
        r=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        (( r > rss[$pid] )) && rss[$pid]=$r
    done
done
p1=$(relayed)
names=(backend-5080 backend-5081 proxy loadgen)
for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    ticks=$(( $(cpu_ticks "$pid") - t0[$pid] ))
    printf '%-13s cpu %3d %%  rss %6d KiB\n' "${names[$i]}" \
        $(( ticks * 100 / hz / window )) "${rss[$pid]}"
    if [[ $pid == "$proxy" && $load == whip ]]; then
        awk -v t="$ticks" -v hz="$hz" -v w="$window" -v c="$conc" -v rss="${rss[$pid]}" \
            -v idle="$idle_rss" 'BEGIN {
            printf "proxy: %.2f %% of a core per session, %.0f KiB RSS per session over idle (%d KiB)\n",
                t / hz / w * 100 / c, (rss - idle) / c, idle }'
    elif [[ $pid == "$proxy" ]]; then
        packets=$(( p1 - p0 ))
        awk -v t="$ticks" -v hz="$hz" -v p="$packets" -v w="$window" 'BEGIN {
            printf "proxy relayed %d packets/s, %.2f us CPU per relayed packet\n",
                p / w, (p > 0 ? t / hz / p * 1e6 : 0) }'
    fi
done
wait "$loadgen" || true
head -"${SUMMARY_LINES:-9}" "$work/loadgen.out"
curl -s 127.0.0.1:9090/metrics | grep -E '^voxgate_rtp_(dropped|packets)' || true
