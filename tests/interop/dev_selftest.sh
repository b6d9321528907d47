#!/bin/bash
# DEV TOOL: checks the interop clients against the dev echo stand-in (NOT a test of voxgate).
# Runs in a private loopback-only network namespace (netns_run.sh). Four checks:
#   aiortc client -> exit 0 (tone back), Chromium client -> exit 0,
#   both again against `dev_echo_whip_server.py --silent` -> exit 1.
# Prints each client's JSON line and a closing "N passed, N failed" line; exit 0 iff all pass.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PORT:-18080}"
exec timeout -k 5 300 "$HERE/netns_run.sh" "
H='$HERE'; PORT=$PORT; pass=0; fail=0
check() { # name expected-exit cmd...
  local name=\$1 want=\$2; shift 2
  out=\$(\"\$@\"); rc=\$?
  echo \"\$name: exit \$rc (want \$want) \$out\"
  if [ \$rc -eq \$want ]; then pass=\$((pass+1)); else fail=\$((fail+1)); fi
}
wait_up() { for i in \$(seq 50); do python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:\$PORT/', timeout=1)\" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
/usr/bin/python3 \"\$H/dev_echo_whip_server.py\" --port \$PORT --token T 2>/dev/null & S=\$!
wait_up
check aiortc 0 /usr/bin/python3 \"\$H/whip_aiortc.py\" --url http://127.0.0.1:\$PORT/whip --token T --seconds 5 --tone 1000
check chromium 0 \"\$H/whip_chromium.sh\" http://127.0.0.1:\$PORT/whip T 5 1000
kill \$S; wait \$S 2>/dev/null
/usr/bin/python3 \"\$H/dev_echo_whip_server.py\" --port \$PORT --token T --silent 2>/dev/null & S=\$!
wait_up
check aiortc-silent 1 /usr/bin/python3 \"\$H/whip_aiortc.py\" --url http://127.0.0.1:\$PORT/whip --token T --seconds 5 --tone 1000
check chromium-silent 1 \"\$H/whip_chromium.sh\" http://127.0.0.1:\$PORT/whip T 5 1000
kill \$S; wait \$S 2>/dev/null
echo \"\$pass passed, \$fail failed\"
[ \$fail -eq 0 ]
"
