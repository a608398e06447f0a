// go2rtc's API in headless Chromium: a page speaks /api/ws the way go2rtc's player
// (www/video-rtc.js, also in the Home Assistant WebRTC card) does, message for message, and
// plays; /api, /api/streams, /api/frame.jpeg; bad WebSocket input; auth. Run through run.sh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { startDaemon, launchBrowser, healthJson, metrics, waitFor } from "./lib.mjs";

// Page side. `go2rtcPlay` follows video-rtc.js with mode "webrtc,mse,hls,mjpeg" in Chromium:
// on open it sends `mse` (MediaSource exists) and starts WebRTC at once; an `error` starting
// with "mse" makes it try `mjpeg`; its peer connection has a recvonly video and a recvonly audio
// transceiver (plus, for two-way audio, a sendonly audio one with a microphone track); it sends
// its offer as `webrtc/offer`, each local candidate as `webrtc/candidate` (the empty string at
// the end), adds each `webrtc/candidate` it gets with sdpMid "0", and closes the WebSocket once
// the video has data.
const pageHelpers = () => {
  window.go2rtcPlay = (opts = {}) => new Promise((resolve) => {
    const log = { sent: [], got: [], closed: null, answerError: null };
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/api/ws?src=" + (opts.src || "camera"));
    const send = (msg) => { log.sent.push(msg); ws.send(JSON.stringify(msg)); };
    const pc = new RTCPeerConnection({ iceServers: [] });
    const video = document.createElement("video");
    video.muted = true; video.autoplay = true; video.playsInline = true;
    document.body.appendChild(video);
    const state = { pc, ws, log, video };
    // A socket that closes (or never opens) before the video ends the attempt too.
    ws.onclose = (ev) => { log.closed = { code: ev.code, reason: ev.reason }; resolve(state); };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      log.got.push(msg);
      if (msg.type === "error" && msg.value.indexOf("mse") === 0) send({ type: "mjpeg" });
      if (msg.type === "webrtc/candidate") {
        pc.addIceCandidate({ candidate: msg.value, sdpMid: "0" }).catch((e) => { log.candidateError = String(e); });
      } else if (msg.type === "webrtc/answer") {
        pc.setRemoteDescription({ type: "answer", sdp: msg.value }).catch((e) => { log.answerError = String(e); });
      } else if (msg.type === "error" && msg.value.indexOf("webrtc/offer") >= 0) {
        pc.close();
        resolve(state);
      }
    };
    ws.onopen = async () => {
      send({ type: "mse", value: "avc1.640029,avc1.64002A,avc1.640033,mp4a.40.2,mp4a.40.5,flac,opus" });
      pc.addEventListener("icecandidate", (ev) => {
        send({ type: "webrtc/candidate", value: ev.candidate ? ev.candidate.toJSON().candidate : "" });
      });
      pc.addEventListener("track", (ev) => {
        if (video.srcObject === null && ev.streams.length > 0) video.srcObject = ev.streams[0];
      });
      video.addEventListener("loadeddata", () => { ws.close(); resolve(state); }, { once: true });
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
      if (opts.microphone) {
        // Two-way audio: a sendonly audio m-line with a (silent) microphone track.
        const ctx = new AudioContext();
        const mic = ctx.createMediaStreamDestination().stream;
        pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendonly", streams: [mic] });
      }
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      send({ type: "webrtc/offer", value: offer.sdp });
    };
  });
  window.framesDecoded = async (pc) => {
    let n = 0;
    (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") n = s.framesDecoded || 0; });
    return n;
  };
  // Open a raw socket, send `messages` (strings, or {binary: n} for n zero bytes), and report
  // the messages got and how it closed.
  // With `expect`, the page closes the socket itself once it got that many messages.
  window.wsAbuse = (messages, path = "/api/ws?src=camera", expect = 0) => new Promise((resolve) => {
    const got = [];
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + path);
    ws.onmessage = (ev) => {
      got.push(JSON.parse(ev.data));
      if (got.length === expect) ws.close();
    };
    ws.onclose = (ev) => resolve({ got, code: ev.code, reason: ev.reason });
    ws.onopen = () => {
      for (const m of messages) ws.send(typeof m === "string" ? m : new Uint8Array(m.binary));
    };
  });
};

let daemon, browser;
before(async () => {
  daemon = await startDaemon();
  browser = await launchBrowser();
  await browser.context.addInitScript(pageHelpers);
});
after(async () => {
  await browser?.close();
  await daemon?.stop();
});

async function page(base = daemon.base) {
  const p = await browser.context.newPage();
  await p.goto(base + "/health");
  return p;
}

test("go2rtc player: the /api/ws exchange of video-rtc.js plays; candidates both ways; mse and mjpeg get errors", { timeout: 60000 }, async () => {
  const p = await page();
  const log = await p.evaluate(async () => {
    window.s = await go2rtcPlay();
    return window.s.log;
  });
  assert.equal(log.answerError, null, "the answer was accepted");
  const types = log.got.map((m) => m.type);
  assert.ok(types.includes("webrtc/answer"), JSON.stringify(types));
  const answer = log.got.find((m) => m.type === "webrtc/answer").value;
  assert.match(answer, /a=rtpmap:\d+ H264\/90000/);
  assert.match(answer, /m=audio 0 /, "the audio m-line is rejected");
  // The server's candidates, as go2rtc sends them, after the answer.
  const serverCandidates = log.got.filter((m) => m.type === "webrtc/candidate").map((m) => m.value);
  assert.ok(serverCandidates.length >= 1 && serverCandidates.every((c) => c.startsWith("candidate:")), JSON.stringify(serverCandidates));
  assert.ok(types.indexOf("webrtc/candidate") > types.indexOf("webrtc/answer"));
  // Modes it does not serve: an error that starts with the mode, as the player expects.
  const errors = log.got.filter((m) => m.type === "error").map((m) => m.value);
  assert.ok(errors.some((e) => e.startsWith("mse: ")), JSON.stringify(errors));
  assert.ok(errors.some((e) => e.startsWith("mjpeg: ")), JSON.stringify(errors));
  assert.ok(log.sent.some((m) => m.type === "mjpeg"), "the player fell back to mjpeg as video-rtc.js does");
  // The page sent its own candidates, the last one empty (end-of-candidates) once gathered.
  await waitFor(() => p.evaluate(() => window.s.log.sent.some((m) => m.type === "webrtc/candidate" && m.value === "")), 10000, "end-of-candidates");
  const sentCandidates = await p.evaluate(() => window.s.log.sent.filter((m) => m.type === "webrtc/candidate").length);
  assert.ok(sentCandidates >= 2, "a host candidate and the empty one");
  // The player closed its WebSocket once the video had data; the viewer plays on.
  await waitFor(() => p.evaluate(async () => (await framesDecoded(window.s.pc)) >= 30), 10000, "30 decoded frames");
  const closed = await p.evaluate(() => window.s.log.closed);
  assert.ok(closed, "the socket is closed");
  const h = await healthJson(daemon.base);
  assert.equal(h.viewers, 1);
  await p.evaluate(() => window.s.pc.close());
  await p.close();
});

test("two-way audio: an offer with a sendonly microphone m-line is answered with it rejected and plays", { timeout: 60000 }, async () => {
  const p = await page();
  const log = await p.evaluate(async () => {
    window.s = await go2rtcPlay({ microphone: true });
    return window.s.log;
  });
  const offer = log.sent.find((m) => m.type === "webrtc/offer").value;
  assert.equal((offer.match(/^m=audio /gm) || []).length, 2);
  assert.match(offer, /a=sendonly/);
  assert.equal(log.answerError, null);
  const answer = log.got.find((m) => m.type === "webrtc/answer").value;
  assert.equal((answer.match(/^m=audio 0 /gm) || []).length, 2, answer);
  await waitFor(() => p.evaluate(async () => (await framesDecoded(window.s.pc)) >= 10), 10000, "10 decoded frames");
  await p.evaluate(() => window.s.pc.close());
  await p.close();
});

test("go2rtc players are viewers of the one encode: 3 at once, frames encoded ~ frames captured", { timeout: 60000 }, async () => {
  // The earlier tests' viewers leave when their peer connections close.
  await waitFor(async () => (await healthJson(daemon.base)).viewers === 0, 20000, "no viewers left");
  const p = await page();
  await p.evaluate(async () => {
    window.players = [];
    for (let i = 0; i < 3; i++) window.players.push(await go2rtcPlay());
  });
  await waitFor(() => p.evaluate(async () => {
    for (const s of window.players) if ((await framesDecoded(s.pc)) < 1) return false;
    return true;
  }), 15000, "a first frame on each player");
  const m0 = await metrics(daemon.base);
  await p.evaluate(async () => { for (const s of window.players) s.base = await framesDecoded(s.pc); });
  await waitFor(() => p.evaluate(async () => {
    for (const s of window.players) if ((await framesDecoded(s.pc)) < s.base + 30) return false;
    return true;
  }), 15000, "30 more frames on each player");
  const m1 = await metrics(daemon.base);
  const captured = m1["snaprtcd_frames_captured_total"] - m0["snaprtcd_frames_captured_total"];
  const encoded = m1["snaprtcd_frames_encoded_total"] - m0["snaprtcd_frames_encoded_total"];
  const sent = m1["snaprtcd_frames_sent_total"] - m0["snaprtcd_frames_sent_total"];
  console.log(`3 go2rtc players: captured ${captured}, encoded ${encoded}, sent ${sent}`);
  await p.evaluate(() => { for (const s of window.players) s.pc.close(); });
  await p.close();
  assert.ok(encoded <= captured + 2, `encoded ${encoded} > captured ${captured}`);
  // Every captured frame went to all three (a frame or two may be in flight at either end).
  assert.ok(sent >= 3 * (captured - 2), `sent ${sent}, captured ${captured}`);
  assert.ok(captured >= 25, `captured ${captured}`);
  assert.equal(m1["snaprtcd_viewers"], 3);
});

test("GET /api, /api/streams and /api/frame.jpeg?src=camera", { timeout: 60000 }, async () => {
  const info = await (await fetch(daemon.base + "/api")).json();
  assert.equal(info.name, "snaprtcd");
  assert.match(info.version, /^\d+\.\d+\.\d+/);
  const streams = await (await fetch(daemon.base + "/api/streams")).json();
  assert.deepEqual(Object.keys(streams), ["camera"]);
  assert.equal(streams.camera.producers.length, 1);
  assert.equal(streams.camera.producers[0].width, 640);
  const r = await fetch(daemon.base + "/api/frame.jpeg?src=camera");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "image/jpeg");
  const jpeg = Buffer.from(await r.arrayBuffer());
  assert.deepEqual([...jpeg.subarray(0, 2)], [0xff, 0xd8]);
  assert.equal((await fetch(daemon.base + "/api/frame.jpeg?src=other")).status, 404);
  assert.equal((await fetch(daemon.base + "/api/ws")).status, 400, "not a WebSocket");
});

test("bad /api/ws input: oversized, binary, garbage and unknown streams are answered and closed cleanly", { timeout: 60000 }, async () => {
  const p = await page();
  const r = await p.evaluate(async () => ({
    // 2 x max_sdp_bytes (64 KiB) + 4 KiB is the largest message: one a little over it gets 1009.
    big: await wsAbuse(['{"type":"webrtc/offer","value":"' + "x".repeat(140 * 1024) + '"}']),
    // Far over: refused by the transport from the frame header.
    huge: await wsAbuse(["x".repeat(4 * 1024 * 1024)]),
    binary: await wsAbuse([{ binary: 100 }]),
    garbage: await wsAbuse(["\u0000not json at all"]),
    unknown: await wsAbuse(['{"type":"webrtc/offer","value":"v=0"}', '{"type":"hello"}', "{}"], "/api/ws?src=nope"),
    notSdp: await wsAbuse(['{"type":"webrtc/offer","value":"not sdp"}'], "/api/ws?src=camera", 1),
  }));
  assert.equal(r.big.code, 1009, JSON.stringify(r.big));
  assert.equal(r.huge.code, 1009, JSON.stringify(r.huge));
  assert.equal(r.binary.code, 1003);
  assert.equal(r.garbage.code, 1007);
  assert.match(r.garbage.got[0].value, /^not a go2rtc message/);
  assert.deepEqual(r.unknown.got[0], { type: "error", value: "webrtc/offer: stream not found" });
  assert.equal(r.unknown.code, 1007, "{} has no type: not a go2rtc message");
  assert.match(r.notSdp.got[0].value, /^webrtc\/offer: bad SDP offer/);
  await p.close();
  assert.equal((await fetch(daemon.base + "/api")).status, 200, "still serving");
  await waitFor(async () => (await healthJson(daemon.base)).viewers === 0, 20000, "no viewers (none was made here)");
});

/** Run tests/webrtc/ha_client.py (aiohttp as Home Assistant uses it); one result per server URL. */
function haClient(base, token) {
  const script = join(dirname(fileURLToPath(import.meta.url)), "ha_client.py");
  let out;
  try {
    out = execFileSync("/usr/bin/python3", [script, base, token], { encoding: "utf8", timeout: 30000 });
  } catch (e) {
    // run.sh installs python3-aiohttp; a missing one is a failure, never a pass.
    throw new Error("ha_client.py failed (is python3-aiohttp installed?): " + (e.stderr || e.message));
  }
  return out.trim().split("\n").map((l) => JSON.parse(l));
}

/** The status of an upgrade request to `path` (101 if it upgrades), with these headers. */
function upgradeStatus(base, path, headers = {}) {
  const url = new URL(base + path);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: url.hostname, port: url.port, path: url.pathname + url.search,
      headers: {
        Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", ...headers,
      },
    });
    req.on("upgrade", (res, socket) => { socket.destroy(); resolve(res.statusCode); });
    req.on("response", (res) => { res.resume(); resolve(res.statusCode); });
    req.on("error", reject);
    req.end();
  });
}

test("auth: /api routes need the token (Bearer, access_token or as a Basic password)", { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "snaprtcd-go2rtc-"));
  const token = "t0k3n-" + Date.now();
  writeFileSync(join(dir, "token"), token + "\n");
  const d = await startDaemon(`auth = "token"\nauth_token_file = "${join(dir, "token")}"`);
  try {
    const basic = { Authorization: "Basic " + Buffer.from("admin:" + token).toString("base64") };
    const wrong = { Authorization: "Basic " + Buffer.from("admin:nope").toString("base64") };
    for (const path of ["/api", "/api/streams", "/api/frame.jpeg?src=camera"]) {
      assert.equal((await fetch(d.base + path)).status, 401, path);
      assert.equal((await fetch(d.base + path, { headers: wrong })).status, 401, path);
      assert.equal((await fetch(d.base + path, { headers: basic })).status, 200, path);
      assert.equal((await fetch(d.base + path, { headers: { Authorization: "Bearer " + token } })).status, 200, path);
    }
    assert.equal((await fetch(d.base + "/api?access_token=" + token)).status, 200);
    assert.equal(await upgradeStatus(d.base, "/api/ws?src=camera"), 401);
    assert.equal(await upgradeStatus(d.base, "/api/ws?src=camera", wrong), 401);
    assert.equal(await upgradeStatus(d.base, "/api/ws?src=camera", basic), 101);
    assert.equal(await upgradeStatus(d.base, "/api/ws?src=camera&access_token=" + token), 101);
    // Basic is for go2rtc's clients only: the other routes still want the bearer token.
    assert.equal((await fetch(d.base + "/snapshot.jpg", { headers: basic })).status, 401);
    // The player with the token in its URL plays.
    const p = await page(d.base);
    // The Home Assistant integration's own URL handling, with aiohttp (Debian's python3-aiohttp):
    // `server: http://snaprtcd:TOKEN@host:port` as docs/integrations.md says.
    const ha = haClient(d.base, token);
    assert.deepEqual(ha[0].ws, { type: "error", value: "mse: not served by snaprtcd, which plays WebRTC only" }, JSON.stringify(ha));
    assert.deepEqual(ha[0].poster, [200, "image/jpeg", "ffd8"]);
    assert.equal(ha[1].ws, 401);
    assert.equal(ha[1].poster[0], 401);
    await p.evaluate(async (token) => { window.s = await go2rtcPlay({ src: "camera&access_token=" + token }); }, token);
    await waitFor(() => p.evaluate(async () => (await framesDecoded(window.s.pc)) >= 10), 10000, "10 decoded frames");
    await p.evaluate(() => window.s.pc.close());
    await p.close();
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
