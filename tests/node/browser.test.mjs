// Two SnapRTC-style pages in headless Chromium meet through snaprtcd (a pure relay here) and
// send a JPEG over their WebRTC data channel. The pages use the npm browser builds of
// @microsoft/signalr, simple-peer and lz-string exactly as SnapRTC does.
//
// Needs /usr/bin/chromium (Debian package `chromium`): skipped, saying so, only when it is not
// installed. Runs in a network namespace of its own when root (see lib/browser.mjs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { sessionId } from './lib/hub.mjs';
import { NETNS_ADDR, launchChromium, makeNetns, skipReason, staticServer } from './lib/browser.mjs';

const skip = skipReason;
if (skip) console.log(`# browser test skipped: ${skip}`);

test('two SnapRTC pages meet through the hub and send a JPEG over the data channel', { skip, timeout: 120000 }, async (t) => {
  const netns = makeNetns(t);
  t.diagnostic(netns ? `network namespace ${netns} (lo + veth ${NETNS_ADDR})` : 'not root: running in the host network namespace');
  const wrap = netns ? ['ip', 'netns', 'exec', netns] : [];
  const daemon = await startDaemon(t, { wrap, config: { signaling: { join_sessions: 'none' } } });
  const origin = await staticServer(t, netns);

  const context = await launchChromium(t, netns);

  const session = sessionId('browser');
  const query = `hub=${encodeURIComponent(daemon.hub)}&session=${encodeURIComponent(session)}`;
  const pages = {};
  const consoleLines = [];
  const dump = async () => {
    const out = [];
    for (const [name, page] of Object.entries(pages)) {
      const st = await page.evaluate(() => ({ state: window.state, log: window.log })).catch((e) => String(e));
      out.push(`${name}: ${JSON.stringify(st, null, 1)}`);
    }
    return `${out.join('\n')}\nconsole:\n${consoleLines.join('\n')}\ndaemon:\n${daemon.logText()}`;
  };
  for (const name of ['initiator', 'capture']) {
    const page = await context.newPage();
    page.on('console', (m) => consoleLines.push(`[${name}] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`[${name}] pageerror: ${e}`));
    pages[name] = page;
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
    assert.match(pair.remote, local, 'peers met on an address of the namespace');
  }
});
