#!/bin/bash
# WHIP (RFC 9725) interop check with headless Chromium: the fake microphone plays a tone,
# the page measures the echoed audio with a WebAudio AnalyserNode.
#
#   tests/interop/whip_chromium.sh URL TOKEN [SECONDS] [TONE_HZ] [extra whip_chromium_server.py args...]
#   e.g. tests/interop/whip_chromium.sh http://127.0.0.1:8080/whip T
#
# Prints ONE JSON line; exit 0 the tone came back, 1 it did not, 2 usage/HTTP error.
# Overall cap: 60 s (WHIP_CHROMIUM_TIMEOUT). Needs Debian's chromium and /usr/bin/python3.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 2 ]; then
    echo "usage: $0 URL TOKEN [SECONDS] [TONE_HZ] [--region R] [--cands loopback|all]" >&2
    echo '{"ok": false, "status": null, "setup_ms": null, "connected": false, "frames_received": 0, "dominant_hz": null, "tone_ratio": null, "delete_status": null, "error": "usage: whip_chromium.sh URL TOKEN [SECONDS] [TONE_HZ]"}'
    exit 2
fi
URL="$1"; TOKEN="$2"; shift 2
SECONDS_="5"; TONE="1000"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then SECONDS_="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then TONE="$1"; shift; fi
CAP="${WHIP_CHROMIUM_TIMEOUT:-60}"
# the driver's own cap is 15 s below ours, so it normally reports (and kills Chromium) itself
timeout -k 5 "$CAP" /usr/bin/python3 "$HERE/whip_chromium_server.py" \
    --url "$URL" --token "$TOKEN" --seconds "$SECONDS_" --tone "$TONE" --timeout "$((CAP - 15))" "$@"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "{\"ok\": false, \"status\": null, \"setup_ms\": null, \"connected\": false, \"frames_received\": 0, \"dominant_hz\": null, \"tone_ratio\": null, \"delete_status\": null, \"error\": \"overall timeout ${CAP} s\"}"
    exit 1
fi
exit $rc
