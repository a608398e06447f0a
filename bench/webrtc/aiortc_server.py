"""The comparison server for bench/webrtc: aiortc serving the same test pattern over WHEP.

The source is snaprtcd's own test pattern (src/capture/testsrc.rs: colour bars, a grey ramp, a
bouncing white box, a frame counter and the wall clock), redrawn here in plain Python into
yuv420p at 640x480@30, once, and shared by every viewer through MediaRelay. aiortc encodes
H.264 (libx264 Baseline, tune zerolatency, 1.5 Mbit/s pinned) once per viewer: it has no way
to share encoded frames between peer connections. Prints `listening PORT` when ready.
"""

import argparse
import asyncio
import itertools
import json
import subprocess
import time

import av
from aiohttp import web
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.codecs import CODECS, h264
from aiortc.contrib.media import MediaPlayer, MediaRelay

# The same 1.5 Mbit/s as snaprtcd's `[encoder] bitrate_kbps = 1500`: aiortc starts at 1 Mbit/s
# and follows the browser's REMB up to 3 Mbit/s, so pin all three bounds.
BITRATE = 1_500_000
h264.DEFAULT_BITRATE = h264.MIN_BITRATE = h264.MAX_BITRATE = BITRATE

# H.264 only, as snaprtcd answers. (aiortc negotiates codecs in setRemoteDescription, before a
# transceiver's setCodecPreferences could apply, so VP8 would win on Chrome's offer order.)
CODECS["video"][:] = [
    c for c in CODECS["video"]
    if c.mimeType == "video/H264" or (c.mimeType == "video/rtx" and c.parameters.get("apt") in (99, 101))
]

# 5x7 glyphs, one int a row, bit 4 leftmost (as testsrc.rs).
GLYPHS = {
    "0": [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
    "1": [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
    "2": [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
    "3": [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
    "4": [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
    "5": [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
    "6": [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
    "7": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
    "8": [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
    "9": [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
    ":": [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
    ".": [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
}
BARS = [(180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58), (84, 184, 198),
        (65, 100, 212), (35, 212, 114)]


class Pattern:
    """snaprtcd's test pattern as three yuv420p planes."""

    def __init__(self, w, h):
        self.w, self.h = w, h
        self.scale = max(h // 120, 1)
        self.y, self.u, self.v = bytearray([16]) * (w * h), bytearray([128]) * (w * h // 4), bytearray([128]) * (w * h // 4)
        bar_w = -(-w // 7)
        for i, c in enumerate(BARS):
            self.fill(self.y, self.u, self.v, i * bar_w, 0, bar_w, h * 2 // 3, c)
        for i in range(16):
            g = 16 + i * 219 // 15
            self.fill(self.y, self.u, self.v, i * w // 16, h * 2 // 3, w // 16 + 1, h // 3, (g, 128, 128))
        self.bg = (bytes(self.y), bytes(self.u), bytes(self.v))
        s = self.scale
        # Each glyph pre-rendered as its luma rows (lit 235 on the dark 16 backing).
        self.rows = {
            c: [b"".join((b"\xeb" if bits & (0x10 >> gc) else b"\x10") * s for gc in range(5)) + b"\x10" * s
                for bits in g]
            for c, g in GLYPHS.items()
        }

    def fill(self, yp, up, vp, x, y, rw, rh, c):
        w, h = self.w, self.h
        x0, x1 = min(x, w), min(x + rw, w)
        for r in range(min(y, h), min(y + rh, h)):
            yp[r * w + x0:r * w + x1] = bytes([c[0]]) * (x1 - x0)
        cw = w // 2
        cx0, cx1 = min(x // 2, cw), min((x + rw) // 2, cw)
        for r in range(min(y // 2, h // 2), min((y + rh) // 2, h // 2)):
            up[r * cw + cx0:r * cw + cx1] = bytes([c[1]]) * (cx1 - cx0)
            vp[r * cw + cx0:r * cw + cx1] = bytes([c[2]]) * (cx1 - cx0)

    def text(self, yp, x, y, text):
        w, h, s = self.w, self.h, self.scale
        cols = len(text) * 6 * s
        for r in range(max(y - s, 0), min(y + 8 * s, h)):
            x0 = max(x - s, 0)
            yp[r * w + x0:r * w + min(x + cols, w)] = b"\x10" * (min(x + cols, w) - x0)
        for gr in range(7):
            line = b"".join(self.rows[c][gr] for c in text)[: w - x]
            for dy in range(s):
                r = y + gr * s + dy
                yp[r * w + x:r * w + x + len(line)] = line

    def picture(self, n, now):
        w, h, s = self.w, self.h, self.scale
        yp, up, vp = bytearray(self.bg[0]), bytearray(self.bg[1]), bytearray(self.bg[2])
        side = max(h // 6, 2)
        span_x, span_y = max(w - side, 1), max(h * 2 // 3 - side, 1)
        t = n * 4
        bx = t % span_x if (t // span_x) % 2 == 0 else span_x - t % span_x
        by = t % span_y if (t // span_y) % 2 == 0 else span_y - t % span_y
        self.fill(yp, up, vp, bx & ~1, by & ~1, side, side, (235, 128, 128))
        y = h - 10 * s
        self.text(yp, 2 * s, y, f"{n:08}")
        secs = int(now) % 86400
        clock = f"{secs // 3600:02}:{secs // 60 % 60:02}:{secs % 60:02}.{int(now * 1000) % 1000:03}"
        self.text(yp, max(w - (len(clock) * 6 * s + 2 * s), 0), y, clock)
        return yp, up, vp


class PatternTrack(VideoStreamTrack):
    """The pattern paced at `fps` (VideoStreamTrack.next_timestamp paces at 30)."""

    def __init__(self, w, h):
        super().__init__()
        self.pattern = Pattern(w, h)
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.pattern.w, self.pattern.h, "yuv420p")
        for plane, data in zip(frame.planes, self.pattern.picture(self.n, time.time())):
            plane.update(data)
        self.n += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


ids = itertools.count(1)
pcs = {}


def make_app(width, height, source_cmd=None):
    if source_cmd:
        # BENCH_SOURCE=h264: pass the program's H.264 through, encoded once (as snaprtcd does
        # with an `exec` source), so only the WebRTC stack's per-viewer cost differs.
        # The same stream in MPEG-TS (raw H.264 has no timestamps, which MediaPlayer needs).
        cmd = list(source_cmd)
        cmd[cmd.index("h264", cmd.index("-f", len(cmd) - 3))] = "mpegts"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        player = MediaPlayer(proc.stdout, format="mpegts", decode=False)
        source = player.video
    else:
        source = PatternTrack(width, height)
    relay = MediaRelay()

    async def index(_request):
        return web.Response(text="<!doctype html><title>aiortc bench</title>", content_type="text/html")

    async def whep_post(request):
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc_id = str(next(ids))
        pcs[pc_id] = pc

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                pcs.pop(pc_id, None)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for t in pc.getTransceivers():
            if t.kind == "video":
                pc.addTrack(relay.subscribe(source))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whep/{pc_id}"},
        )

    async def whep_delete(request):
        pc = pcs.pop(request.match_info["id"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/whep", whep_post)
    app.router.add_delete("/whep/{id}", whep_delete)
    return app


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--source-cmd", type=json.loads, help="JSON argv of a program writing H.264 to stdout")
    ap.add_argument("--dump", metavar="N", type=int, help="write N raw yuv420p frames to stdout and exit")
    args = ap.parse_args()
    if args.dump:
        import sys
        p = Pattern(args.width, args.height)
        for n in range(args.dump):
            for plane in p.picture(n, 0.0):
                sys.stdout.buffer.write(plane)
        return
    runner = web.AppRunner(make_app(args.width, args.height, args.source_cmd))
    await runner.setup()
    site = web.TCPSite(runner, args.host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
