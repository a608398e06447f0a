// `invoke` always gets a Completion: an error for an unknown method, wrong arguments or a bad
// session id, and the connection stays usable; `send` never gets a reply.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';
import { openRawReady, invoke } from './lib/raw.mjs';

test('official client: errors reject the invoke promise, the connection stays usable', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const conn = await connect(t, daemon);
  const peer = await connect(t, daemon);
  const session = sessionId('err');

  const bad = [
    ['unknown method', 'NoSuchMethod', [session]],
    ['Sync without arguments', 'Sync', []],
    ['Sync with one argument', 'Sync', [session]],
    ['Sync with too many arguments', 'Sync', [session, true, 'extra']],
    ['Sync with a number as session', 'Sync', [123, false]],
    ['Sync with a string as ready', 'Sync', [session, 'yes']],
    ['Sync with null session', 'Sync', [null, true]],
    ['SignalCapture with a number payload', 'SignalCapture', [session, 42]],
    ['SignalCapture with an object payload', 'SignalCapture', [session, { type: 'offer' }]],
    ['SignalInitiator with a missing payload', 'SignalInitiator', [session]],
    ['empty session id', 'Sync', ['', false]],
    ['129-character session id', 'Sync', ['a'.repeat(129), false]],
    ['session id with a space', 'Sync', ['a b', false]],
    ['session id with a slash', 'Sync', ['a/b', false]],
    ['session id with a non-ASCII letter', 'Sync', ['caf\u00e9', false]],
    ['SignalCapture to an empty session id', 'SignalCapture', ['', 'payload']],
  ];
  for (const [what, method, args] of bad) {
    await assert.rejects(conn.invoke(method, ...args), (err) => {
      assert.ok(err instanceof Error, `${what}: rejected with an Error`);
      assert.ok(err.message.length > 0, `${what}: the error says something`);
      return true;
    }, `${what} must be rejected`);
  }

  // Still usable, and the good edge cases of the session-id rule are accepted.
  const edge = ['a', 'A'.repeat(128), 'Az09_-'];
  for (const id of edge) {
    assert.equal(await conn.invoke('Sync', id, false), undefined, `session id ${JSON.stringify(id)} accepted`);
  }
  await conn.invoke('Sync', session, false);
  await peer.invoke('Sync', session, true);
  await conn.waitFor('signalStart');
  assert.equal(conn.state, 'Connected');
});

test('raw client: the error Completion names the invocation and carries an error string', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRawReady(t, daemon);
  const c = await invoke(raw, 'NoSuchMethod', ['x']);
  assert.equal(c.type, 3);
  assert.equal(typeof c.error, 'string');
  assert.ok(!('result' in c), 'an error Completion has no result');
  const ok = await invoke(raw, 'Sync', [sessionId('raw'), false]);
  assert.equal(ok.type, 3);
  assert.ok(!('error' in ok), `Sync succeeded: ${JSON.stringify(ok)}`);
});

test('send of an unknown method or with bad arguments gets no reply and the connection stays usable', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRawReady(t, daemon);
  raw.send({ type: 1, target: 'NoSuchMethod', arguments: ['x'] });
  raw.send({ type: 1, target: 'Sync', arguments: [1, 2, 3] });
  raw.send({ type: 1, target: 'Sync', arguments: ['a b', false] });
  // The next record must be the Completion of this invoke, not a reply to the sends.
  raw.send({ type: 1, invocationId: 'after-sends', target: 'Sync', arguments: [sessionId('send'), false] });
  const next = await raw.next();
  assert.equal(next.type, 3, `got ${JSON.stringify(next)}`);
  assert.equal(next.invocationId, 'after-sends');
  assert.ok(!('error' in next));
});

test('official client: send of an unknown method does not break the connection', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const conn = await connect(t, daemon);
  await conn.send('NoSuchMethod', 'x');
  assert.equal(await conn.invoke('Sync', sessionId('send2'), false), undefined);
  assert.equal(conn.state, 'Connected');
});
