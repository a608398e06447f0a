// Two SnapRTC pages in headless Chromium, each on a different instance of the fleet, meet
// through the Redis backplane and send a JPEG over their WebRTC data channel: the relay
// browser test of tests/node (the same pages and checks, tests/node/lib/browser.mjs), with
// the initiator on instance 1 and the capture side on instance 2. When root, Redis, the
// instances, the static server and Chromium all run in a network namespace of their own.

import { test } from 'node:test';
import { NETNS_ADDR, launchChromium, makeNetns, meetAndSendJpeg, skipReason as browserSkip, staticServer } from '../node/lib/browser.mjs';
import { sessionId } from '../node/lib/hub.mjs';
import { skipReason, startFleet } from './lib/fleet.mjs';

const skip = skipReason() || browserSkip;
if (skip) console.log(`# browser test skipped: ${skip}`);

test('two SnapRTC pages on two instances meet and send a JPEG over the data channel', { skip, timeout: 120000 }, async (t) => {
  const netns = makeNetns(t, 'scale');
  t.diagnostic(netns ? `network namespace ${netns} (lo + veth ${NETNS_ADDR})` : 'not root: running in the host network namespace');
  const wrap = netns ? ['ip', 'netns', 'exec', netns] : [];
  const fleet = await startFleet(t, { n: 2, wrap });
  const [a, b] = fleet.instances;
  const origin = await staticServer(t, netns);
  const context = await launchChromium(t, netns);
  await meetAndSendJpeg(t, {
    context,
    origin,
    initiatorHub: a.hub,
    captureHub: b.hub,
    session: sessionId('browser'),
    netns,
    logs: () => `instance 1:\n${a.logText()}\ninstance 2:\n${b.logText()}`,
  });
});
