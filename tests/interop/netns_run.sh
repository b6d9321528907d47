#!/bin/bash
# Run a command in a fresh, private network namespace that has only the loopback interface
# (`unshare -rn`: user + network namespace, no root needed on a kernel that allows it).
# Inside it, nothing but 127.0.0.0/8 and ::1 exists, so a WHIP server (voxgate or the dev
# stand-in) and the clients started under it can only talk over loopback. Chromium otherwise
# gathers ICE candidates on every interface and, even though whip_chromium.html only puts the
# loopback ones in the offer, it may carry the media from its non-loopback host address to
# 127.0.0.1 (seen with a veth address: 192.0.2.x <-> 127.0.0.1).
#
#   tests/interop/netns_run.sh 'voxgate --config c.toml & sleep 2; tests/interop/whip_chromium.sh http://127.0.0.1:8080/whip T'
set -u
[ $# -ge 1 ] || { echo "usage: $0 'shell command'" >&2; exit 2; }
exec unshare -rn bash -c 'ip link set lo up && eval "$1"' netns_run "$*"
