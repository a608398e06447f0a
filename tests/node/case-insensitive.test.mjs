// Hub method names match case-insensitively, as in ASP.NET SignalR.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';

test('sync / SYNC / signalcapture / SIGNALINITIATOR all work', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('case');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  await a.invoke('sync', session, false);
  await b.invoke('SYNC', session, true);
  await a.waitFor('signalStart');
  await a.invoke('signalcapture', session, 'o1');
  assert.deepEqual(await b.waitFor('signalCapture'), ['o1']);
  await a.invoke('sIgNaLcApTuRe', session, 'o2');
  assert.deepEqual(await b.waitFor('signalCapture', { after: 1 }), ['o2']);
  await b.invoke('SIGNALINITIATOR', session, 'a1');
  assert.deepEqual(await a.waitFor('signalInitiator'), ['a1']);
  await b.send('signalinitiator', session, 'a2');
  assert.deepEqual(await a.waitFor('signalInitiator', { after: 2 }), ['a2']);
});
