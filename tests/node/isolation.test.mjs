// Messages of one session never reach members of another.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';

test('two sessions side by side see only their own messages', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const s1 = sessionId('iso-a');
  const s2 = sessionId('iso-b');
  const a1 = await connect(t, daemon);
  const c1 = await connect(t, daemon);
  const a2 = await connect(t, daemon);
  const c2 = await connect(t, daemon);
  const loner = await connect(t, daemon); // connected, in no session

  await a1.invoke('Sync', s1, false);
  await a2.invoke('Sync', s2, false);
  await c1.invoke('Sync', s1, true);
  await a1.waitFor('signalStart');
  await c2.invoke('Sync', s2, true);
  await a2.waitFor('signalStart');

  await a1.invoke('SignalCapture', s1, 'offer-1');
  await a2.invoke('SignalCapture', s2, 'offer-2');
  assert.deepEqual(await c1.waitFor('signalCapture'), ['offer-1']);
  assert.deepEqual(await c2.waitFor('signalCapture'), ['offer-2']);
  await c1.invoke('SignalInitiator', s1, 'answer-1');
  await c2.invoke('SignalInitiator', s2, 'answer-2');
  assert.deepEqual(await a1.waitFor('signalInitiator'), ['answer-1']);
  assert.deepEqual(await a2.waitFor('signalInitiator'), ['answer-2']);

  // Barrier: one more round in each session; anything leaked from the other session would have
  // been queued to these connections before these messages.
  for (const [a, c, s] of [[a1, c1, s1], [a2, c2, s2]]) {
    const after = c.messages.length;
    await a.invoke('SignalCapture', s, `barrier-${s}`);
    await c.waitFor('signalCapture', { after });
  }
  assert.deepEqual(a1.messages, [['signalstart'], ['signalinitiator', 'answer-1']]);
  assert.deepEqual(a2.messages, [['signalstart'], ['signalinitiator', 'answer-2']]);
  assert.deepEqual(c1.messages, [['signalcapture', 'offer-1'], ['signalcapture', `barrier-${s1}`]]);
  assert.deepEqual(c2.messages, [['signalcapture', 'offer-2'], ['signalcapture', `barrier-${s2}`]]);

  // The loner joins s1 last; it got nothing so far, and from now on gets s1's traffic only.
  // s1's capture side (c1) is ready and waiting, so snaprtcd starts the loner at once
  // (start-on-join; the original hub would leave it waiting for the next Sync(…, true)).
  await loner.invoke('Sync', s1, false);
  await a2.invoke('SignalCapture', s2, 'not-for-loner');
  await a1.invoke('SignalCapture', s1, 'for-loner');
  assert.deepEqual(await loner.waitFor('signalCapture'), ['for-loner']);
  assert.deepEqual(loner.messages, [['signalstart'], ['signalcapture', 'for-loner']]);
});

test('signalling a session one has not joined leaks to no other session', { timeout: 30000 }, async (t) => {
  // The seed relays to the group whether or not the caller is in it; snaprtcd may refuse
  // instead. Either is fine; record which, and assert that nothing leaks to other sessions.
  const daemon = await startDaemon(t);
  const s1 = sessionId('iso-c');
  const s2 = sessionId('iso-d');
  const member = await connect(t, daemon);
  const other = await connect(t, daemon);
  const other2 = await connect(t, daemon);
  const outsider = await connect(t, daemon);
  await member.invoke('Sync', s1, false);
  await other.invoke('Sync', s2, false);
  await other2.invoke('Sync', s2, false);
  let outcome;
  try {
    await outsider.invoke('SignalCapture', s1, 'from-outside');
    outcome = 'accepted';
  } catch (e) {
    outcome = `refused: ${e.message}`;
  }
  t.diagnostic(`SignalCapture to a session the caller has not joined: ${outcome}`);
  await other2.invoke('SignalCapture', s2, 'barrier');
  await other.waitFor('signalCapture');
  assert.deepEqual(other.messages, [['signalcapture', 'barrier']]);
  assert.deepEqual(outsider.messages, []);
});
