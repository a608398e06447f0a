"""What the Home Assistant WebRTC integration (AlexxIT/WebRTC) does with a card's `server:`:
build the go2rtc WebSocket URL and the poster URL from it the way its `ws_connect` and
`ws_poster` do (urljoin, urlencode), and connect with aiohttp, which sends the URL's user and
password as Basic auth. Prints one JSON line per server URL tried.

    python3 ha_client.py http://127.0.0.1:PORT TOKEN
"""
import asyncio
import json
import sys
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import aiohttp


async def try_server(server):
    out = {"server": server}
    url = urljoin("ws" + server[4:], "api/ws") + "?" + urlencode({"src": "camera"})
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, autoclose=False, autoping=False) as ws:
                await ws.send_str(json.dumps({"type": "mse", "value": "avc1.640029"}))
                out["ws"] = json.loads((await ws.receive(timeout=10)).data)
        except aiohttp.WSServerHandshakeError as e:
            out["ws"] = e.status
        poster = urljoin(server, "api/frame.jpeg") + "?" + urlencode({"src": "camera"})
        async with session.get(poster) as r:
            body = await r.read()
            out["poster"] = [r.status, r.content_type, body[:2].hex()]
    return out


async def main(base, token):
    parts = urlsplit(base)
    for password in (token, "wrong"):
        netloc = f"snaprtcd:{password}@{parts.netloc}"
        server = urlunsplit((parts.scheme, netloc, "", "", ""))
        print(json.dumps(await try_server(server)), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
