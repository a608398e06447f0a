// Garbage on a hub socket closes that socket only; the daemon keeps serving everyone else.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';
import { openRaw, openRawReady, invoke, RS } from './lib/raw.mjs';

/** Waits for the socket to close; every record before that may only be a Close (type 7). */
async function assertDropped(raw, what) {
  const info = await raw.waitClosed(5000).catch((e) => {
    throw new Error(`${what}: connection was not closed (${e.message})`);
  });
  for (const rec of raw.records) {
    assert.equal(rec.type, 7, `${what}: only a Close record may come before the close, got ${JSON.stringify(rec)}`);
  }
  return info;
}

test('garbage after the handshake closes that connection; the daemon keeps serving', { timeout: 60000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('garbage');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  await a.invoke('Sync', session, false);
  await b.invoke('Sync', session, true);
  await a.waitFor('signalStart');

  const cases = [
    ['invalid JSON', (r) => r.send(`{not json${RS}`)],
    ['truncated JSON', (r) => r.send(`{"type":1,"target":"Sync","arguments":[${RS}`)],
    ['a JSON array', (r) => r.send(`[1,2,3]${RS}`)],
    ['a JSON string', (r) => r.send(`"hello"${RS}`)],
    ['a binary frame', (r) => r.sendBinary(Buffer.from([0x00, 0xff, 0x1e, 0x80]))],
    ['an unknown message type', (r) => r.send({ type: 99 })],
    ['a message type as a string', (r) => r.send({ type: '1', target: 'Sync', arguments: ['x', false] })],
    ['an Invocation without a target', (r) => r.send({ type: 1, invocationId: '1', arguments: [] })],
    ['arguments that are not an array', (r) => r.send({ type: 1, invocationId: '1', target: 'Sync', arguments: 'x' })],
    ['invalid UTF-8 in a text frame', (r) => r.ws._socket.write(Buffer.from([0x81, 0x84, 0, 0, 0, 0, 0xc3, 0x28, 0x1e, 0x20]))],
    ['a second handshake', (r) => r.send({ protocol: 'json', version: 1 })],
  ];
  for (const [what, inject] of cases) {
    const raw = await openRawReady(t, daemon);
    inject(raw);
    await assertDropped(raw, what);
    // Everyone else is fine: a round trip in the existing session.
    const after = b.messages.length;
    await a.invoke('SignalCapture', session, `after ${what}`);
    assert.deepEqual(await b.waitFor('signalCapture', { after }), [`after ${what}`], `after ${what}`);
  }
  const health = await fetch(`${daemon.base}/health`);
  assert.equal(health.status, 200);
});

test('garbage in the same frame right after a good handshake', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRaw(t, daemon);
  raw.send(`{"protocol":"json","version":1}${RS}garbage${RS}`);
  const first = await raw.next();
  // The handshake is answered (or refused) before the garbage is seen; then the socket closes.
  assert.ok(first === null || typeof first === 'object', `got ${JSON.stringify(first)}`);
  await raw.waitClosed();
});

test('garbage before the handshake: the socket is closed', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const cases = [
    ['not JSON', (r) => r.send(`hello${RS}`)],
    ['JSON without protocol', (r) => r.send({ version: 1 })],
    ['an Invocation instead of a handshake', (r) => r.send({ type: 1, target: 'Sync', arguments: ['s', false] })],
    ['a binary frame', (r) => r.sendBinary(Buffer.from('{"protocol":"json","version":1}\x1e'))],
  ];
  for (const [what, inject] of cases) {
    const raw = await openRaw(t, daemon);
    inject(raw);
    await raw.waitClosed(5000).catch((e) => {
      throw new Error(`${what}: not closed (${e.message})`);
    });
    for (const rec of raw.records) {
      assert.ok(typeof rec.error === 'string' || rec.type === 7, `${what}: unexpected ${JSON.stringify(rec)}`);
    }
  }
  // Still serving.
  const raw = await openRawReady(t, daemon);
  const ok = await invoke(raw, 'Sync', [sessionId('still'), false]);
  assert.ok(!('error' in ok));
});

test('a handshake for any protocol but json gets {"error":...} and is closed', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  for (const protocol of ['messagepack', 'blazorpack', 'JSONX', '']) {
    const raw = await openRaw(t, daemon);
    const answer = await raw.handshake(protocol, 1);
    assert.ok(answer && typeof answer.error === 'string', `${protocol}: got ${JSON.stringify(answer)}`);
    await raw.waitClosed();
  }
});

test('a client Close record ends the connection cleanly', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRawReady(t, daemon);
  raw.send({ type: 7 });
  await raw.waitClosed();
});

test('a client Ping gets no reply', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRawReady(t, daemon, { skipPings: false });
  raw.send({ type: 6 });
  raw.send({ type: 1, invocationId: 'p', target: 'Sync', arguments: [sessionId('ping'), false] });
  const next = await raw.next();
  assert.equal(next.invocationId, 'p', `got ${JSON.stringify(next)}`);
});
