// snaprtcd's WebRTC side in headless Chromium: WHEP, the viewer page, 8 viewers, bad input,
// time to first frame. Run through run.sh (it puts Chromium and the daemon in a network
// namespace with a veth address, so Chromium gathers a host candidate).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDaemon, launchBrowser, healthJson, metrics, waitFor, median, TESTSRC } from "./lib.mjs";

// Page-side helpers (installed in every page): a WHEP client and a frame counter.
const pageHelpers = () => {
  window.whepConnect = async (opts = {}) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    if (opts.audioOnly) pc.addTransceiver("audio", { direction: "recvonly" });
    else pc.addTransceiver("video", { direction: "recvonly" });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const started = performance.now();
    const auth = opts.token ? { Authorization: "Bearer " + opts.token } : {};
    const r = await fetch("/whep", {
      method: "POST", headers: { "Content-Type": "application/sdp", ...auth }, body: pc.localDescription.sdp,
    });
    const res = {
      pc, status: r.status, location: r.headers.get("Location"), etag: r.headers.get("ETag"),
      retryAfter: r.headers.get("Retry-After"), body: await r.text(), started, firstFrameMs: null,
    };
    if (r.status === 201) {
      if (opts.video) {
        const v = document.createElement("video");
        v.muted = true; v.autoplay = true; v.playsInline = true;
        document.body.appendChild(v);
        pc.ontrack = (ev) => {
          v.srcObject = new MediaStream([ev.track]);
          v.play().catch(() => {});
          v.requestVideoFrameCallback(() => { res.firstFrameMs = performance.now() - started; });
        };
        res.video = v;
      }
      await pc.setRemoteDescription({ type: "answer", sdp: res.body });
    } else {
      pc.close();
    }
    return res;
  };
  window.framesDecoded = async (pc) => {
    let n = 0;
    (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") n = s.framesDecoded || 0; });
    return n;
  };
};

let daemon, browser;
before(async () => {
  // With the test tone as its microphone: the viewer page and offers with audio get Opus.
  daemon = await startDaemon("", TESTSRC + '\n\n[audio]\nsource = "test"');
  browser = await launchBrowser();
  await browser.context.addInitScript(pageHelpers);
});
after(async () => {
  await browser?.close();
  await daemon?.stop();
});

async function page(path = "/health") {
  const p = await browser.context.newPage();
  await p.goto(daemon.base + path);
  return p;
}

test("WHEP: 201 with Location, ETag and H.264 CB; frames decode; DELETE frees the viewer", async () => {
  const p = await page();
  const r = await p.evaluate(async () => {
    const w = await whepConnect();
    window.w = w;
    return { status: w.status, location: w.location, etag: w.etag, body: w.body };
  });
  assert.equal(r.status, 201, r.body);
  assert.match(r.location, /^\/whep\/[0-9a-f]{32}$/);
  assert.ok(r.etag && r.etag.length > 2, "ETag");
  assert.match(r.body, /a=rtpmap:\d+ H264\/90000/);
  assert.match(r.body, /profile-level-id=42e01f/);
  assert.match(r.body, /packetization-mode=1/);
  assert.match(r.body, /a=candidate:/);
  await waitFor(() => p.evaluate(async () => (await framesDecoded(w.pc)) >= 30), 10000, "30 decoded frames");
  assert.equal((await healthJson(daemon.base)).viewers, 1);
  // /metrics while it plays: the viewer, its bytes, keyframes by cause, encode times, camera.
  const live = await metrics(daemon.base);
  assert.equal(live["snaprtcd_viewers"], 1);
  assert.equal(live["snaprtcd_viewers_connected"], 1);
  // The test pattern is mostly still: P-frames are a few hundred bytes.
  assert.ok(live["snaprtcd_bytes_out_total"] > 30 * 200, JSON.stringify(live));
  assert.ok(live["snaprtcd_frames_sent_total"] >= 30);
  assert.ok(live["snaprtcd_frames_encoded_total"] >= live["snaprtcd_frames_sent_total"] / 2);
  const keyframes = Object.entries(live).filter(([k]) => k.startsWith("snaprtcd_keyframes_total{cause="));
  assert.ok(keyframes.length >= 3, "keyframes labelled by cause");
  assert.ok(keyframes.reduce((a, [, v]) => a + v, 0) >= 1, JSON.stringify(keyframes));
  assert.ok(live["snaprtcd_encode_seconds_count"] >= 30);
  assert.equal(live['snaprtcd_encode_seconds_bucket{le="+Inf"}'], live["snaprtcd_encode_seconds_count"]);
  assert.equal(live['snaprtcd_camera_state{state="streaming"}'], 1);
  assert.equal(live["snaprtcd_sessions"], 0);
  const del = await p.evaluate(async () => (await fetch(w.location, { method: "DELETE" })).status);
  assert.equal(del, 200);
  assert.equal((await healthJson(daemon.base)).viewers, 0);
  const m = await metrics(daemon.base);
  assert.equal(m["snaprtcd_viewers"], 0);
  const again = await p.evaluate(async () => (await fetch(w.location, { method: "DELETE" })).status);
  assert.equal(again, 404);
  await p.close();
});

test("viewer page at / plays >= 60 frames in 5 s, the picture is not flat, shows the latency, Snapshot gets a JPEG", async () => {
  const p = await page("/");
  await waitFor(() => p.evaluate(() => window.snaprtc.framesDecoded > 0), 10000, "first frame");
  // Wait for the event (60 more frames decoded), with 5 s as the deadline.
  const f0 = await p.evaluate(() => window.snaprtc.framesDecoded);
  await waitFor(() => p.evaluate((f0) => window.snaprtc.framesDecoded - f0 >= 60, f0), 5000, "60 frames decoded within 5 s");
  const spread = await p.evaluate(() => {
    const v = document.getElementById("video");
    const c = document.createElement("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext("2d");
    g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let min = 255, max = 0;
    for (let i = 0; i < d.length; i += 4 * 97) { const y = (d[i] + d[i + 1] + d[i + 2]) / 3; min = Math.min(min, y); max = Math.max(max, y); }
    return { min, max, w: c.width, h: c.height };
  });
  assert.equal(spread.w, 640);
  assert.equal(spread.h, 480);
  assert.ok(spread.max - spread.min > 64, `picture is flat: ${JSON.stringify(spread)}`);
  // Device name, version and resolution from /health; live fps, bitrate and RTT from getStats.
  const health = await healthJson(daemon.base);
  await waitFor(() => p.evaluate(() => /RTT \d+ ms/.test(document.getElementById("rtt").textContent)), 5000, "RTT shown");
  // The test pattern carries its capture instant: the page reads it and shows the latency.
  await waitFor(() => p.evaluate(() => /^latency \d+ ms$/.test(document.getElementById("latency").textContent)), 5000, "latency shown");
  const latency = await p.evaluate(() => [window.snaprtc.latencyP50Ms, document.getElementById("latency").hidden]);
  assert.ok(latency[0] > 0 && latency[0] < 2000 && !latency[1], `latency ${JSON.stringify(latency)}`);
  const shown = await p.evaluate(() => Object.fromEntries(
    ["name", "version", "resolution", "fps", "bitrate", "rtt"].map((id) => [id, document.getElementById(id).textContent])));
  assert.equal(shown.name, health.name);
  assert.equal(shown.version, "v" + health.version);
  assert.equal(shown.resolution, "640×480");
  assert.ok(Number(shown.fps.split(" ")[0]) >= 10, JSON.stringify(shown));
  assert.ok(Number(shown.bitrate.split(" ")[0]) > 10, JSON.stringify(shown));
  // One still arrives on connect, the button asks for another.
  await waitFor(() => p.evaluate(() => window.snaprtc.stills >= 1), 5000, "still on connect");
  const before = await p.evaluate(() => window.snaprtc.stills);
  await p.click("#snap");
  await waitFor(() => p.evaluate((n) => window.snaprtc.stills > n, before), 5000, "still after Snapshot");
  const img = await p.evaluate(async () => {
    const b = await createImageBitmap(await (await fetch(document.getElementById("still").src)).blob());
    return [b.width, b.height];
  });
  assert.deepEqual(img, [640, 480]);
  await p.close();
  await waitFor(async () => (await healthJson(daemon.base)).viewers === 0, 5000, "page's viewer gone");
});

test("viewer page plays the microphone: muted by default, Unmute; Chromium decodes Opus (samples rising, audioLevel > 0)", async () => {
  const p = await page("/");
  await waitFor(() => p.evaluate(() => window.snaprtc.audio), 10000, "an audio track");
  const before = await p.evaluate(() => ({
    muted: document.getElementById("video").muted, state: window.snaprtc.muted,
    button: document.getElementById("mute").textContent, hidden: document.getElementById("mute").hidden,
  }));
  assert.deepEqual(before, { muted: true, state: true, button: "Unmute", hidden: false });
  await p.click("#mute");
  assert.equal(await p.evaluate(() => document.getElementById("video").muted), false);
  assert.equal(await p.evaluate(() => document.getElementById("mute").textContent), "Mute");
  await waitFor(() => p.evaluate(() => window.snaprtc.audioSamples > 0), 10000, "audio samples received");
  const s0 = await p.evaluate(() => window.snaprtc.audioSamples);
  await waitFor(() => p.evaluate((s0) => window.snaprtc.audioSamples >= s0 + 48000, s0), 5000, "a second more of samples");
  await waitFor(() => p.evaluate(() => window.snaprtc.audioLevel > 0), 5000, "audioLevel > 0");
  const got = await p.evaluate(() => [window.snaprtc.audioSamples, window.snaprtc.audioLevel]);
  console.log(`viewer page audio: totalSamplesReceived ${got[0]}, audioLevel ${got[1]}`);
  // A WHEP offer with video only is answered without audio.
  const r = await p.evaluate(async () => {
    const w = await whepConnect();
    await fetch(w.location, { method: "DELETE" });
    w.pc.close();
    return w.body;
  });
  assert.ok(!/m=audio/.test(r), r);
  await p.close();
});

test("8 viewers at once all decode; frames encoded ~ frames captured (encoded once)", async () => {
  const m0 = await metrics(daemon.base);
  const p = await page();
  const n = await p.evaluate(async () => {
    window.ws = [];
    for (let i = 0; i < 8; i++) window.ws.push(await whepConnect());
    return window.ws.filter((w) => w.status === 201).length;
  });
  assert.equal(n, 8);
  // Each viewer starts (possibly from the GOP cache), then decodes 30 more live frames. Frames
  // captured before the first viewer joined are not encoded at all: encoded <= captured.
  await waitFor(() => p.evaluate(async () => {
    for (const w of window.ws) if ((await framesDecoded(w.pc)) < 1) return false;
    return true;
  }), 15000, "a first frame on each of 8 viewers");
  await p.evaluate(async () => { for (const w of window.ws) w.base = await framesDecoded(w.pc); });
  await waitFor(() => p.evaluate(async () => {
    for (const w of window.ws) if ((await framesDecoded(w.pc)) < w.base + 30) return false;
    return true;
  }), 15000, "30 more frames on each of 8 viewers");
  const m1 = await metrics(daemon.base);
  const captured = m1["snaprtcd_frames_captured_total"] - m0["snaprtcd_frames_captured_total"];
  const encoded = m1["snaprtcd_frames_encoded_total"] - m0["snaprtcd_frames_encoded_total"];
  const sent = m1["snaprtcd_frames_sent_total"] - m0["snaprtcd_frames_sent_total"];
  console.log(`8 viewers: captured ${captured}, encoded ${encoded}, sent ${sent}`);
  assert.ok(encoded <= captured + 2, `encoded ${encoded} > captured ${captured}`);
  assert.ok(sent >= 8 * 30, `sent ${sent}`);
  assert.ok(captured >= 30, `captured ${captured}`);
  assert.equal(m1["snaprtcd_viewers"], 8);
  await p.evaluate(async () => { for (const w of window.ws) { await fetch(w.location, { method: "DELETE" }); w.pc.close(); } });
  assert.equal((await healthJson(daemon.base)).viewers, 0);
  await p.close();
});

test("nobody watching: frames are captured but not encoded; the next viewer starts at once", async () => {
  await waitFor(async () => (await healthJson(daemon.base)).viewers === 0, 5000, "no viewer");
  const captured = (m) => m["snaprtcd_frames_captured_total"];
  const encoded = (m) => m["snaprtcd_frames_encoded_total"];
  // A picture in flight when the last viewer left may still be encoded: start after it.
  const left = await metrics(daemon.base);
  const m0 = await waitFor(async () => { const m = await metrics(daemon.base); return captured(m) >= captured(left) + 3 && m; }, 5000, "capture goes on");
  const m1 = await waitFor(async () => { const m = await metrics(daemon.base); return captured(m) >= captured(m0) + 30 && m; }, 5000, "30 frames captured");
  console.log(`idle: captured ${captured(m1) - captured(m0)}, encoded ${encoded(m1) - encoded(m0)}`);
  assert.equal(encoded(m1), encoded(m0), "frames encoded while nobody watched");
  const camera = (await healthJson(daemon.base)).camera;
  assert.ok(camera.fps > 10 && camera.encoder === "openh264", JSON.stringify(camera));
  const p = await page();
  const ms = await p.evaluate(async () => {
    const w = await whepConnect({ video: true });
    const end = performance.now() + 10000;
    while (w.firstFrameMs === null && performance.now() < end) await new Promise((r) => setTimeout(r, 5));
    await fetch(w.location, { method: "DELETE" });
    w.pc.close();
    return w.firstFrameMs;
  });
  assert.ok(ms !== null && ms < 1000, `first frame after idle in ${ms} ms`);
  console.log(`time to first frame after idle: ${ms.toFixed(0)} ms`);
  const m2 = await metrics(daemon.base);
  assert.ok(m2['snaprtcd_keyframes_total{cause="new_viewer"}'] > m1['snaprtcd_keyframes_total{cause="new_viewer"}']);
  await p.close();
});

test("bad input gets the right status and the daemon keeps serving", async () => {
  const base = daemon.base;
  const post = (body, type = "application/sdp") =>
    fetch(base + "/whep", { method: "POST", headers: { "Content-Type": type }, body });
  let r = await post("this is not sdp");
  assert.equal(r.status, 400);
  assert.match(await r.text(), /SDP/);
  r = await post("v=0\r\n", "text/plain");
  assert.equal(r.status, 415);
  r = await post("v=0\r\n" + "a=x\r\n".repeat(2 * 1024 * 1024 / 5));
  assert.equal(r.status, 413);

  const p = await page();
  const audio = await p.evaluate(async () => { const w = await whepConnect({ audioOnly: true }); return [w.status, w.body]; });
  assert.equal(audio[0], 406);
  assert.match(audio[1], /video/);

  const w = await p.evaluate(async () => { window.w = await whepConnect(); return { location: w.location, etag: w.etag }; });
  const frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2113937151 10.1.2.3 9 typ host\r\n";
  const patch = (headers) => fetch(base + w.location, {
    method: "PATCH", headers: { "Content-Type": "application/trickle-ice-sdpfrag", ...headers }, body: frag,
  });
  assert.equal((await patch({ "If-Match": '"stale"' })).status, 412);
  assert.equal((await patch({})).status, 428);
  assert.equal((await patch({ "If-Match": w.etag })).status, 204);
  const opts = await fetch(base + "/whep", { method: "OPTIONS", headers: { Origin: "http://example.com" } });
  assert.ok([200, 204].includes(opts.status));
  assert.equal(opts.headers.get("accept-post"), "application/sdp");
  await fetch(base + w.location, { method: "DELETE" });
  await p.evaluate(() => window.w.pc.close());
  await p.close();
  assert.equal((await fetch(base + "/health")).status, 200);
});

test("a flood of WHEP POSTs over max_viewers gets 503 + Retry-After, then service resumes", async () => {
  const small = await startDaemon("max_viewers = 3");
  try {
    const p = await browser.context.newPage();
    await p.goto(small.base + "/health");
    const statuses = await p.evaluate(async () => {
      const all = await Promise.all(Array.from({ length: 10 }, () => whepConnect()));
      window.flood = all;
      return all.map((w) => [w.status, w.retryAfter]);
    });
    assert.equal(statuses.filter(([s]) => s === 201).length, 3, JSON.stringify(statuses));
    for (const [s, ra] of statuses.filter(([s]) => s !== 201)) {
      assert.equal(s, 503);
      assert.ok(Number(ra) > 0, "Retry-After");
    }
    await p.evaluate(async () => { for (const w of window.flood.filter((w) => w.status === 201)) { await fetch(w.location, { method: "DELETE" }); w.pc.close(); } });
    const again = await p.evaluate(async () => { const w = await whepConnect(); w.pc.close(); await fetch(w.location, { method: "DELETE" }); return w.status; });
    assert.equal(again, 201);
    await p.close();
  } finally {
    await small.stop();
  }
});

test("Chromium's default mDNS (.local) host candidates do not fail the offer; it still connects", async () => {
  const b = await launchBrowser({ mdns: true });
  try {
    const p = await b.context.newPage();
    await p.goto(daemon.base + "/health");
    const r = await p.evaluate(async () => {
      const pc = new RTCPeerConnection({ iceServers: [] });
      window.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((r) => {
        if (pc.iceGatheringState === "complete") r();
        pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
        setTimeout(r, 5000);
      });
      const offer = pc.localDescription.sdp;
      const res = await fetch("/whep", { method: "POST", headers: { "Content-Type": "application/sdp" }, body: offer });
      const body = await res.text();
      if (res.status === 201) await pc.setRemoteDescription({ type: "answer", sdp: body });
      window.location_ = res.headers.get("Location");
      return { status: res.status, body, candidates: offer.split("\r\n").filter((l) => l.startsWith("a=candidate:")) };
    });
    assert.equal(r.status, 201, r.body);
    assert.ok(r.candidates.length > 0 && r.candidates.every((c) => / [0-9a-f-]+\.local /.test(c)),
      "the offer's host candidates are mDNS names: " + JSON.stringify(r.candidates));
    await waitFor(() => p.evaluate(async () => {
      let n = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") n = s.framesDecoded || 0; });
      return n >= 10;
    }), 10000, "10 frames decoded");
    await p.evaluate(async () => { await fetch(window.location_, { method: "DELETE" }); pc.close(); });
  } finally {
    await b.close();
  }
});

test("viewer page with auth: token prompt kept in localStorage, #token=, reconnect when busy and when dropped", async () => {
  const dir = mkdtempSync(join(tmpdir(), "snaprtcd-token-"));
  const token = "t0k3n-" + Date.now();
  writeFileSync(join(dir, "token"), token + "\n");
  const d = await startDaemon(`max_viewers = 1\nauth = "token"\nauth_token_file = "${join(dir, "token")}"`);
  try {
    // The one viewer slot is taken: the page must wait (Retry-After) and then get in.
    const holder = await browser.context.newPage();
    await holder.goto(d.base + "/health");
    const held = await holder.evaluate(async (token) => {
      window.w = await whepConnect({ token });
      return { status: window.w.status, denied: (await whepConnect()).status };
    }, token);
    assert.deepEqual(held, { status: 201, denied: 401 });

    const p = await browser.context.newPage();
    const prompts = [];
    p.on("dialog", (dlg) => { prompts.push(dlg.type()); dlg.accept(token); });
    await p.goto(d.base + "/");
    await waitFor(() => p.evaluate(() => /busy/.test(window.snaprtc.lastError || "")), 10000, "busy while the slot is held");
    assert.deepEqual(prompts, ["prompt"], "asked for the token once");
    assert.equal(await p.evaluate(() => localStorage.getItem("snaprtcd.token")), token);
    await holder.evaluate(async (token) => {
      await fetch(window.w.location, { method: "DELETE", headers: { Authorization: "Bearer " + token } });
      window.w.pc.close();
    }, token);
    await waitFor(() => p.evaluate(() => window.snaprtc.framesDecoded > 10), 15000, "playing after the retry");

    // The device drops the viewer (as after a silence timeout): the page connects again.
    const connects = await p.evaluate(() => window.snaprtc.connects);
    const dropped = await p.evaluate(async (token) =>
      (await fetch(window.snaprtc.resource, { method: "DELETE", headers: { Authorization: "Bearer " + token } })).status, token);
    assert.equal(dropped, 200);
    await waitFor(() => p.evaluate((n) => window.snaprtc.connects > n && window.snaprtc.state === "live", connects), 20000, "reconnected");
    const f = await p.evaluate(() => window.snaprtc.framesDecoded);
    await waitFor(() => p.evaluate((n) => window.snaprtc.framesDecoded > n + 10, f), 10000, "frames after reconnecting");
    assert.equal(prompts.length, 1, "the stored token is reused");
    const resource = await p.evaluate(() => window.snaprtc.resource);
    await p.close();
    await fetch(resource, { method: "DELETE", headers: { Authorization: "Bearer " + token } });

    // A fresh browser profile gets the token from the URL fragment: no prompt, fragment gone.
    const fresh = await launchBrowser();
    try {
      const q = await fresh.context.newPage();
      q.on("dialog", (dlg) => { prompts.push("unexpected " + dlg.type()); dlg.dismiss(); });
      await q.goto(d.base + "/#token=" + token);
      await waitFor(() => q.evaluate(() => window.snaprtc.framesDecoded > 0), 15000, "playing with #token=");
      assert.equal(await q.evaluate(() => location.hash), "");
      assert.equal(await q.evaluate(() => localStorage.getItem("snaprtcd.token")), token);
      assert.equal(prompts.length, 1, JSON.stringify(prompts));
    } finally {
      await fresh.close();
    }
    await holder.close();
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("time to first frame (WHEP POST -> first decoded frame), median of 10", async () => {
  const p = await page();
  // Each join is spaced 600 ms from the last so the pipeline's keyframe rate limit (an IDR at
  // most every 500 ms, DESIGN §5) does not make one viewer wait for another's IDR; the
  // back-to-back figure is printed too.
  const times = [], backToBack = [];
  for (let i = 0; i < 20; i++) {
    const spaced = i % 2 === 0;
    if (spaced) await new Promise((r) => setTimeout(r, 600));
    const ms = await p.evaluate(async () => {
      const w = await whepConnect({ video: true });
      const end = performance.now() + 10000;
      while (w.firstFrameMs === null && performance.now() < end) await new Promise((r) => setTimeout(r, 5));
      await fetch(w.location, { method: "DELETE" });
      w.pc.close();
      w.video.remove();
      return w.firstFrameMs;
    });
    assert.ok(ms !== null, "no frame within 10 s");
    (spaced ? times : backToBack).push(ms);
  }
  const med = median(times);
  console.log(`time to first frame: median ${med.toFixed(0)} ms over 10 (all: ${times.map((t) => t.toFixed(0)).join(", ")})`);
  console.log(`time to first frame right after another viewer's IDR: median ${median(backToBack).toFixed(0)} ms over 10`);
  assert.ok(med < 1000, `median time to first frame ${med} ms`);
  await p.close();
});
