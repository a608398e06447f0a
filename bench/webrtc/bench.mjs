// WebRTC benchmark: server CPU and RSS with 1, 4 and 16 WHEP viewers (headless Chromium,
// every viewer decoding), the extra cost per viewer, and time to first frame (median of 10),
// for snaprtcd and for aiortc serving the same 640x480@30 test pattern. Run via run.sh.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { startDaemon, launchBrowser, median } from "../../tests/webrtc/lib.mjs";

// BENCH_VIEWERS=0: time to first frame only (no CPU rows).
const COUNTS = (process.env.BENCH_VIEWERS || "1,4,16").split(",").map(Number).filter((n) => n > 0);
const TTFF_N = Number(process.env.BENCH_TTFF_N || 10);
// `testsrc`: each server draws the test pattern and encodes it (snaprtcd once, aiortc once per
// viewer). `h264`: both pass through the same ffmpeg-made 1.5 Mbit/s CBR H.264 stream (noise
// keeps the rate full), which isolates the per-viewer cost of the WebRTC stack at full rate.
const SOURCE = process.env.BENCH_SOURCE || "testsrc";
export const H264_SOURCE = [
  "ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi",
  "-i", "testsrc2=size=640x480:rate=30,noise=alls=24:allf=t+u",
  "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline",
  "-b:v", "1500k", "-maxrate", "1500k", "-bufsize", "500k", "-g", "30",
  "-x264-params", "repeat-headers=1", "-f", "h264", "-",
];
const EXEC_CAMERA = `[camera]
source = "exec"
width = 640
height = 480
fps = 30

[camera.exec]
command = ${JSON.stringify(H264_SOURCE)}
format = "h264"`;
const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS || 10000);
const TICKS = 100; // USER_HZ on Linux
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cpuTicks(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return Number(f[11]) + Number(f[12]); // utime + stime
}
function rssMiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) / 1024;
}

const pageHelpers = () => {
  window.connect = async () => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver("video", { direction: "recvonly" });
    const v = document.createElement("video");
    v.muted = true; v.autoplay = true; v.playsInline = true;
    document.body.appendChild(v);
    // Time to first frame counts from the WHEP POST (set below) to the first decoded frame.
    let started = performance.now();
    const res = { pc, v, firstFrameMs: null, phases: {} };
    // Phases of the time to first frame, each from the POST (ms).
    const mark = (k, t = performance.now()) => { if (res.phases[k] === undefined) res.phases[k] = t - started; };
    pc.oniceconnectionstatechange = () => pc.iceConnectionState === "connected" && mark("ice");
    pc.onconnectionstatechange = () => pc.connectionState === "connected" && mark("dtls");
    pc.ontrack = (ev) => {
      v.srcObject = new MediaStream([ev.track]);
      v.play().catch(() => {});
      v.requestVideoFrameCallback((now, m) => {
        res.firstFrameMs = performance.now() - started;
        // receiveTime: the frame's last packet in; presentationTime: handed to the compositor.
        if (m.receiveTime) mark("received", m.receiveTime);
        if (m.presentationTime) mark("presented", m.presentationTime);
        mark("callback");
      });
    };
    await pc.setLocalDescription(await pc.createOffer());
    // aiortc is not ICE-lite: give it our candidates (wait for gathering, as its examples do).
    if (pc.iceGatheringState !== "complete") {
      await new Promise((r) => { pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r(); setTimeout(r, 2000); });
    }
    started = performance.now();
    const r = await fetch("/whep", { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
    if (r.status !== 201) throw new Error("WHEP " + r.status + " " + await r.text());
    mark("answer");
    res.location = r.headers.get("Location");
    const answerSdp = await r.text();
    window.lastAnswer = answerSdp; window.lastOffer = pc.localDescription.sdp;
    await pc.setRemoteDescription({ type: "answer", sdp: answerSdp });
    return res;
  };
  window.decoded = async (bytes = false) => {
    const out = [];
    for (const w of window.viewers) {
      let n = 0, b = 0;
      (await w.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") { n = s.framesDecoded || 0; b = s.bytesReceived || 0; } });
      out.push(bytes ? b : n);
    }
    return out;
  };
  window.codecs = async () => {
    const out = [];
    for (const w of window.viewers) {
      const st = await w.pc.getStats();
      st.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") out.push(st.get(s.codecId)?.mimeType); });
    }
    return out;
  };
  window.closeAll = async () => {
    for (const w of window.viewers) { await fetch(w.location, { method: "DELETE" }).catch(() => {}); w.pc.close(); w.v.remove(); }
    window.viewers = [];
  };
};

// A tracing Debug duration ("1.2ms", "850µs", "1.1s") in ms.
function durMs(t) {
  const m = t.match(/^([\d.]+)(ns|µs|us|ms|s)$/);
  if (!m) return NaN;
  return Number(m[1]) * { ns: 1e-6, "µs": 1e-3, us: 1e-3, ms: 1, s: 1000 }[m[2]];
}
// Median of the daemon's own "viewer connected after=" (offer accepted → ICE and DTLS up), TTFF joins.
function daemonPhases(lines) {
  const out = {};
  for (const [k, re] of [["connected", /viewer connected.*after=(\S+)/]]) {
    const v = lines.map((l) => l.match(re)).filter(Boolean).map((m) => durMs(m[1])).slice(-TTFF_N);
    if (v.length) out[k] = median(v);
  }
  return out;
}

async function measure(name, base, pid, browser, log = null) {
  const page = await browser.context.newPage();
  await page.goto(base + (name === "snaprtcd" ? "/health" : "/"));
  const rows = [];
  const idle0 = cpuTicks(pid);
  await sleep(WINDOW_MS / 2);
  const idle = ((cpuTicks(pid) - idle0) / TICKS) / (WINDOW_MS / 2000) * 100;
  const idleRss = rssMiB(pid);
  for (const n of COUNTS) {
    await page.evaluate(async (n) => {
      window.viewers = [];
      for (let i = 0; i < n; i++) window.viewers.push(await connect());
    }, n);
    // Warm up until every viewer decodes, then measure.
    const end = Date.now() + 20000;
    while (Math.min(...await page.evaluate(() => decoded())) < 30) {
      if (Date.now() > end) throw new Error(`${name}: not every viewer decodes with ${n} viewers`);
      await sleep(200);
    }
    const codecs = await page.evaluate(() => codecs());
    if (codecs.some((c) => c !== "video/H264")) throw new Error(`${name}: not all H.264: ${codecs}`);
    const d0 = await page.evaluate(() => decoded());
    const b0 = await page.evaluate(() => decoded(true));
    const c0 = cpuTicks(pid);
    await sleep(WINDOW_MS);
    const cpu = ((cpuTicks(pid) - c0) / TICKS) / (WINDOW_MS / 1000) * 100;
    const d1 = await page.evaluate(() => decoded());
    const b1 = await page.evaluate(() => decoded(true));
    const kbps = b1.reduce((a, x, i) => a + (x - b0[i]), 0) / b1.length * 8 / WINDOW_MS;
    const fps = d1.map((x, i) => (x - d0[i]) / (WINDOW_MS / 1000));
    const rss = rssMiB(pid);
    const load = loadavg()[0];
    rows.push({ n, cpu, rss, load, kbps, minFps: Math.min(...fps), meanFps: fps.reduce((a, b) => a + b, 0) / fps.length });
    console.error(`${name} ${n} viewers: cpu ${cpu.toFixed(1)}% rss ${rss.toFixed(1)} MiB fps min ${Math.min(...fps).toFixed(1)} ${kbps.toFixed(0)} kbit/s load ${load.toFixed(2)}`);
    await page.evaluate(() => closeAll());
    await sleep(2000);
  }
  // Time to first frame: 10 joins, each 600 ms after the last (past the keyframe rate limit).
  const ttff = [];
  const phases = {};
  for (let i = 0; i < TTFF_N; i++) {
    await sleep(600);
    const r = await page.evaluate(async () => {
      window.viewers = [await connect()];
      const w = window.viewers[0];
      const end = performance.now() + 10000;
      while (w.firstFrameMs === null && performance.now() < end) await new Promise((r) => setTimeout(r, 5));
      const t = w.firstFrameMs;
      await new Promise((r) => setTimeout(r, 50));
      const p = { ...w.phases };
      await closeAll();
      return { t, p };
    });
    ttff.push(r.t);
    for (const [k, v] of Object.entries(r.p)) (phases[k] ||= []).push(v);
  }
  if (process.env.BENCH_DUMP_SDP) console.error(await page.evaluate(() => window.lastOffer + "\n----\n" + window.lastAnswer));
  await page.close();
  const ph = Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, median(v)]));
  const ok = ttff.filter((t) => t !== null).sort((a, b) => a - b);
  if (log) console.error(`${name} daemon medians (ms): ${JSON.stringify(daemonPhases(log))}`);
  console.error(`${name} ttff sorted: ${ok.map((t) => t.toFixed(0)).join(" ")}; phase medians: ${Object.entries(ph).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")}; load ${loadavg()[0].toFixed(2)}`);
  return { name, idle, idleRss, rows, ttff: median(ok), ttffMin: ok[0], ttffMax: ok.at(-1), phases: ph };
}

async function startAiortc() {
  const py = process.env.AIORTC_PYTHON || "python3";
  const args = SOURCE === "h264" ? ["--source-cmd", JSON.stringify(H264_SOURCE)] : [];
  const proc = spawn(py, [new URL("./aiortc_server.py", import.meta.url).pathname, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise((resolve, reject) => {
    let buf = "";
    proc.stdout.on("data", (c) => { buf += c; const m = buf.match(/listening (\d+)/); if (m) resolve(m[1]); });
    proc.on("exit", (code) => reject(new Error("aiortc server exited " + code)));
  });
  return { base: `http://127.0.0.1:${port}`, proc, stop: () => proc.kill("SIGTERM") };
}

const browser = await launchBrowser();
await browser.context.addInitScript(pageHelpers);
const results = [];
try {
  const d = await startDaemon("", SOURCE === "h264" ? EXEC_CAMERA : undefined);
  try { results.push(await measure("snaprtcd", d.base, d.proc.pid, browser, d.log)); } finally { await d.stop(); }
  const a = await startAiortc();
  try { results.push(await measure("aiortc", a.base, a.proc.pid, browser)); } finally { a.stop(); }
  // BENCH_ICE_FULL=1: snaprtcd once more with `[ice] mode = "full"` (ICE-lite is the default
  // without STUN/TURN servers), to compare the time to first frame of both modes in one run.
  if (process.env.BENCH_ICE_FULL) {
    const d2 = await startDaemon('\n[ice]\nmode = "full"\n', SOURCE === "h264" ? EXEC_CAMERA : undefined);
    try { results.push(await measure("snaprtcd (ice full)", d2.base, d2.proc.pid, browser, d2.log)); } finally { await d2.stop(); }
  }
} finally {
  await browser.close();
}

// Markdown for docs/BENCHMARKS.md.
const out = [];
// CPU is the server process's CPU-seconds (utime + stime, all threads) over the window, as %
// of one core: what other work on the machine does to the wall clock does not count.
out.push(`source: ${SOURCE}, window ${WINDOW_MS / 1000} s per row\n`);
out.push(`| server | viewers | CPU (% of one core) | RSS (MiB) | viewer fps (min / mean) | kbit/s per viewer | load avg (1 min) |`);
out.push(`|---|---:|---:|---:|---|---:|---:|`);
for (const r of results) {
  out.push(`| ${r.name} | 0 | ${r.idle.toFixed(1)} | ${r.idleRss.toFixed(1)} | – | – | |`);
  for (const row of r.rows) {
    out.push(`| ${r.name} | ${row.n} | ${row.cpu.toFixed(1)} | ${row.rss.toFixed(1)} | ${row.minFps.toFixed(1)} / ${row.meanFps.toFixed(1)} | ${row.kbps.toFixed(0)} | ${row.load.toFixed(2)} |`);
  }
}
out.push("");
// Extra cost per viewer between consecutive counts (e.g. 1→4 and 4→16) and over the whole span.
const spans = COUNTS.slice(1).map((n, i) => [COUNTS[i], n]);
if (COUNTS.length > 2) spans.push([COUNTS[0], COUNTS.at(-1)]);
out.push(`| server | ${spans.map(([a, b]) => `extra CPU / RSS per viewer (${a}→${b})`).join(" | ")} | time to first frame (median of 10) |`);
out.push(`|---|${spans.map(() => "---:|").join("")}---:|`);
for (const r of results) {
  const cells = spans.map(([na, nb]) => {
    const a = r.rows.find((x) => x.n === na), b = r.rows.find((x) => x.n === nb);
    const k = b.n - a.n || 1;
    return `${((b.cpu - a.cpu) / k).toFixed(2)} % / ${((b.rss - a.rss) / k).toFixed(2)} MiB`;
  });
  out.push(`| ${r.name} | ${cells.join(" | ")} | ${r.ttff.toFixed(0)} ms (${r.ttffMin.toFixed(0)}–${r.ttffMax.toFixed(0)}) |`);
}
out.push("\n| server | POST→answer | →ICE connected | →DTLS connected | →frame received | →presented | →callback (TTFF) |");
out.push("|---|---:|---:|---:|---:|---:|---:|");
const cell = (v) => (v === undefined ? "–" : `${v.toFixed(1)} ms`);
for (const r of results) {
  const p = r.phases;
  out.push(`| ${r.name} | ${cell(p.answer)} | ${cell(p.ice)} | ${cell(p.dtls)} | ${cell(p.received)} | ${cell(p.presented)} | ${cell(p.callback)} |`);
}
const s = results.find((r) => r.name === "snaprtcd"), a = results.find((r) => r.name === "aiortc");
const at4 = (r) => r.rows.find((x) => x.n === 4);
if (s && a && at4(s) && at4(a)) out.push(`\nAt 4 viewers aiortc uses ${(at4(a).cpu / at4(s).cpu).toFixed(1)}× the CPU of snaprtcd.`);
// Issue 13 item 9: snaprtcd's median time to first frame at most 0.85× aiortc's, in one run.
if (a) for (const r of results.filter((r) => r !== a)) out.push(`\nTime to first frame, ${r.name} / aiortc: ${(r.ttff / a.ttff).toFixed(2)}× (${r.ttff.toFixed(0)} / ${a.ttff.toFixed(0)} ms, target ≤ 0.85×).`);
console.log(out.join("\n"));
