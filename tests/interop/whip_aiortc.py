#!/usr/bin/python3
"""WHIP (RFC 9725) interop client on aiortc: sends a sine tone, checks it comes back.

    /usr/bin/python3 tests/interop/whip_aiortc.py --url http://127.0.0.1:8080/whip --token T \
        --seconds 5 --tone 1000 [--region R]

The server is expected to echo the audio (voxgate bridges the session to a SIP
Backend that echoes). The client offers audio only, Opus only, sendrecv,
non-trickle (the offer is POSTed once ICE gathering is complete), applies the
answer, waits for `connected`, records the received audio for --seconds, finds
the dominant frequency (numpy FFT) and checks it is within +-30 Hz of --tone.

Prints ONE JSON line on stdout. Exit codes: 0 the tone came back; 1 it did not
(no connection, silence, wrong frequency, timeout); 2 usage or HTTP error.
Everything is bounded: the whole run is capped at --max-seconds (30 s default).

Debian packages: python3-aiortc (1.4.x) python3-numpy. HTTP is stdlib urllib.
ICE host candidates are restricted to --local-ip (127.0.0.1 by default): aioice
otherwise skips loopback and gathers only on the other interfaces.
"""

import argparse
import asyncio
import fractions
import json
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

RESULT = {"ok": False, "status": None, "setup_ms": None, "connected": False, "frames_received": 0,
          "dominant_hz": None, "tone_ratio": None, "delete_status": None}
PRINTED = False
TOLERANCE_HZ = 30.0
SILENCE_DBFS = -60.0


def emit(code):
    """Print the one JSON line (once) and exit with `code`."""
    global PRINTED
    if not PRINTED:
        PRINTED = True
        sys.stdout.write(json.dumps(RESULT, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
        sys.stdout.flush()
    sys.stdout.flush()
    os._exit(code)


class JsonArgParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        RESULT["error"] = "usage: " + message
        emit(2)


class HttpError(Exception):
    pass


def http(method, url, token, body=None, ctype=None, timeout=10.0):
    """Stdlib HTTP request -> (status, headers, body). Raises HttpError on transport errors."""
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
    except Exception as exc:
        raise HttpError("%s %s: %s" % (method, url, exc)) from exc


def analyse(samples, rate, tone):
    """-> (dominant_hz or None, tone_ratio, rms_dbfs) for mono float samples in [-1, 1]."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    if x.size < rate // 10:
        return None, 0.0, None
    rms = float(np.sqrt(np.mean(x * x)))
    rms_dbfs = float(round(20 * math.log10(rms), 1)) if rms > 0 else -999.0
    if rms_dbfs < SILENCE_DBFS:
        return None, 0.0, rms_dbfs
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / rate)
    spec[freqs < 50] = 0.0  # ignore DC and rumble
    k = int(np.argmax(spec))
    dominant = float(freqs[k])
    if 0 < k < spec.size - 1:  # parabolic interpolation on the log spectrum
        a, b, c = (math.log(spec[i] + 1e-30) for i in (k - 1, k, k + 1))
        den = a - 2 * b + c
        if den != 0:
            dominant += 0.5 * (a - c) / den * (freqs[1] - freqs[0])
    band = (freqs > tone - TOLERANCE_HZ) & (freqs < tone + TOLERANCE_HZ)
    total = float(spec.sum())
    ratio = float(spec[band].sum()) / total if total > 0 else 0.0
    return float(round(dominant, 1)), float(round(ratio, 3)), rms_dbfs


async def run(args):
    import av
    import numpy as np
    import aioice.ice
    from aiortc import (MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender,
                        RTCSessionDescription)
    from aiortc.mediastreams import MediaStreamError

    if args.local_ip != "any":
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.local_ip]

    rate, ptime = 48000, 0.020
    spf = int(rate * ptime)

    class ToneTrack(MediaStreamTrack):
        """Continuous sine at `hz`: 48 kHz, 20 ms, s16 mono av.AudioFrames, paced in real time."""

        kind = "audio"

        def __init__(self, hz, level=0.3):
            super().__init__()
            self.hz, self.level = hz, level
            self.pts = 0
            self.start = None

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            if self.start is None:
                self.start = time.monotonic()
            else:
                wait = self.start + self.pts / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            n = np.arange(self.pts, self.pts + spf)
            pcm = (self.level * 32767 * np.sin(2 * np.pi * self.hz * n / rate)).astype("<i2")
            frame = av.AudioFrame(format="s16", layout="mono", samples=spf)
            frame.planes[0].update(pcm.tobytes())
            frame.sample_rate = rate
            frame.pts = self.pts
            frame.time_base = fractions.Fraction(1, rate)
            self.pts += spf
            return frame

    rec = {"on": False, "frames": 0, "chunks": [], "rate": rate, "total": 0}

    async def reader(track):
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            except Exception:
                return
            rec["total"] += 1
            if not rec["on"]:
                continue
            arr = frame.to_ndarray()
            ch = len(frame.layout.channels)
            if frame.format.is_planar:
                mono = arr[0]
            else:
                mono = arr.reshape(-1)[::ch]
            scale = 32768.0 if frame.format.name.startswith("s16") else 1.0
            rec["chunks"].append(mono.astype(np.float64) / scale)
            rec["rate"] = frame.sample_rate
            rec["frames"] += 1

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    failed = asyncio.Event()
    tasks = []
    location = None

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            failed.set()

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(reader(track)))

    try:
        tone = ToneTrack(args.tone)
        transceiver = pc.addTransceiver(tone, direction="sendrecv")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
        transceiver.setCodecPreferences(opus)
        await pc.setLocalDescription(await pc.createOffer())
        deadline = time.monotonic() + 10
        while pc.iceGatheringState != "complete":  # aiortc gathers inside setLocalDescription
            if time.monotonic() > deadline:
                RESULT["error"] = "ICE gathering did not complete in 10 s"
                return 1
            await asyncio.sleep(0.05)

        if args.dump_sdp:
            sys.stderr.write("--- offer\n" + pc.localDescription.sdp)
        url = args.url
        if args.region:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"region": args.region})
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            status, headers, body = await loop.run_in_executor(
                None, lambda: http("POST", url, args.token, pc.localDescription.sdp.encode(), "application/sdp"))
        except HttpError as exc:
            RESULT["error"] = str(exc)
            return 2
        RESULT["status"] = status
        if headers.get("Location"):
            location = urllib.parse.urljoin(args.url, headers["Location"])
            RESULT["location"] = headers["Location"]
        if status != 201:
            RESULT["error"] = "POST returned %d: %s" % (status, body[:200].decode("utf-8", "replace"))
            return 2
        if not location:
            RESULT["error"] = "201 without Location"
            return 2
        if args.dump_sdp:
            sys.stderr.write("--- answer (%d)\n%s" % (status, body.decode("utf-8", "replace")))
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            RESULT["warning"] = "answer Content-Type is %r" % ctype
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
        except Exception as exc:
            RESULT["error"] = "bad answer: %s" % exc
            return 1

        waiter = asyncio.ensure_future(connected.wait())
        fwaiter = asyncio.ensure_future(failed.wait())
        await asyncio.wait([waiter, fwaiter], timeout=args.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        fwaiter.cancel()
        if not connected.is_set():
            RESULT["error"] = "not connected (state %s) within %.0f s" % (pc.connectionState, args.connect_timeout)
            return 1
        RESULT["connected"] = True
        RESULT["setup_ms"] = int(round((time.monotonic() - t0) * 1000))

        rec["on"] = True
        await asyncio.sleep(args.seconds)
        rec["on"] = False
        RESULT["frames_received"] = rec["frames"]
        samples = np.concatenate(rec["chunks"]) if rec["chunks"] else np.zeros(0)
        dominant, ratio, rms_dbfs = analyse(samples, rec["rate"], args.tone)
        RESULT["dominant_hz"], RESULT["tone_ratio"], RESULT["rms_dbfs"] = dominant, ratio, rms_dbfs
        ok = bool(dominant is not None and abs(dominant - args.tone) <= TOLERANCE_HZ)
        RESULT["ok"] = ok
        if not ok and "error" not in RESULT:
            RESULT["error"] = "silence received" if dominant is None else "dominant %.1f Hz, want %.1f" % (dominant, args.tone)
        return 0 if ok else 1
    finally:
        if location:
            try:
                loop = asyncio.get_running_loop()
                st, _, _ = await loop.run_in_executor(None, lambda: http("DELETE", location, args.token, timeout=5))
                RESULT["delete_status"] = st
            except Exception as exc:
                RESULT["delete_error"] = str(exc)
        for t in tasks:
            t.cancel()
        try:
            await asyncio.wait_for(pc.close(), 5)
        except Exception:
            pass


def main():
    ap = JsonArgParser(description="WHIP interop client on aiortc: sends a tone, checks the echo")
    ap.add_argument("--url", required=True, help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip")
    ap.add_argument("--token", default="", help="Bearer token")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to record the echo")
    ap.add_argument("--tone", type=float, default=1000.0, help="tone to send, Hz (keep < 3400 for G.711)")
    ap.add_argument("--region", default=None, help="sent as the query parameter ?region=R")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="hard cap on the whole run")
    ap.add_argument("--dump-sdp", action="store_true", help="print the offer and the answer on stderr")
    ap.add_argument("--local-ip", default="127.0.0.1", help="only ICE host candidate address ('any': all interfaces)")
    args = ap.parse_args()
    if not (0 < args.seconds <= 20):
        ap.error("--seconds must be in (0, 20]")
    if not (50 <= args.tone <= 20000):
        ap.error("--tone must be in [50, 20000]")
    RESULT["tone_hz"] = args.tone

    def on_alarm(*_):  # last-resort backstop: never hang
        RESULT["error"] = RESULT.get("error") or "hard timeout"
        emit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.max_seconds) + 3)
    try:
        code = asyncio.run(asyncio.wait_for(run(args), args.max_seconds))
    except asyncio.TimeoutError:
        RESULT["error"] = "overall timeout %.0f s" % args.max_seconds
        code = 1
    except Exception as exc:
        RESULT["error"] = "%s: %s" % (type(exc).__name__, exc)
        code = 1
    emit(code)


if __name__ == "__main__":
    main()
