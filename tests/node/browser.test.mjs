// Two SnapRTC-style pages in headless Chromium meet through snaprtcd (a pure relay here) and
// send a JPEG over their WebRTC data channel. The pages use the npm browser builds of
// @microsoft/signalr, simple-peer and lz-string exactly as SnapRTC does.
//
// Needs /usr/bin/chromium (Debian package `chromium`): skipped, saying so, only when it is not
// installed. Runs in a network namespace of its own when root (see lib/browser.mjs).

import { test } from 'node:test';
import { startDaemon } from './lib/daemon.mjs';
import { sessionId } from './lib/hub.mjs';
import { NETNS_ADDR, launchChromium, makeNetns, meetAndSendJpeg, skipReason, staticServer } from './lib/browser.mjs';

const skip = skipReason;
if (skip) console.log(`# browser test skipped: ${skip}`);

test('two SnapRTC pages meet through the hub and send a JPEG over the data channel', { skip, timeout: 120000 }, async (t) => {
  const netns = makeNetns(t);
  t.diagnostic(netns ? `network namespace ${netns} (lo + veth ${NETNS_ADDR})` : 'not root: running in the host network namespace');
  const wrap = netns ? ['ip', 'netns', 'exec', netns] : [];
  const daemon = await startDaemon(t, { wrap, config: { signaling: { join_sessions: 'none' } } });
  const origin = await staticServer(t, netns);

  const context = await launchChromium(t, netns);

  await meetAndSendJpeg(t, {
    context,
    origin,
    initiatorHub: daemon.hub,
    captureHub: daemon.hub,
    session: sessionId('browser'),
    netns,
    logs: () => `daemon:\n${daemon.logText()}`,
  });
});
