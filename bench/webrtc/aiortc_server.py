"""The comparison server for bench/webrtc: aiortc serving the same test pattern over WHEP.

One decoded source (ffmpeg lavfi testsrc2 640x480@30 through PyAV) shared with MediaRelay;
aiortc encodes H.264 once per viewer (it has no way to share encoded frames). Prints
`listening PORT` when ready.
"""

import argparse
import asyncio
import itertools

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRelay

ids = itertools.count(1)
pcs = {}


def make_app(width, height, fps):
    player = MediaPlayer(
        f"testsrc2=size={width}x{height}:rate={fps}", format="lavfi", options={}
    )
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
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        for t in pc.getTransceivers():
            if t.kind == "video":
                pc.addTrack(relay.subscribe(player.video))
                t.setCodecPreferences(h264)
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
    ap.add_argument("--fps", type=int, default=30)
    args = ap.parse_args()
    runner = web.AppRunner(make_app(args.width, args.height, args.fps))
    await runner.setup()
    site = web.TCPSite(runner, args.host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
