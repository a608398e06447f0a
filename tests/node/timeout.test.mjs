// A client that sends nothing for `client_timeout` is dropped, even though the server keeps
// pinging it; one that never shakes hands is dropped after `handshake_timeout`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';
import { openRaw, openRawReady } from './lib/raw.mjs';

const config = { signaling: { keepalive: '200ms', client_timeout: '1s', handshake_timeout: '700ms' } };

test('a silent client is dropped after client_timeout', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRawReady(t, daemon);
  const start = performance.now();
  const info = await raw.waitClosed(5000);
  const elapsed = performance.now() - start;
  t.diagnostic(`dropped after ${elapsed.toFixed(0)} ms (close ${JSON.stringify(info)}, ${raw.pings.length} pings)`);
  assert.ok(elapsed > 800, `dropped too early: ${elapsed} ms`);
  assert.ok(elapsed < 2500, `dropped too late: ${elapsed} ms`);
  assert.ok(raw.pings.length >= 2, 'the server pinged it meanwhile');
});

test('a client that never sends the handshake is dropped after handshake_timeout', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRaw(t, daemon);
  const start = performance.now();
  await raw.waitClosed(5000);
  const elapsed = performance.now() - start;
  t.diagnostic(`dropped after ${elapsed.toFixed(0)} ms`);
  assert.ok(elapsed > 500 && elapsed < 2500, `elapsed ${elapsed} ms, handshake_timeout 700 ms`);
});
