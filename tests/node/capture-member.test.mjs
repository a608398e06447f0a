// The daemon as the capture side of a SnapRTC session (`join_sessions = "all"`, the default),
// in headless Chromium: a SnapRTC-style initiator page (npm builds of @microsoft/signalr,
// simple-peer and lz-string; `new SimplePeer({initiator: true, trickle: false})`, `Sync(session,
// false)`, the offer via `SignalCapture`, the answer via `signalInitiator`) gets a JPEG when the
// data channel opens and another after sending `snap`; both decode to the configured size and
// fit Chrome's 256 KiB data-channel message limit.
//
// Needs /usr/bin/chromium: skipped, saying so, only when it is not installed. Runs in a network
// namespace of its own when root (see lib/browser.mjs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { sessionId } from './lib/hub.mjs';
import { NETNS_ADDR, launchChromium, makeNetns, skipReason, staticServer } from './lib/browser.mjs';

const skip = skipReason;
if (skip) console.log(`# capture-member browser test skipped: ${skip}`);

const WIDTH = 640;
const HEIGHT = 480;
const MAX_STILL = 256 * 1024;

test('a SnapRTC initiator page gets stills from the built-in capture member', { skip, timeout: 120000 }, async (t) => {
  const netns = makeNetns(t, 'cm');
  t.diagnostic(netns ? `network namespace ${netns} (lo + veth ${NETNS_ADDR})` : 'not root: running in the host network namespace');
  const wrap = netns ? ['ip', 'netns', 'exec', netns] : [];
  const daemon = await startDaemon(t, {
    wrap,
    config: {
      server: { listen: '127.0.0.1:0', rtc_udp_port: 0 },
      camera: { source: 'testsrc', width: WIDTH, height: HEIGHT, fps: 15 },
      signaling: { join_sessions: 'all' },
    },
  });
  const origin = await staticServer(t, netns);
  const context = await launchChromium(t, netns);

  const session = sessionId('device');
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`));
  const dump = async () => {
    const st = await page.evaluate(() => ({ state: window.state, log: window.log })).catch((e) => String(e));
    return `page: ${JSON.stringify(st, null, 1)}\nconsole:\n${consoleLines.join('\n')}\ndaemon:\n${daemon.logText()}`;
  };
  const waitState = async (fn, arg, what, timeout = 30000) => {
    try {
      await page.waitForFunction(fn, arg, { timeout });
    } catch (e) {
      throw new Error(`${what}: ${e.message}\n${await dump()}`);
    }
    const err = await page.evaluate(() => window.state.error);
    assert.equal(err, null, `${what}: ${err}\n${await dump()}`);
  };

  await page.goto(`${origin}/device-initiator.html?hub=${encodeURIComponent(daemon.hub)}&session=${encodeURIComponent(session)}`);
  // No second page: the daemon joins the session and says signalStart.
  await waitState(() => window.state.started || window.state.error, null, 'signalStart from the daemon', 15000);
  await waitState(() => window.state.images.length >= 1 || window.state.error, null, 'a still when the data channel opens', 45000);
  await page.evaluate(() => window.snap());
  await waitState(() => window.state.images.length >= 2 || window.state.error, null, 'a still after "snap"');

  const { images, texts } = await page.evaluate(() => window.state);
  t.diagnostic(`stills: ${images.map((i) => `${i.bytes} bytes ${i.width}x${i.height}`).join(', ')}`);
  assert.deepEqual(texts, [], 'no error replies on the data channel');
  for (const [i, image] of images.slice(0, 2).entries()) {
    assert.deepEqual(image.soi, [0xff, 0xd8, 0xff], `still ${i} is a JPEG (SOI marker)`);
    assert.equal(image.width, WIDTH, `still ${i} width`);
    assert.equal(image.height, HEIGHT, `still ${i} height`);
    assert.ok(image.bytes <= MAX_STILL, `still ${i} is ${image.bytes} bytes, over ${MAX_STILL}`);
  }
  await daemon.waitLog(/joined the session as its capture side/);
});
