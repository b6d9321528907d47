#!/usr/bin/python3
"""Driver for the headless-Chromium WHIP interop check (used by whip_chromium.sh).

    /usr/bin/python3 tests/interop/whip_chromium_server.py --url http://127.0.0.1:8080/whip --token T \
        [--seconds 5] [--tone 1000] [--region R]

It
  1. writes a WAV with the tone (stdlib `wave`: 48 kHz, s16, mono, a whole number of periods so
     Chromium's looping of the file is seamless),
  2. serves whip_chromium.html on an ephemeral 127.0.0.1 port (stdlib http.server),
  3. starts headless Chromium on that page with the fake capture device playing the WAV,
  4. waits for the page to POST its JSON result to /result (bounded by --timeout),
  5. kills Chromium (its own process group only), prints ONE JSON line, exits 0/1/2
     (0 tone came back, 1 not, 2 usage/HTTP error) like whip_aiortc.py.
Only stdlib; Debian package `chromium`.
"""

import argparse
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "whip_chromium.html")

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # no calls home at start
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--disable-extensions",
    "--disable-component-extensions-with-background-pages",
    "--password-store=basic",
    "--use-mock-keychain",
    # belt and braces: no DNS look-ups at all (every name fails locally; the WHIP URL and the
    # page use IP literals), so nothing is asked of the resolver even if a service starts
    # (the rule itself is added in main(), with the page's and the WHIP URL's hosts excluded)
    "--disable-dev-shm-usage",
    # WebRTC on loopback: real host IPs instead of .local mDNS names, and 127.0.0.1 allowed as a
    # candidate (Chromium skips loopback interfaces otherwise)
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate,"
    "DialMediaRouteProvider,GlobalMediaControls",
    "--enable-logging=stderr",
    "--v=0",
]

RESULT = {"ok": False, "status": None, "setup_ms": None, "connected": False, "frames_received": 0,
          "dominant_hz": None, "tone_ratio": None, "delete_status": None}


def emit(result, code):
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.exit(code)


class JsonArgParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        emit(dict(RESULT, error="usage: " + message), 2)


def write_tone_wav(path, hz, rate=48000, seconds=2.0, level=0.3):
    periods = max(1, round(hz * seconds))  # whole periods: seamless loop
    n = int(round(periods * rate / hz))
    frames = b"".join(struct.pack("<h", int(level * 32767 * math.sin(2 * math.pi * hz * i / rate)))
                      for i in range(n))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def find_chromium(explicit):
    # Debian's /usr/bin/chromium is a shell wrapper that sources /etc/chromium.d (Google API
    # keys, --load-extension, ...); the binary behind it is started directly when present.
    for c in [explicit, "/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome"]:
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def main():
    ap = JsonArgParser(description="headless-Chromium WHIP interop check (tone out, FFT on the echo)")
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tone", type=float, default=1000.0)
    ap.add_argument("--region", default=None)
    ap.add_argument("--cands", choices=["loopback", "all"], default="loopback",
                    help="ICE candidates put in the offer (default: loopback ones when there are any)")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=45.0, help="hard cap on the whole run, s")
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    ap.add_argument("--chromium-flag", action="append", default=[], help="extra Chromium flag (repeatable)")
    ap.add_argument("--drop-flag", action="append", default=[], help="leave out a default flag (prefix match)")
    ap.add_argument("--dump-sdp", action="store_true", help="put offer_sdp and answer_sdp in the JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (WAV, profile, chromium.log)")
    args = ap.parse_args()
    if not (0 < args.seconds <= 20):
        ap.error("--seconds must be in (0, 20]")
    if not (50 <= args.tone <= 20000):
        ap.error("--tone must be in [50, 20000]")
    base = dict(RESULT, tone_hz=args.tone)

    chromium = find_chromium(args.chromium)
    if not chromium:
        emit(dict(base, error="chromium not found (apt-get install -y chromium)"), 2)

    tmp = tempfile.mkdtemp(prefix="whip_chromium.")
    wav = os.path.join(tmp, "tone.wav")
    write_tone_wav(wav, args.tone)
    got = {}
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def do_GET(self):
            if self.path.split("?", 1)[0] not in ("/", "/whip_chromium.html"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(PAGE, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if self.path == "/result" and not done.is_set():
                try:
                    got.update(json.loads(data))
                except ValueError as exc:
                    got.update(code=1, result=dict(base, error="bad result from page: %s" % exc))
                done.set()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    query = {"url": args.url, "token": args.token, "seconds": args.seconds, "tone": args.tone,
             "cands": args.cands, "connect_timeout": args.connect_timeout}
    if args.region:
        query["region"] = args.region
    if args.dump_sdp:
        query["sdp"] = "1"
    page = "http://127.0.0.1:%d/whip_chromium.html?%s" % (port, urllib.parse.urlencode(query))

    log_path = os.path.join(tmp, "chromium.log")
    whip_host = urllib.parse.urlsplit(args.url).hostname or "127.0.0.1"
    resolver_rule = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
    if whip_host not in ("127.0.0.1", "localhost"):
        resolver_rule += ", EXCLUDE " + whip_host
    flags = [f for f in CHROMIUM_FLAGS + [resolver_rule] if not any(f.startswith(d) for d in args.drop_flag)]
    cmd = [chromium] + flags + args.chromium_flag + [
        "--user-data-dir=" + os.path.join(tmp, "profile"),
        "--use-file-for-fake-audio-capture=" + wav,
        page,
    ]
    t_start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = t_start + args.timeout
        exited_early = None
        while not done.is_set() and time.monotonic() < deadline:
            if proc.poll() is not None:
                exited_early = proc.returncode
                done.wait(1.0)  # the page may have just reported
                break
            done.wait(0.2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # Chromium's own process group only
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        httpd.shutdown()

    if done.is_set() and "result" in got:
        result, code = dict(base, **got["result"]), int(got.get("code", 1))
    else:
        why = "chromium exited (rc %s) without a result" % exited_early if exited_early is not None \
            else "no result from the page within %.0f s" % args.timeout
        result, code = dict(base, error=why), 1
    result["browser"] = "chromium"
    if code != 0 or args.keep_tmp:
        result["chromium_log"] = log_path
        try:
            with open(log_path, "rb") as f:
                tail = f.read()[-4000:].decode("utf-8", "replace")
            noise = ("dbus", "zygote", "alsa", "[whip] result")
            result["chromium_log_tail"] = [l[-300:] for l in tail.splitlines()
                                           if ("[whip]" in l or "ERROR" in l) and not any(n in l for n in noise)][-6:]
        except OSError:
            pass
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, code)


if __name__ == "__main__":
    main()
