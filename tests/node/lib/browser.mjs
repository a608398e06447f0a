// Headless Chromium for the browser tests: a network namespace to run in, the static server for
// the SnapRTC pages and their npm builds, and the browser itself.
//
// As root (CI), Chromium, the daemon and the static server all run inside a network namespace
// of their own holding only loopback and a veth pair whose both ends are inside it, so peers can
// only meet on the namespace's own addresses and no packet can leave for any other address. (On
// loopback alone Chromium gathers no candidate at all, even with
// `--allow-loopback-in-peer-connection`.) Without root the tests run in the host's namespace and
// say so.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { withTimeout } from './daemon.mjs';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const here = path.dirname(fileURLToPath(import.meta.url));

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Host candidates as IP addresses, not mDNS names.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // Also gather 127.0.0.1 candidates (a switch meant for tests): the peers may pair on either.
  '--allow-loopback-in-peer-connection',
];

/** The namespace's veth address (Chromium's WebRTC wants one non-loopback network). */
export const NETNS_ADDR = '10.203.0.1';

/** Why the browser tests cannot run here, or false. */
const missing = existsSync(CHROMIUM) ? null : `${CHROMIUM} is not installed (apt-get install chromium)`;
/**
 * Why the browser tests skip, or false. Under CI (`CI=true`) a missing Chromium never skips:
 * the tests run and `launchChromium` fails them, naming what is missing.
 */
export const skipReason = missing && process.env.CI !== 'true' ? missing : false;

/** A network namespace with `lo` and the veth pair, deleted when the test ends; null when not root. */
export function makeNetns(t, tag = 'br') {
  if (process.getuid?.() !== 0) return null;
  const name = `snaprtcd-${tag}-${process.pid}`;
  execFileSync('ip', ['netns', 'add', name]);
  t.after(() => {
    try {
      execFileSync('ip', ['netns', 'del', name]);
    } catch {
      // already gone
    }
  });
  const ip = (...args) => execFileSync('ip', ['-n', name, ...args]);
  ip('link', 'set', 'lo', 'up');
  ip('link', 'add', 'snr0', 'type', 'veth', 'peer', 'name', 'snr1');
  ip('addr', 'add', `${NETNS_ADDR}/24`, 'dev', 'snr0');
  ip('link', 'set', 'snr0', 'up');
  ip('link', 'set', 'snr1', 'up');
  ip('route', 'add', 'default', 'dev', 'snr0');
  return name;
}

/** Starts ../browser/static-server.mjs (inside `netns` if given) and returns its origin. */
export async function staticServer(t, netns) {
  const argv = [process.execPath, path.join(here, '..', 'browser', 'static-server.mjs')];
  const full = netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;
  const child = spawn(full[0], full.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => {
    child.stdin.end();
    child.kill();
  });
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/static listening port=(\d+)/);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => reject(new Error(`static server exited with ${code}`)));
    }),
    10000,
    'the static server',
  );
  return `http://127.0.0.1:${port}`;
}

/** Headless Chromium (inside `netns` if given) with a fresh profile, closed when the test ends. */
export async function launchChromium(t, netns) {
  if (missing) throw new Error(missing);
  // Chromium leaves folders in $TMPDIR: give it one of ours, and a fresh profile.
  const work = await mkdtemp(path.join(tmpdir(), 'snaprtcd-browser-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const chromeTmp = path.join(work, 'tmp');
  await mkdir(chromeTmp);
  let executablePath = CHROMIUM;
  if (netns) {
    // Playwright starts the browser itself; a wrapper puts it in the namespace (the DevTools
    // pipe on fds 3 and 4 passes through `ip netns exec`, which execs).
    executablePath = path.join(work, 'chromium-in-netns');
    await writeFile(executablePath, `#!/bin/sh\nexec ip netns exec ${netns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  }
  const context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
    executablePath,
    headless: true,
    env: { ...process.env, TMPDIR: chromeTmp },
    args: CHROMIUM_ARGS,
  });
  t.after(() => context.close());
  return context;
}

/**
 * Opens SnapRTC's two pages in `context` (initiator.html on `initiatorHub`, capture.html on
 * `captureHub`: the same hub, or two instances of a fleet), lets them meet in a fresh session
 * and send a JPEG over their data channel, and checks it arrived whole: every byte, a JPEG of
 * 320x240, and (in `netns`) an ICE pair on the namespace's addresses. `logs()` adds the
 * servers' logs to a failure's report. Returns {image, pair}.
 */
export async function meetAndSendJpeg(t, { context, origin, initiatorHub, captureHub, session, netns, logs = () => '' }) {
  const hubs = { initiator: initiatorHub, capture: captureHub };
  const pages = {};
  const consoleLines = [];
  const dump = async () => {
    const out = [];
    for (const [name, page] of Object.entries(pages)) {
      const st = await page.evaluate(() => ({ state: window.state, log: window.log })).catch((e) => String(e));
      out.push(`${name}: ${JSON.stringify(st, null, 1)}`);
    }
    return `${out.join('\n')}\nconsole:\n${consoleLines.join('\n')}\n${logs()}`;
  };
  for (const name of ['initiator', 'capture']) {
    const page = await context.newPage();
    page.on('console', (m) => consoleLines.push(`[${name}] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`[${name}] pageerror: ${e}`));
    pages[name] = page;
    const query = `hub=${encodeURIComponent(hubs[name])}&session=${encodeURIComponent(session)}`;
    await page.goto(`${origin}/${name}.html?${query}`);
    // The initiator must be in the session before the capture side says it is ready.
    try {
      await page.waitForFunction(() => window.state.synced || window.state.error, null, { timeout: 15000 });
    } catch (e) {
      throw new Error(`${name} did not sync: ${e.message}\n${await dump()}`);
    }
    const err = await page.evaluate(() => window.state.error);
    assert.equal(err, null, `${name}: ${err}\n${await dump()}`);
  }

  let image;
  try {
    await pages.initiator.waitForFunction(() => (window.state.image && window.state.pair) || window.state.error, null, { timeout: 45000 });
    image = await pages.initiator.evaluate(() => window.state.image);
  } catch (e) {
    throw new Error(`no image arrived: ${e.message}\n${await dump()}`);
  }
  const errors = await Promise.all(Object.values(pages).map((p) => p.evaluate(() => window.state.error)));
  assert.deepEqual(errors, [null, null], await dump());
  const sent = await pages.capture.evaluate(() => window.state.sent);
  const pair = await pages.initiator.evaluate(() => window.state.pair);
  t.diagnostic(`JPEG ${image.bytes} bytes, ${image.width}x${image.height}, ICE pair ${JSON.stringify(pair)}`);
  assert.equal(image.bytes, sent, 'every byte arrived');
  assert.deepEqual(image.soi, [0xff, 0xd8, 0xff], 'a JPEG (SOI marker)');
  assert.equal(image.width, 320);
  assert.equal(image.height, 240);
  if (netns) {
    const local = new RegExp(`^(127\\.0\\.0\\.1|${NETNS_ADDR.replaceAll('.', '\\.')}):`);
    assert.match(pair.local, local, 'peers met on an address of the namespace');
    // A remote candidate learnt from a connectivity check (the other side's checks came
    // before its answer, as happens when the answer crosses instances) is peer-reflexive, and
    // Chromium's stats hide its address (":PORT prflx"). The namespace has no other address.
    const remote = new RegExp(`${local.source}|^:\\d+ prflx$`);
    assert.match(pair.remote, remote, 'peers met on an address of the namespace');
  }
  return { image, pair };
}
