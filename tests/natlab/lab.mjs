// The NAT lab's pieces for lab.test.mjs: coturn, the snaprtcd relay hub and the device (each a
// process in its namespace), headless Chromium in the browser's namespace, a page server on the
// internet, and what getStats says about the selected candidate pair.
//
// The test process itself runs inside the internet namespace (run.sh starts it there), so it
// reaches the servers' address and the device's forwarded HTTP port as any host on the
// internet would; the other namespaces are entered with `ip netns exec`.

import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, readFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.join(here, '..', '..');
// The npm packages are tests/node's (pinned in its package-lock.json; run.sh runs its npm ci).
const require = createRequire(path.join(root, 'tests', 'node', 'package.json'));
const { chromium } = require('playwright-core');
const pkg = (name) => path.dirname(require.resolve(`${name}/package.json`));

export const bin = process.env.SNAPRTCD_BIN || path.join(root, 'target', 'debug', 'snaprtcd');
export const P = process.env.NATLAB_PREFIX;
if (!P) throw new Error('NATLAB_PREFIX is not set: run tests/natlab/run.sh');
export const NS = { inet: `${P}-inet`, rd: `${P}-rd`, dev: `${P}-dev`, rb: `${P}-rb`, br: `${P}-br` };

/** The servers' address on the lab's internet (coturn, the relay hub, the page server). */
export const SERVERS = '198.51.100.1';
/** The device's router's WAN address; TCP 8080 there is forwarded to the device's HTTP port. */
export const DEVICE_PUBLIC = '203.0.113.10';
export const BROWSER_PUBLIC = '203.0.113.20';
export const TURN_PORT = 3478;
/** coturn's `use-auth-secret` instance (REST credentials). */
export const TURN_SECRET_PORT = 3479;
export const TURN_USER = 'natlab';
export const TURN_PASS = 'natlab-pass';
export const TURN_SECRET = 'natlab-shared-secret';
export const HUB_PORT = 8080;
export const HUB = `http://${SERVERS}:${HUB_PORT}/snaprtc-hub`;
/** A second relay that echoes as the original .NET server does (`echo_to_sender`). */
export const ECHO_HUB_PORT = 8081;
export const ECHO_HUB = `http://${SERVERS}:${ECHO_HUB_PORT}/snaprtc-hub`;

const work = mkdtempSync(path.join(process.env.NATLAB_TMP || tmpdir(), 'natlab-'));
export const cleanupWork = () => rmSync(work, { recursive: true, force: true });

/** The lab's NAT routers: `topo.sh nat` and `topo.sh udp-to-servers`. */
export function topo(...args) {
  execFileSync(path.join(here, 'topo.sh'), [args[0], P, ...args.slice(1)], { stdio: 'inherit' });
}
/** Datagrams the routers dropped on their way to the servers (while `udp-to-servers block`). */
export function udpDropped() {
  let n = 0;
  for (const r of [NS.rd, NS.rb]) {
    const out = execFileSync('ip', ['netns', 'exec', r, 'iptables', '-L', 'FORWARD', '-v', '-x', '-n'], { encoding: 'utf8' });
    for (const line of out.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[2] === 'DROP' && (f[3] === 'udp' || f[3] === '17') && line.includes(SERVERS)) n += Number(f[0]);
    }
  }
  return n;
}
export function setNat(device, browser) {
  topo('nat', 'rd', device);
  topo('nat', 'rb', browser);
}

/** Resolve when `fn()` is truthy (polling every 50 ms), or throw naming `what` after `ms`. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A process (in namespace `ns`, or in this one), its output kept in `log`; `ready` resolves
 * when a line matches `readyRe`.
 */
export function proc(name, argv, { ns, readyRe, env = {}, timeoutMs = 20000 } = {}) {
  const full = ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv;
  const child = spawn(full[0], full.slice(1), {
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  let onLine = () => {};
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready in ${timeoutMs} ms:\n${log.slice(-30).join('\n')}`)), timeoutMs);
    onLine = (line) => {
      if (readyRe && readyRe.test(line)) { clearTimeout(timer); resolve(); }
    };
    child.once('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`${name} exited (${code ?? sig}):\n${log.slice(-30).join('\n')}`)); });
    if (!readyRe) { clearTimeout(timer); resolve(); }
  });
  ready.catch(() => {});
  for (const stream of [child.stdout, child.stderr]) {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        log.push(line);
        if (process.env.SNAPRTCD_TEST_LOG) console.error(`[${name}] ${line}`);
        onLine(line);
      }
    });
  }
  return {
    child, log, ready,
    /** SIGTERM (or `signal`), and wait for the exit. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
  };
}

/** coturn on the servers' address: long-term credentials on 3478, REST secret on 3479. */
export async function startCoturn() {
  const common = [
    '-n', '--listening-ip', SERVERS, '--relay-ip', SERVERS, '--fingerprint',
    '--no-tls', '--no-dtls', '--no-cli', '--log-file', 'stdout', '--simple-log',
    '--min-port', '49152', '--max-port', '65535', '--realm', 'natlab',
    // NATLAB_COTURN_VERBOSE=1 (with SNAPRTCD_TEST_LOG=1): coturn logs every session and refusal.
    ...(process.env.NATLAB_COTURN_VERBOSE === '1' ? ['--verbose'] : []),
  ];
  const lt = proc('coturn', ['turnserver', ...common, '--listening-port', String(TURN_PORT),
    '--lt-cred-mech', '--user', `${TURN_USER}:${TURN_PASS}`, '--pidfile', path.join(work, 'coturn.pid')],
  { readyRe: /Total General servers|IPv4. (UDP|TCP) listener opened/ });
  const secret = proc('coturn-secret', ['turnserver', ...common, '--listening-port', String(TURN_SECRET_PORT),
    '--use-auth-secret', '--static-auth-secret', TURN_SECRET, '--pidfile', path.join(work, 'coturn-secret.pid')],
  { readyRe: /Total General servers|IPv4. (UDP|TCP) listener opened/ });
  await Promise.all([lt.ready, secret.ready]);
  return { lt, secret, async stop() { await Promise.all([lt.stop(), secret.stop()]); } };
}

/** A daemon with `configText` (in namespace `ns`); resolves once it logged `ready`. */
export async function startDaemon(name, configText, ns) {
  const dir = path.join(work, `${name}-${Date.now()}`);
  mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'snaprtcd.toml');
  writeFileSync(config, configText);
  const p = proc(name, [bin, '--config', config], {
    ns,
    readyRe: /\bready\b/,
    env: { SNAPRTCD_LOG: process.env.SNAPRTCD_LOG || 'info,snaprtcd=debug' },
  });
  await p.ready;
  return { ...p, config, dir };
}

/**
 * The relay hub on the internet ([camera] source = "none"). `echo`: behave as the original
 * ASP.NET server does (every message back to its sender too, no start on join), on
 * ECHO_HUB_PORT.
 */
export function startRelay({ echo = false } = {}) {
  return startDaemon(echo ? 'echo-relay' : 'relay', `
[server]
listen = "${SERVERS}:${echo ? ECHO_HUB_PORT : HUB_PORT}"
cors_origins = ["*"]

[camera]
source = "none"

[signaling]
join_sessions = "none"
${echo ? 'echo_to_sender = true' : ''}

[mdns]
enabled = false

[log]
format = "text"
`, null);
}

/**
 * The device behind its NAT: the test pattern (320x240 at 15 fps: the lab measures reach, not
 * picture quality, and 2 cores are shared), HTTP on 0.0.0.0:8080 (forwarded from its router's
 * WAN), any free UDP port. `extra` is appended ([ice], [[remote]] …).
 */
export function startDevice(extra = '') {
  return startDaemon('device', `
[server]
listen = "0.0.0.0:8080"
rtc_udp_port = 0
cors_origins = ["*"]

[camera]
source = "testsrc"
width = 320
height = 240
fps = 15

[encoder]
bitrate_kbps = 400

[signaling]
join_sessions = "all"

[mdns]
enabled = false

[log]
format = "text"
${extra}
`, NS.dev);
}

/** The device's JSON /health through the forwarded port. */
export async function deviceHealth() {
  const r = await fetch(`http://${DEVICE_PUBLIC}:8080/health`, { headers: { Accept: 'application/json' } });
  return r.json();
}

/**
 * The page server on the internet: the lab's initiator page and the npm browser builds it
 * loads. Resolves to { origin, close }.
 */
export async function startPageServer() {
  const files = {
    '/initiator.html': path.join(here, 'initiator.html'),
    '/vendor/signalr.min.js': path.join(pkg('@microsoft/signalr'), 'dist/browser/signalr.min.js'),
    '/vendor/simplepeer.min.js': path.join(pkg('simple-peer'), 'simplepeer.min.js'),
    '/vendor/lz-string.min.js': path.join(pkg('lz-string'), 'libs/lz-string.min.js'),
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) { res.writeHead(404).end(); return; }
    const type = file.endsWith('.html') ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8';
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, SERVERS, r));
  return { origin: `http://${SERVERS}:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

// In every page: remember each RTCPeerConnection, so the test can read getStats of the one the
// page made (the device's viewer page keeps its own in a closure).
const recordPeerConnections = () => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    window.__pcs.push({ pc, config: args[0] || null });
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Native);
  // What the newest connection's descriptions hold: candidates and ICE-lite (for failures).
  window.__sdpSummary = () => {
    const last = window.__pcs[window.__pcs.length - 1];
    if (!last) return null;
    const cands = (d) => (d?.sdp || '').split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.split(' ').slice(4, 8).join(' '));
    return {
      iceConnectionState: last.pc.iceConnectionState,
      remoteIceLite: /a=ice-lite/.test(last.pc.remoteDescription?.sdp || ''),
      local: cands(last.pc.localDescription),
      remote: cands(last.pc.remoteDescription),
    };
  };
  // The selected pair of the newest connection: candidate types, protocols, addresses.
  window.__selectedPair = async () => {
    const last = window.__pcs[window.__pcs.length - 1];
    if (!last) return null;
    const stats = await last.pc.getStats();
    let pairId = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
    if (!pairId) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pairId = s.id; });
    if (!pairId) return null;
    const pair = stats.get(pairId);
    const l = stats.get(pair.localCandidateId);
    const r = stats.get(pair.remoteCandidateId);
    const c = (x) => ({ type: x.candidateType, protocol: x.protocol, relayProtocol: x.relayProtocol || null, address: `${x.address || ''}:${x.port}` });
    return { local: c(l), remote: c(r), bytesReceived: pair.bytesReceived, iceServers: last.config?.iceServers || null };
  };
};

/** Headless Chromium inside the browser's namespace, with a fresh profile. */
export async function launchBrowser() {
  const dir = path.join(work, 'chromium');
  const tmp = path.join(dir, 'tmp');
  mkdirSync(tmp, { recursive: true });
  // Playwright starts the browser; a wrapper puts it in the namespace (the DevTools pipe on fds 3
  // and 4 passes through `ip netns exec`, which execs).
  const wrapper = path.join(dir, 'chromium-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${NS.br} ${process.env.CHROMIUM_BIN || '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
  const context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: wrapper,
    headless: true,
    env: { ...process.env, TMPDIR: tmp },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  await context.addInitScript(recordPeerConnections);
  return context;
}

/** "local=host/udp remote=srflx/udp" */
export function pairText(pair) {
  if (!pair) return 'none';
  const side = (c) => `${c.type}/${c.protocol}${c.relayProtocol ? `(relay over ${c.relayProtocol})` : ''}`;
  return `local=${side(pair.local)} remote=${side(pair.remote)}`;
}

/** Adds a line to the summary that run.sh prints at the end (the selected pairs of each case). */
export function summary(line) {
  console.log(`natlab: ${line}`);
  if (process.env.NATLAB_SUMMARY) appendFileSync(process.env.NATLAB_SUMMARY, line + '\n');
}
