// max_connections (503 at negotiate and upgrade), max_members_per_session and max_sessions
// (error Completion).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, withTimeout } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';
import { negotiate, RawHub, openRawReady, invoke } from './lib/raw.mjs';

async function upgradeStatus(url) {
  const raw = new RawHub(url);
  try {
    await raw.opened;
    raw.close();
    return 101;
  } catch (e) {
    return e.status ?? e.message;
  }
}

test('max_connections: the next negotiate and upgrade get 503, a freed slot is reusable', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { signaling: { max_connections: 3 } } });
  const a = await openRawReady(t, daemon);
  const b = await openRawReady(t, daemon);
  // A negotiated, not yet used token holds a slot too.
  const pending = await negotiate(daemon);
  assert.equal(pending.status, 200);

  const over = await negotiate(daemon);
  assert.equal(over.status, 503, 'negotiate over the limit');
  assert.equal(await upgradeStatus(daemon.wsHub), 503, 'skipNegotiation upgrade over the limit');

  // Using the pending token is fine: it already holds its slot.
  const c = new RawHub(`${daemon.wsHub}?id=${encodeURIComponent(pending.body.connectionToken)}`);
  t.after(() => c.close());
  await c.opened;
  assert.deepEqual(await c.handshake(), {});
  assert.equal((await negotiate(daemon)).status, 503, 'still full');

  // Free one; the daemon notices the close and a new negotiate succeeds.
  a.send({ type: 7 });
  await a.waitClosed();
  await withTimeout((async () => {
    for (;;) {
      const r = await negotiate(daemon);
      if (r.status === 200) return;
      assert.equal(r.status, 503);
      await new Promise((resolve) => setImmediate(resolve));
    }
  })(), 5000, 'a slot to free up');
  assert.ok(!('error' in (await invoke(b, 'Sync', [sessionId('lim'), false]))));
});

test('max_members_per_session: one member too many gets an error Completion', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { signaling: { max_members_per_session: 2 } } });
  const session = sessionId('full');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  const c = await connect(t, daemon);
  await a.invoke('Sync', session, false);
  await b.invoke('Sync', session, true);
  await assert.rejects(c.invoke('Sync', session, false));
  // The session works for its members, and the refused one did not join.
  await a.invoke('SignalCapture', session, 'offer');
  assert.deepEqual(await b.waitFor('signalCapture'), ['offer']);
  assert.equal(await c.invoke('Sync', sessionId('other'), false), undefined, 'c can use another session');
  // When a member leaves, there is room again.
  await b.stop();
  const d = await connect(t, daemon);
  await withTimeout((async () => {
    for (;;) {
      try {
        return await d.invoke('Sync', session, true);
      } catch {
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  })(), 5000, 'room in the session after a member left');
  await a.waitFor('signalStart', { after: 1 });
});

test('max_sessions: one session too many gets an error Completion', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { signaling: { max_sessions: 2 } } });
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  const c = await connect(t, daemon);
  await a.invoke('Sync', sessionId('s1'), false);
  await b.invoke('Sync', sessionId('s2'), false);
  await assert.rejects(c.invoke('Sync', sessionId('s3'), false));
  // Empty sessions are freed: when a leaves, its session goes and there is room.
  await a.stop();
  await withTimeout((async () => {
    for (;;) {
      try {
        return await c.invoke('Sync', sessionId('s4'), false);
      } catch {
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  })(), 5000, 'a freed session slot');
});
