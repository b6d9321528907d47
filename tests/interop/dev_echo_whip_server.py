#!/usr/bin/python3
"""DEV TOOL ONLY: a minimal WHIP (RFC 9725) echo server on aiortc.

This is NOT a test of voxgate. It is a stand-in used to develop and debug the
interop clients in this directory (whip_aiortc.py, whip_chromium.sh) while
voxgate's own WHIP endpoint does not exist, and to check the clients' failure
path (--silent makes the echo return silence, so the clients must exit 1).

    /usr/bin/python3 tests/interop/dev_echo_whip_server.py --port 8080 [--token T] [--silent] [--g711]

Endpoints (same shape as voxgate's planned one):
    POST   /whip        Content-Type: application/sdp, offer -> 201, Location: /whip/<id>, answer
    DELETE /whip/<id>   -> 200 (404 if unknown)
    OPTIONS *           -> 204 with CORS headers
    GET    /            -> 200 "dev echo WHIP server" (health)

The answer's peer connection echoes the received audio track back to the sender.
ICE candidates are restricted to loopback (127.0.0.1 by default, --local-ip),
because aioice otherwise skips 127.0.0.1 and gathers on every other interface.
Debian packages: python3-aiortc (1.4.x). Stdlib http.server + an asyncio loop in
a thread; no aiohttp.
"""

import argparse
import asyncio
import fractions
import logging
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aioice.ice
import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

LOG = logging.getLogger("dev_echo_whip")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS, GET",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location, ETag",
}


def restrict_ice_to(ip):
    """Make aioice gather host candidates on `ip` only (loopback by default)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [ip]


try:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # stdlib up to 3.12 (Debian 12 has 3.11)
except ImportError:  # pragma: no cover
    audioop = None


class G711Path:
    """48 kHz -> 8 kHz mono -> mu-law -> 8 kHz -> 48 kHz mono, in 20 ms frames: roughly what a
    SIP leg through PCMU does to the audio (band limit ~4 kHz, companding noise)."""

    def __init__(self):
        self.down = av.AudioResampler(format="s16", layout="mono", rate=8000)
        self.up = av.AudioResampler(format="s16", layout="mono", rate=48000)
        self.fifo = av.AudioFifo()
        self.pts = 0

    def push(self, frame):
        frame.pts = None
        for f8 in self.down.resample(frame):
            pcm = bytes(f8.planes[0])[: f8.samples * 2]
            if audioop is not None:
                pcm = audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)
            g = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
            g.planes[0].update(pcm)
            g.sample_rate = 8000
            for f48 in self.up.resample(g):
                f48.pts = None
                self.fifo.write(f48)

    def pop(self, samples=960):
        if self.fifo.samples < samples:
            return None
        out = self.fifo.read(samples)
        out.pts = self.pts
        out.sample_rate = 48000
        out.time_base = fractions.Fraction(1, 48000)
        self.pts += samples
        return out


class EchoTrack(MediaStreamTrack):
    """Returns the frames received on `source`; zeros instead when `silent`; through an
    8 kHz mu-law round trip when `g711`."""

    kind = "audio"

    def __init__(self, source, silent, g711=False):
        super().__init__()
        self.source = source
        self.silent = silent
        self.g711 = G711Path() if g711 else None

    async def recv(self):
        if self.g711 is not None:
            for _ in range(50):  # bounded: the resamplers' start-up delay is a few frames at most
                out = self.g711.pop()
                if out is not None:
                    break
                self.g711.push(await self.source.recv())
            else:
                raise MediaStreamError
            frame = out
        else:
            frame = await self.source.recv()
        if not self.silent:
            return frame
        out = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=frame.samples)
        for plane in out.planes:
            plane.update(bytes(plane.buffer_size))
        out.pts = frame.pts
        out.sample_rate = frame.sample_rate
        out.time_base = frame.time_base or fractions.Fraction(1, frame.sample_rate)
        return out


class Sessions:
    def __init__(self, loop, silent, g711=False):
        self.loop = loop
        self.silent = silent
        self.g711 = g711
        self.pcs = {}

    async def create(self, offer_sdp):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sid = uuid.uuid4().hex[:16]

        @pc.on("track")
        def on_track(track):
            LOG.info("session %s: remote %s track", sid, track.kind)
            if track.kind == "audio":
                pc.addTrack(EchoTrack(track, self.silent, self.g711))

        @pc.on("connectionstatechange")
        async def on_state():
            LOG.info("session %s: connection %s", sid, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self.pcs.pop(sid, None)
                await pc.close()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers here: non-trickle answer
        self.pcs[sid] = pc
        return sid, pc.localDescription.sdp

    async def delete(self, sid):
        pc = self.pcs.pop(sid, None)
        if pc is None:
            return False
        await pc.close()
        return True

    def run(self, coro, timeout=15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class Handler(BaseHTTPRequestHandler):
    server_version = "dev-echo-whip/0.1"
    sessions = None  # set in main
    token = None

    def log_message(self, fmt, *args):
        LOG.info("%s %s", self.address_string(), fmt % args)

    def reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in CORS_HEADERS.items():
            self.send_header(k, v)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def authorized(self):
        if not self.token:
            return True
        return self.headers.get("Authorization", "") == "Bearer " + self.token

    def do_OPTIONS(self):
        self.reply(204)

    def do_GET(self):
        self.reply(200, b"dev echo WHIP server (not voxgate)\n", {"Content-Type": "text/plain"})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path.rstrip("/") != "/whip":
            return self.reply(404)
        if not self.authorized():
            return self.reply(401, headers={"WWW-Authenticate": "Bearer"})
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            return self.reply(415)
        try:
            sid, answer = self.sessions.run(self.sessions.create(body.decode()))
        except Exception as exc:  # bad offer
            LOG.exception("offer failed")
            return self.reply(400, str(exc).encode(), {"Content-Type": "text/plain"})
        self.reply(
            201,
            answer.encode(),
            {"Content-Type": "application/sdp", "Location": "/whip/" + sid, "ETag": '"%s"' % sid},
        )

    def do_DELETE(self):
        path = self.path.split("?", 1)[0]
        if not path.startswith("/whip/"):
            return self.reply(404)
        if not self.authorized():
            return self.reply(401, headers={"WWW-Authenticate": "Bearer"})
        ok = self.sessions.run(self.sessions.delete(path[len("/whip/"):]))
        self.reply(200 if ok else 404)

    def do_PATCH(self):
        self.reply(405, headers={"Allow": "POST, DELETE, OPTIONS"})


def main():
    ap = argparse.ArgumentParser(description="DEV TOOL: WHIP echo server on aiortc (not voxgate)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN (default: accept any)")
    ap.add_argument("--silent", action="store_true", help="echo silence instead of the received audio")
    ap.add_argument("--g711", action="store_true",
                    help="send the echo through an 8 kHz mu-law round trip, like a PCMU SIP leg")
    ap.add_argument("--local-ip", default="127.0.0.1", help="the only ICE host candidate address")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    if not args.verbose:
        LOG.setLevel(logging.INFO)
    restrict_ice_to(args.local_ip)

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    Handler.sessions = Sessions(loop, args.silent, args.g711)
    Handler.token = args.token
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    print("dev echo WHIP server on http://%s:%d/whip%s (NOT voxgate)"
          % (args.host, args.port, (" [silent]" if args.silent else "") + (" [g711]" if args.g711 else "")), file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
