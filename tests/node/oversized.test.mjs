// A record larger than max_message_bytes closes that connection (with a Close record that
// carries an error); everyone else carries on.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, withTimeout } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';
import { openRawReady, RS } from './lib/raw.mjs';

const LIMIT = 2048;
const config = { signaling: { max_message_bytes: LIMIT } };

test('official client: an oversized invoke closes that connection with an error only', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const session = sessionId('big');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  const big = await connect(t, daemon);
  await a.invoke('Sync', session, false);
  await b.invoke('Sync', session, true);
  await big.invoke('Sync', session, false);
  await a.waitFor('signalStart');

  // Under the limit: relayed.
  const fits = 'f'.repeat(LIMIT - 200);
  await a.invoke('SignalCapture', session, fits);
  assert.deepEqual(await b.waitFor('signalCapture'), [fits]);

  // Over it: that connection is closed, with an error.
  const sent = big.invoke('SignalCapture', session, 'x'.repeat(LIMIT * 2)).then(
    () => 'resolved',
    (e) => `rejected: ${e.message}`,
  );
  const closeErr = await withTimeout(big.closed, 5000, 'the oversized connection to close');
  assert.ok(closeErr instanceof Error, `closed with an error, got ${closeErr}`);
  assert.match(await sent, /^rejected/);

  // The others are unaffected and did not get the oversized payload.
  const after = b.messages.length;
  await a.invoke('SignalCapture', session, 'still-here');
  assert.deepEqual(await b.waitFor('signalCapture', { after }), ['still-here']);
  assert.ok(b.messages.every((m) => m[1] === undefined || m[1].length < LIMIT));
  await b.invoke('SignalInitiator', session, 'answer');
  assert.deepEqual(await a.waitFor('signalInitiator'), ['answer']);
});

test('raw client: Close record with an error, then the socket closes', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRawReady(t, daemon);
  raw.send({ type: 1, target: 'SignalCapture', arguments: ['s', 'y'.repeat(LIMIT * 2)] });
  const close = await raw.next();
  assert.equal(close?.type, 7, `expected a Close record, got ${JSON.stringify(close)}`);
  assert.equal(typeof close.error, 'string');
  await raw.waitClosed();
});

test('raw client: a record split over several frames is limited as a whole', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRawReady(t, daemon);
  const piece = 'z'.repeat(LIMIT / 2);
  // No separator ever arrives: the daemon must not buffer without bound.
  raw.send(`{"type":1,"target":"SignalCapture","arguments":["s","${piece}`);
  raw.send(piece);
  raw.send(piece);
  raw.send(piece);
  const info = await raw.waitClosed();
  assert.ok(info, 'connection closed');
});

test('raw client: a record split over frames under the limit is fine', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRawReady(t, daemon);
  const peer = await openRawReady(t, daemon);
  const session = sessionId('split');
  raw.send({ type: 1, invocationId: '1', target: 'Sync', arguments: [session, false] });
  assert.equal((await raw.next()).invocationId, '1');
  peer.send({ type: 1, invocationId: '1', target: 'Sync', arguments: [session, false] });
  assert.equal((await peer.next()).invocationId, '1');
  const rec = JSON.stringify({ type: 1, target: 'SignalCapture', arguments: [session, 'split-payload'] }) + RS;
  raw.send(rec.slice(0, 10));
  raw.send(rec.slice(10, 30));
  raw.send(rec.slice(30));
  const got = await peer.next();
  assert.equal(got.type, 1);
  assert.equal(got.target.toLowerCase(), 'signalcapture');
  assert.deepEqual(got.arguments, ['split-payload']);
});
