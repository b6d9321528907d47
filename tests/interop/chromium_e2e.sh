#!/bin/bash
# Headless Chromium through voxgate: a WHIP session whose fake microphone's tone comes back from
# an echo Backend. Runs voxgate, the echo Backend and Chromium together in a private network
# namespace that has only loopback (netns_run.sh), so nothing leaves 127.0.0.0/8 (Chromium
# otherwise pairs its other interfaces' addresses with voxgate's candidate).
#
#   tests/interop/chromium_e2e.sh TARGET_DIR [CODECS]
#   e.g. tests/interop/chromium_e2e.sh target/debug pcmu,telephone-event   (transcoded)
#
# Prints the Chromium client's JSON line last; exits with its code (0: the tone came back).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$(cd "${1:?usage: $0 TARGET_DIR [CODECS]}" && pwd)"
CODECS="${2:-opus,pcmu,telephone-event}"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
exec "$HERE/netns_run.sh" "
    export VOXGATE_SIP__LISTEN_UDP=127.0.0.1:5060 VOXGATE_SIP__LISTEN_TCP= \
        VOXGATE_HTTP__LISTEN=127.0.0.1:9090 VOXGATE_WEBRTC__LISTEN=127.0.0.1:8080 \
        VOXGATE_WEBRTC__MEDIA_LISTEN=127.0.0.1:3478 VOXGATE_MEDIA__BIND_IP=127.0.0.1 \
        VOXGATE_MEDIA__PUBLIC_IP=127.0.0.1 VOXGATE_CLUSTER__STATE_FILE=
    '$BIN/voxgate-loadgen' backend --listen 127.0.0.1:5080 --codecs '$CODECS' --status-every 0s >'$SCRATCH/b1.log' 2>&1 &
    '$BIN/voxgate-loadgen' backend --listen 127.0.0.1:5081 --codecs '$CODECS' --status-every 0s >'$SCRATCH/b2.log' 2>&1 &
    '$BIN/voxgate' >'$SCRATCH/voxgate.log' 2>&1 &
    for _ in \$(seq 50); do curl -sf http://127.0.0.1:9090/livez >/dev/null 2>&1 && break; sleep 0.1; done
    '$HERE/whip_chromium.sh' http://127.0.0.1:8080/whip none 4 1000
    rc=\$?
    curl -s http://127.0.0.1:9090/metrics | grep -E '^voxgate_(sessions_active|webrtc_transcoded_frames_total|sessions_ended_total)' >&2
    kill \$(jobs -p) 2>/dev/null
    wait 2>/dev/null
    exit \$rc
"
