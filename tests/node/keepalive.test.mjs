// The server sends a Ping record after `keepalive` with nothing else sent; a client that keeps talking stays.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, withTimeout } from './lib/daemon.mjs';
import { connect, signalR, sessionId } from './lib/hub.mjs';
import { openRawReady } from './lib/raw.mjs';
import WebSocket from 'ws';

const config = { signaling: { keepalive: '200ms', client_timeout: '1s' } };

test('server Pings arrive at the configured interval', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  const raw = await openRawReady(t, daemon);
  // Keep our side alive (client_timeout is 1 s) while we count the server's pings.
  const timer = setInterval(() => raw.send({ type: 6 }), 150);
  t.after(() => clearInterval(timer));
  const want = 8;
  await withTimeout(
    new Promise((resolve) => {
      const poll = setInterval(() => {
        if (raw.pings.length >= want || raw.closeInfo) {
          clearInterval(poll);
          resolve();
        }
      }, 20);
    }),
    5000,
    `${want} server pings (got ${raw.pings.length})`,
  );
  assert.equal(raw.closeInfo, undefined, 'connection stayed open');
  const gaps = raw.pings.slice(1).map((at, i) => at - raw.pings[i]).sort((x, y) => x - y);
  const median = gaps[Math.floor(gaps.length / 2)];
  t.diagnostic(`ping gaps ms: ${gaps.map((g) => g.toFixed(0)).join(' ')}`);
  assert.ok(median > 120 && median < 350, `median ping interval ${median} ms, configured 200 ms`);
  // Every ping is the bare record {"type":6}.
  for (const f of raw.frames) {
    for (const rec of f.text.split('\x1e').filter(Boolean)) {
      const m = JSON.parse(rec);
      if (m.type === 6) assert.deepEqual(m, { type: 6 });
    }
  }
});

test('an official client with a short keep-alive stays connected well past client_timeout', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config });
  // Count the server's Ping records as the official client's own socket receives them: the
  // test waits for that event (15 pings, three client_timeouts of idle hub traffic), not for a
  // stretch of wall-clock time.
  const pings = { count: 0 };
  class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        pings.count += String(e.data).split('\x1e').filter((r) => r && JSON.parse(r).type === 6).length;
      });
    }
  }
  const conn = new signalR.HubConnectionBuilder()
    .withUrl(daemon.hub, { transport: signalR.HttpTransportType.WebSockets, WebSocket: CountingWebSocket })
    .withKeepAliveInterval(250)
    .withServerTimeout(2000)
    .configureLogging(signalR.LogLevel.None)
    .build();
  t.after(() => conn.stop());
  let closed = null;
  const closedEvent = new Promise((resolve) => conn.onclose((e) => {
    closed = e ?? 'closed';
    resolve();
  }));
  await conn.start();
  const want = 15;
  await withTimeout(
    Promise.race([
      closedEvent,
      new Promise((resolve) => {
        const poll = setInterval(() => pings.count >= want && (clearInterval(poll), resolve()), 20);
      }),
    ]),
    10000,
    `${want} server pings (got ${pings.count})`,
  );
  assert.equal(closed, null, `closed after ${pings.count} server pings: ${closed}`);
  assert.equal(conn.state, 'Connected');
  assert.equal(await conn.invoke('Sync', sessionId('ka'), false), undefined);
});
