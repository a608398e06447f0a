#!/usr/bin/python3
"""GStreamer's RTSP server (gst-rtsp-server, from Debian's gir1.2-gst-rtsp-server-1.0) serving
the H.264 of an MP4 file at rtsp://127.0.0.1:PORT/stream: the comparison for bench/rtsp/run.sh.
(MP4 rather than raw Annex-B: the demuxer gives every picture its timestamp, which is what lets
the server pace the stream at 30 fps.)

One shared media (every client gets the one pipeline, as snaprtcd's clients get its one
stream), passthrough (h264parse + rtph264pay, no encode), paced by the pipeline clock.

    gst_rtsp_server.py PORT CLIP.mp4
Prints "gst-rtsp listening port=PORT" once it serves.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, clip = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( filesrc location={clip} ! qtdemux ! h264parse "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/stream", factory)
    server.attach(None)
    print(f"gst-rtsp listening port={port}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
