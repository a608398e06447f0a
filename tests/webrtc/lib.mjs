// Helpers for the WebRTC browser tests: start snaprtcd on port 0, launch headless Chromium.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, "..", "..");
export const bin = process.env.SNAPRTCD_BIN || join(root, "target", "debug", "snaprtcd");

// The test pattern the tests expect: 640x480 at 30 fps, 1.5 Mbit/s.
// `camera` replaces the [camera] section (the benchmark feeds an `exec` H.264 source).
export const baseConfig = (extra = "", camera = TESTSRC) => `
[server]
listen = "127.0.0.1:0"
rtc_udp_port = 0
max_viewers = ${extra.includes("max_viewers") ? "" : "16"}
${extra}
${camera}

[encoder]
bitrate_kbps = 1500

[mdns]
enabled = false
`.replace(/^max_viewers = \n/m, "");

export const TESTSRC = `[camera]
source = "testsrc"
width = 640
height = 480
fps = 30`;

/** Start the daemon; resolves to { base, proc, log, stop() } once it logged `ready`. */
export async function startDaemon(extra = "", camera = TESTSRC) {
  return spawnDaemon(baseConfig(extra, camera));
}

/**
 * Run `binary` with `configText` as its config file (in a fresh temporary directory, removed by
 * stop()); resolves to { base, proc, log, dir, stop() } once it logged `ready`.
 */
export async function spawnDaemon(configText, binary = bin) {
  const dir = mkdtempSync(join(tmpdir(), "snaprtcd-webrtc-"));
  const config = join(dir, "snaprtcd.toml");
  writeFileSync(config, configText);
  const proc = spawn(binary, ["--config", config], {
    env: { ...process.env, SNAPRTCD_LOG: process.env.SNAPRTCD_LOG || "info", NO_COLOR: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const log = [];
  let base = null;
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("daemon did not start:\n" + log.join("\n"))), 30000);
    let buf = "";
    proc.stderr.on("data", (chunk) => {
      buf += chunk.toString();
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        // eslint-disable-next-line no-control-regex
        const line = buf.slice(0, nl).replace(/\x1b\[[0-9;]*m/g, "");
        buf = buf.slice(nl + 1);
        log.push(line);
        if (process.env.SNAPRTCD_TEST_LOG) console.error("[daemon] " + line);
        const m = line.match(/http listening.*addr=(\S+)/);
        if (m) base = "http://" + m[1];
        if (/\bready\b/.test(line) && base) { clearTimeout(timer); resolve(); }
      }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`daemon exited ${code}:\n` + log.join("\n"))); });
  });
  await ready;
  return {
    base, proc, log, dir,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Headless Chromium with host candidates visible (no mDNS obfuscation unless `mdns`), fresh profile. */
export async function launchBrowser({ mdns = false } = {}) {
  const tmp = join(here, ".tmp");
  mkdirSync(tmp, { recursive: true });
  process.env.TMPDIR = tmp;
  const userDataDir = mkdtempSync(join(tmp, "profile-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...(mdns ? [] : ["--disable-features=WebRtcHideLocalIpsWithMdns"]),
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

export async function healthJson(base) {
  const r = await fetch(base + "/health", { headers: { Accept: "application/json" } });
  return r.json();
}

export async function metrics(base) {
  const r = await fetch(base + "/metrics");
  const text = await r.text();
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/** Wait until `fn()` is truthy (polling), or throw after `ms`. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
