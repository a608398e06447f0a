// Capture-to-display latency: snaprtcd draws its test pattern (1280x720@30) with the capture
// instant in a row of cells (src/picture/stamp.rs); headless Chromium reads it back from every
// displayed frame (requestVideoFrameCallback → canvas) and compares it with its own wall clock
// (same machine, same clock). Prints p50/p95/p99 and the frame count per path (WHEP; the
// built-in SnapRTC member), split into capture → last packet received and received → displayed.
// The "rtsp" path has ffmpeg as the reader instead: it plays rtsp://…/stream over TCP and writes
// decoded gray pictures to this script, which reads each one's stamp on arrival.
// Run via run.sh.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { loadavg } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { launchBrowser, spawnDaemon } from "../../tests/webrtc/lib.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const bin = process.env.SNAPRTCD_BIN || join(root, "target", "release", "snaprtcd");
const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS || 20000);
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS || 3000);
const WIDTH = Number(process.env.BENCH_WIDTH || 1280);
const HEIGHT = Number(process.env.BENCH_HEIGHT || 720);
const FPS = Number(process.env.BENCH_FPS || 30);
// Which paths and receiver settings to run: "whep", "whep-jb0" (jitterBufferTarget = 0 and
// playoutDelayHint = 0 on the receiver), "whep-nopd" (without the playout-delay extension),
// "whep-scaled" (the video scaled into a 928 px 4:3 box as on the viewer page), "viewer" (the
// viewer page's own stats line), "snaprtc".
// "rtsp": ffmpeg reads the RTSP stream (TCP) and decodes; the stamp is read from its output.
const RUNS = (process.env.BENCH_RUNS || "whep,whep-jb0,whep-nopd,viewer,snaprtc,rtsp").split(",");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free loopback TCP port. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Start snaprtcd with the test pattern (and RTSP on `rtspPort`); resolves once it logged `ready`. */
function startDaemon(rtspPort) {
  return spawnDaemon(`
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0

[camera]
source = "testsrc"
width = ${WIDTH}
height = ${HEIGHT}
fps = ${FPS}

[rtsp]
enabled = true
listen = "127.0.0.1:${rtspPort}"

[mdns]
enabled = false
`, bin);
}

/**
 * The capture instant (ms since the epoch) in a stamp row, from the mean luma of each of its 78
 * cells (src/picture/stamp.rs: guards, 64 bits, CRC-8), or null. Used here for the RTSP reader and,
 * as its source text, in the page (one reader for both).
 */
function stampFromLevels(levels) {
  const crc8 = (bytes) => {
    let crc = 0;
    for (const b of bytes) {
      crc ^= b;
      for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    }
    return crc;
  };
  const white = (levels[0] + levels[2] + levels[77]) / 3, black = (levels[1] + levels[3] + levels[76]) / 3;
  if (white < black + 64) return null;
  const bit = (i) => levels[i] > (white + black) / 2;
  if (!bit(0) || bit(1) || !bit(2) || bit(3) || bit(76) || !bit(77)) return null;
  const bytes = [];
  for (let k = 0; k < 9; k++) {
    let v = 0;
    for (let i = 0; i < 8; i++) v = (v << 1) | (bit(4 + k * 8 + i) ? 1 : 0);
    bytes.push(v);
  }
  if (crc8(bytes.slice(0, 8)) !== bytes[8]) return null;
  let micros = 0n;
  for (const v of bytes.slice(0, 8)) micros = (micros << 8n) | BigInt(v);
  return Number(micros) / 1000;
}

/** The 78 cells' mean levels from a gray picture `width` wide (the middle half of each cell). */
function levelsOfGray(gray, width, cell) {
  const a = cell >> 2, b = cell - (cell >> 2);
  return Array.from({ length: 78 }, (_, i) => {
    let sum = 0;
    for (let y = a; y < b; y++) for (let x = i * cell + a; x < i * cell + b; x++) sum += gray[y * width + x];
    return sum / ((b - a) * (b - a));
  });
}

/**
 * RTSP with ffmpeg as the reader: TCP interleaved, no input buffering, gray pictures on stdout.
 * Each picture's stamp is compared with the wall clock when its last byte arrives.
 */
async function measureRtsp(port) {
  const cell = Math.floor(WIDTH / 80) & ~1;
  const size = WIDTH * HEIGHT;
  const ffmpeg = spawn("ffmpeg", ["-nostdin", "-loglevel", "error", "-fflags", "nobuffer", "-flags", "low_delay",
    "-rtsp_transport", "tcp", "-i", `rtsp://127.0.0.1:${port}/stream`, "-an", "-threads", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
  { stdio: ["ignore", "pipe", "inherit"] });
  const samples = [];
  let frames = 0, misses = 0, recording = false, pending = [], have = 0;
  ffmpeg.stdout.on("data", (chunk) => {
    pending.push(chunk);
    have += chunk.length;
    while (have >= size) {
      const all = Buffer.concat(pending);
      const picture = all.subarray(0, size);
      pending = [all.subarray(size)];
      have -= size;
      if (!recording) continue;
      frames++;
      const captured = stampFromLevels(levelsOfGray(picture, WIDTH, cell));
      if (captured === null) misses++;
      else samples.push(performance.timeOrigin + performance.now() - captured);
    }
  });
  try {
    await sleep(WARMUP_MS);
    recording = true;
    await sleep(WINDOW_MS);
  } finally {
    ffmpeg.kill();
  }
  if (frames === 0) throw new Error("rtsp: ffmpeg delivered no picture");
  return { run: "rtsp", total: samples, receive: [], decode: [], present: [], misses, frames };
}

// Runs in the page (an init script): the stamp sampler (the cells' levels from a canvas; the
// bits and CRC are stampFromLevels, put in the page as its source text), a WHEP connect and a
// SnapRTC connect, and the per-frame record.
const pageHelpers = () => {
  const canvas = document.createElement("canvas");
  let ctx = null;
  const readStamp = (source, width, height) => {
    const cell = Math.floor(width / 80) & ~1;
    if (cell < 2 || cell > height) return null;
    if (canvas.width !== width || canvas.height !== cell) { canvas.width = width; canvas.height = cell; }
    ctx = ctx || canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(source, 0, 0, width, cell, 0, 0, width, cell);
    const px = ctx.getImageData(0, 0, 78 * cell, cell).data, stride = 78 * cell * 4;
    const a = cell >> 2, b = cell - (cell >> 2);
    const level = (i) => {
      let sum = 0;
      for (let y = a; y < b; y++) {
        for (let x = i * cell + a; x < i * cell + b; x++) {
          const o = y * stride + x * 4;
          sum += (px[o] * 77 + px[o + 1] * 150 + px[o + 2] * 29) >> 8;
        }
      }
      return sum / ((b - a) * (b - a));
    };
    return window.stampFromLevels(Array.from({ length: 78 }, (_, i) => level(i)));
  };
  // Every displayed frame: [capture → expected display, capture → last packet in, decode ms,
  // capture → handed to the compositor], or a miss.
  window.bench = { samples: [], misses: 0, frames: 0 };
  const watch = (video) => {
    const tick = (_now, meta) => {
      window.bench.frames++;
      const captured = readStamp(video, meta.width, meta.height);
      if (captured === null) {
        window.bench.misses++;
      } else {
        const wall = (t) => performance.timeOrigin + t;
        window.bench.samples.push([
          wall(meta.expectedDisplayTime) - captured,
          meta.receiveTime !== undefined ? wall(meta.receiveTime) - captured : null,
          meta.processingDuration !== undefined ? meta.processingDuration * 1000 : null,
          wall(meta.presentationTime) - captured,
        ]);
      }
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  };
  const newVideo = () => {
    const v = document.createElement("video");
    v.muted = true; v.autoplay = true; v.playsInline = true;
    document.body.appendChild(v);
    return v;
  };
  // "whep-nopd": drop the RTP playout-delay extension from the answer (what the daemon sends
  // without it: Chromium then runs its jitter buffer and normal render timing).
  window.stripPlayoutDelay = false;
  const tune = (receiver, low) => {
    if (!low) return;
    if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = 0;
    receiver.playoutDelayHint = 0;
  };
  window.connectWhep = async (low) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    const tr = pc.addTransceiver("video", { direction: "recvonly" });
    tune(tr.receiver, low);
    const v = newVideo();
    pc.ontrack = (ev) => { v.srcObject = new MediaStream([ev.track]); v.play().catch(() => {}); watch(v); };
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch("/whep", { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
    if (r.status !== 201) throw new Error("WHEP " + r.status + " " + await r.text());
    let answer = await r.text();
    if (window.stripPlayoutDelay) answer = answer.replace(/^a=extmap:\d+ [^\r\n]*playout-delay[^\r\n]*\r?\n/m, "");
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  };
  // SnapRTC as its initiator pages do it (SignalR hub, simple-peer with trickle off, lz-string),
  // asking for video; the daemon's built-in member answers.
  window.connectSnapRtc = async (hubPath, session, low) => {
    const connection = new signalR.HubConnectionBuilder().withUrl(hubPath).build();
    const v = newVideo();
    let peer = null;
    connection.on("signalStart", () => {
      peer = new SimplePeer({ initiator: true, trickle: false, offerOptions: { offerToReceiveVideo: true } });
      peer.on("signal", (signal) => connection.invoke("SignalCapture", session, LZString.compressToEncodedURIComponent(JSON.stringify(signal))));
      peer.on("stream", (stream) => {
        for (const r of peer._pc.getReceivers()) tune(r, low);
        v.srcObject = stream; v.play().catch(() => {}); watch(v);
      });
      peer.on("connect", () => connection.stop());
      peer.on("error", (e) => { window.bench.error = String(e); });
    });
    connection.on("signalInitiator", (payload) => peer.signal(JSON.parse(LZString.decompressFromEncodedURIComponent(payload))));
    await connection.start();
    await connection.invoke("Sync", session, false);
  };
};

const pct = (sorted, p) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))] : NaN;
const stats = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  return { n: s.length, p50: pct(s, 50), p95: pct(s, 95), p99: pct(s, 99) };
};

/** Open a page on the daemon, connect by `how`, skip the warm-up, collect for the window. */
async function measure(browser, daemon, run) {
  if (run === "rtsp") return measureRtsp(daemon.rtspPort);
  const page = await browser.context.newPage();
  page.on("pageerror", (e) => console.error(`[${run}] pageerror: ${e}`));
  try {
    if (run === "viewer") {
      // The viewer page itself: its stats line (median of the last 5 s) and its per-frame values.
      await page.goto(daemon.base + "/");
      await page.waitForFunction(() => window.snaprtc.latencySamples.length > 0, null, { timeout: 20000 });
      await sleep(WARMUP_MS);
      await page.evaluate(() => window.snaprtc.latencySamples.splice(0));
      const samples = [];
      const end = Date.now() + WINDOW_MS;
      while (Date.now() < end) {
        await sleep(1000);
        samples.push(...await page.evaluate(() => window.snaprtc.latencySamples.splice(0)));
      }
      const shown = await page.evaluate(() => document.getElementById("latency").textContent);
      return { run, total: samples, receive: [], decode: [], present: [], misses: 0, frames: samples.length, shown };
    }
    await page.goto(daemon.base + "/health");
    await page.evaluate(`window.stampFromLevels = ${stampFromLevels.toString()}`);
    await page.evaluate(pageHelpers);
    const low = run.endsWith("-jb0");
    if (run.startsWith("snaprtc")) {
      const mods = createRequire(join(root, "tests", "node", "package.json"));
      const pkg = (name) => dirname(mods.resolve(`${name}/package.json`));
      await page.addScriptTag({ path: join(pkg("@microsoft/signalr"), "dist/browser/signalr.min.js") });
      await page.addScriptTag({ path: join(pkg("simple-peer"), "simplepeer.min.js") });
      await page.addScriptTag({ path: join(pkg("lz-string"), "libs/lz-string.min.js") });
      const session = `latency-${process.pid}-${Date.now().toString(36)}`;
      await page.evaluate(([s, l]) => connectSnapRtc("/snaprtc-hub", s, l), [session, low]);
    } else {
      if (run === "whep-nopd") await page.evaluate(() => { window.stripPlayoutDelay = true; });
      // Shown scaled down as the viewer page shows it (960 px wide, 4:3 box), not 1:1.
      if (run === "whep-scaled") await page.addStyleTag({ content: "video { width: 928px; aspect-ratio: 4 / 3; background: #000; }" });
      await page.evaluate((l) => connectWhep(l), low);
    }
    await page.waitForFunction(() => window.bench.samples.length > 0 || window.bench.error, null, { timeout: 30000 });
    const err = await page.evaluate(() => window.bench.error);
    if (err) throw new Error(`${run}: ${err}`);
    await sleep(WARMUP_MS);
    await page.evaluate(() => { window.bench.samples = []; window.bench.misses = 0; window.bench.frames = 0; });
    await sleep(WINDOW_MS);
    const b = await page.evaluate(() => window.bench);
    return {
      run,
      total: b.samples.map((s) => s[0]),
      receive: b.samples.map((s) => s[1]),
      decode: b.samples.map((s) => s[2]),
      present: b.samples.map((s) => s[3]),
      misses: b.misses,
      frames: b.frames,
    };
  } finally {
    await page.close();
  }
}

const browser = await launchBrowser();
// Capture runs at exactly 30 fps on the same clock as the browser's 60 Hz frame clock, so the
// phase between the two (which decides up to one refresh interval of waiting) is fixed for a
// daemon's life: each path runs REPEAT times with a fresh daemon and the samples are pooled.
const REPEAT = Number(process.env.BENCH_REPEAT || 3);
const results = [];
try {
  for (const run of RUNS) {
    const pooled = { run, total: [], receive: [], decode: [], present: [], misses: 0, frames: 0, shown: [], p50s: [], encodeMs: [] };
    for (let i = 0; i < REPEAT; i++) {
      // A fresh daemon per run: one viewer at a time, nothing left over from the last run.
      const rtspPort = await freePort();
      const daemon = await startDaemon(rtspPort);
      daemon.rtspPort = rtspPort;
      try {
        const r = await measure(browser, daemon, run);
        // The daemon's own share of capture → last packet in: openh264's time per picture.
        const metrics = await (await fetch(daemon.base + "/metrics")).text();
        const num = (name) => Number(metrics.match(new RegExp(`^${name} ([0-9.eE+-]+)$`, "m"))?.[1]);
        pooled.encodeMs.push(num("snaprtcd_encode_seconds_sum") / num("snaprtcd_encode_seconds_count") * 1000);
        for (const k of ["total", "receive", "decode", "present"]) pooled[k].push(...r[k]);
        pooled.misses += r.misses;
        pooled.frames += r.frames;
        if (r.shown) pooled.shown.push(r.shown);
        pooled.p50s.push(stats(r.total).p50);
        const f = (xs) => { const s = stats(xs); return `p50 ${s.p50?.toFixed(1)} p95 ${s.p95?.toFixed(1)} p99 ${s.p99?.toFixed(1)} ms (${s.n})`; };
        console.error(`${run} #${i + 1}: display ${f(r.total)}; received ${f(r.receive)}; to compositor ${f(r.present)}; decode ${f(r.decode)}; frames ${r.frames}, unread ${r.misses}${r.shown ? `; page shows "${r.shown}"` : ""}`);
      } finally {
        await daemon.stop();
      }
    }
    pooled.load = loadavg()[0];
    results.push(pooled);
  }
} finally {
  await browser.close();
}

const ms = (x) => Number.isFinite(x) ? x.toFixed(1) : "–";
const out = [];
out.push(`${WIDTH}x${HEIGHT}@${FPS} test pattern, openh264 2 Mbit/s, headless Chromium on the same machine; ${REPEAT} daemons per path, ${WINDOW_MS / 1000} s each after ${WARMUP_MS / 1000} s warm-up\n`);
out.push("| path | frames (unread) | capture → display p50 / p95 / p99 (ms) | p50 per daemon | capture → last packet in p50 / p95 | encode mean (daemon) | capture → compositor p50 | decode p50 | load avg |");
out.push("|---|---:|---|---|---|---:|---:|---:|---:|");
for (const r of results) {
  const [t, rc, pr, d] = [stats(r.total), stats(r.receive), stats(r.present), stats(r.decode)];
  out.push(`| ${r.run} | ${r.frames} (${r.misses}) | ${ms(t.p50)} / ${ms(t.p95)} / ${ms(t.p99)} | ${r.p50s.map(ms).join(", ")} | ${ms(rc.p50)} / ${ms(rc.p95)} | ${ms(r.encodeMs.reduce((a, b) => a + b, 0) / r.encodeMs.length)} | ${ms(pr.p50)} | ${ms(d.p50)} | ${r.load.toFixed(2)} |`);
}
for (const r of results) if (r.shown.length) out.push(`\nThe viewer page's stats line at the end of each window: ${r.shown.map((s) => `"${s}"`).join(", ")}.`);
console.log(out.join("\n"));
