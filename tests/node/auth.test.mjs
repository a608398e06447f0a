// auth = "token": negotiate and upgrade need the bearer token (header or ?access_token=);
// /health stays open. auth = "none": no token needed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { startDaemon } from './lib/daemon.mjs';
import { connect, signalR, sessionId } from './lib/hub.mjs';
import { negotiate, RawHub, invoke } from './lib/raw.mjs';

const TOKEN = 'test-token-0123456789abcdef';
const tokenConfig = { server: { auth: 'token', auth_token_file: '@dir@/token' } };

async function upgradeStatus(url, headers = {}) {
  const raw = new RawHub(url, { headers });
  try {
    await raw.opened;
    raw.close();
    return 101;
  } catch (e) {
    return e.status ?? e.message;
  }
}

test('token auth: 401 without the token, works with it; /health stays open', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: tokenConfig, files: { token: `${TOKEN}\n` } });
  const bearer = { Authorization: `Bearer ${TOKEN}` };

  assert.equal((await negotiate(daemon)).status, 401, 'negotiate without token');
  assert.equal((await negotiate(daemon, { headers: { Authorization: 'Bearer wrong' } })).status, 401, 'wrong token');
  assert.equal((await negotiate(daemon, { headers: { Authorization: TOKEN } })).status, 401, 'token without Bearer');
  assert.equal((await negotiate(daemon, { query: 'negotiateVersion=1&access_token=wrong' })).status, 401);
  const ok = await negotiate(daemon, { headers: bearer });
  assert.equal(ok.status, 200, 'negotiate with Authorization: Bearer');
  const okQuery = await negotiate(daemon, { query: `negotiateVersion=1&access_token=${encodeURIComponent(TOKEN)}` });
  assert.equal(okQuery.status, 200, 'negotiate with ?access_token=');

  // The upgrade is checked on its own too, negotiated token or not.
  const id = encodeURIComponent(ok.body.connectionToken);
  assert.equal(await upgradeStatus(daemon.wsHub), 401, 'skipNegotiation upgrade without token');
  assert.equal(await upgradeStatus(`${daemon.wsHub}?id=${id}`), 401, 'upgrade with a connection token but no bearer');
  const raw = new RawHub(`${daemon.wsHub}?id=${id}&access_token=${encodeURIComponent(TOKEN)}`);
  t.after(() => raw.close());
  await raw.opened;
  assert.deepEqual(await raw.handshake(), {});
  assert.ok(!('error' in (await invoke(raw, 'Sync', [sessionId('auth'), false]))));
  assert.equal(await upgradeStatus(daemon.wsHub, bearer), 101, 'skipNegotiation upgrade with the header');

  const health = await fetch(`${daemon.base}/health`);
  assert.equal(health.status, 200, '/health needs no token');
});

test('token auth: the official client works with accessTokenFactory and fails without', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: tokenConfig, files: { token: TOKEN } });
  const without = new signalR.HubConnectionBuilder()
    .withUrl(daemon.hub, { transport: signalR.HttpTransportType.WebSockets })
    .configureLogging(signalR.LogLevel.None)
    .build();
  await assert.rejects(without.start(), /401|Unauthorized/i);

  const session = sessionId('auth-official');
  const a = await connect(t, daemon, { accessTokenFactory: () => TOKEN });
  const b = await connect(t, daemon, { accessTokenFactory: () => TOKEN });
  await a.invoke('Sync', session, false);
  await b.invoke('Sync', session, true);
  await a.waitFor('signalStart');
  await a.invoke('SignalCapture', session, 'offer');
  assert.deepEqual(await b.waitFor('signalCapture'), ['offer']);
});

test('token auth: a missing token file is created (mode 0600) and its token works', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: tokenConfig });
  const file = path.join(daemon.dir, 'token');
  const st = await stat(file);
  assert.equal(st.mode & 0o777, 0o600, `mode ${(st.mode & 0o777).toString(8)}`);
  const token = (await readFile(file, 'utf8')).trim();
  assert.ok(token.length >= 16, `generated token ${JSON.stringify(token)} is short`);
  assert.ok(daemon.logs.some((l) => l.includes(file)), 'the log says where the token is');
  assert.equal((await negotiate(daemon)).status, 401);
  assert.equal((await negotiate(daemon, { headers: { Authorization: `Bearer ${token}` } })).status, 200);
});

test('auth none: no token needed, a stray Authorization header is ignored', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { server: { auth: 'none' } } });
  assert.equal((await negotiate(daemon)).status, 200);
  assert.equal((await negotiate(daemon, { headers: { Authorization: 'Bearer whatever' } })).status, 200);
  const conn = await connect(t, daemon);
  assert.equal(await conn.invoke('Sync', sessionId('open'), false), undefined);
  const withToken = await connect(t, daemon, { accessTokenFactory: () => 'ignored' });
  assert.equal(await withToken.invoke('Sync', sessionId('open'), false), undefined);
});
