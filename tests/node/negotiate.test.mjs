// POST {hub}/negotiate hands out unguessable single-use connection tokens; the WebSocket
// upgrade needs a live one (or none at all, for skipNegotiation).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
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

test('negotiate answers the v1 shape with WebSockets only and fresh tokens', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const one = await negotiate(daemon);
  assert.equal(one.status, 200);
  assert.match(one.headers.get('content-type') || '', /application\/json/);
  const b = one.body;
  assert.equal(b.negotiateVersion, 1);
  assert.equal(typeof b.connectionId, 'string');
  assert.equal(typeof b.connectionToken, 'string');
  assert.notEqual(b.connectionId, b.connectionToken);
  // >= 128 random bits: at least 22 base64 characters (or 32 hex).
  assert.ok(b.connectionToken.length >= 22, `token ${b.connectionToken} is short`);
  assert.deepEqual(
    b.availableTransports.map((x) => x.transport),
    ['WebSockets'],
  );
  assert.ok(b.availableTransports[0].transferFormats.includes('Text'));
  const two = await negotiate(daemon);
  assert.notEqual(two.body.connectionToken, b.connectionToken);
  assert.notEqual(two.body.connectionId, b.connectionId);
});

test('negotiate with any method but POST is 405', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  for (const method of ['GET', 'PUT', 'DELETE', 'PATCH']) {
    const r = await negotiate(daemon, { method });
    assert.equal(r.status, 405, `${method} negotiate`);
  }
});

test('a connection token works once; unknown tokens are 404', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const { body } = await negotiate(daemon);
  const url = `${daemon.wsHub}?id=${encodeURIComponent(body.connectionToken)}`;
  const first = new RawHub(url);
  t.after(() => first.close());
  await first.opened;
  const hs = await first.handshake();
  assert.deepEqual(hs, {});
  assert.equal(await upgradeStatus(url), 404, 'reused token');
  assert.equal(await upgradeStatus(`${daemon.wsHub}?id=nosuchtoken`), 404, 'unknown token');
  assert.equal(await upgradeStatus(`${daemon.wsHub}?id=${encodeURIComponent(body.connectionId)}`), 404, 'connectionId is not the token');
  assert.equal(await upgradeStatus(`${daemon.wsHub}?id=`), 404, 'empty token');
  // The first connection is unaffected.
  const c = await invoke(first, 'Sync', [sessionId('tok'), false]);
  assert.ok(!('error' in c));
});

test('an unused token expires after handshake_timeout', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { signaling: { handshake_timeout: '300ms' } } });
  const { body } = await negotiate(daemon);
  // A timing property: wait past the expiry, then try it.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(await upgradeStatus(`${daemon.wsHub}?id=${encodeURIComponent(body.connectionToken)}`), 404);
});

test('skipNegotiation: the upgrade without id is accepted (raw and official client)', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const raw = await openRawReady(t, daemon, { skipNegotiation: true });
  const c = await invoke(raw, 'Sync', [sessionId('skip'), false]);
  assert.ok(!('error' in c));
  const conn = await connect(t, daemon, { skipNegotiation: true });
  assert.equal(await conn.invoke('Sync', sessionId('skip'), false), undefined);
});

test('a plain GET of the hub without upgrade is not a WebSocket', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const r = await fetch(daemon.hub);
  assert.equal(r.status, 400);
  assert.match(await r.text(), /speaks WebSockets only/);
});
