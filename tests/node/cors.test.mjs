// CORS: preflights from listed origins are answered with the headers the SignalR browser client
// needs; unlisted origins get no CORS headers at all.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon } from './lib/daemon.mjs';

const ALLOWED = 'https://snaprtc.example';
const REQ_HEADERS = 'x-requested-with,x-signalr-user-agent,authorization,content-type';

function preflight(daemon, path, origin) {
  return fetch(`${daemon.base}${path}`, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': REQ_HEADERS,
    },
  });
}

function corsHeaders(res) {
  return [...res.headers.keys()].filter((k) => k.startsWith('access-control-'));
}

test('listed origin: preflight allowed with the SignalR headers, and the real request too', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { server: { cors_origins: [ALLOWED, 'http://localhost:5173'] } } });
  const path = `${daemon.hubPath}/negotiate?negotiateVersion=1`;
  const res = await preflight(daemon, path, ALLOWED);
  assert.ok(res.status === 200 || res.status === 204, `preflight status ${res.status}`);
  assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED);
  const allowHeaders = (res.headers.get('access-control-allow-headers') || '').toLowerCase();
  for (const h of ['x-requested-with', 'x-signalr-user-agent', 'authorization']) {
    assert.ok(allowHeaders === '*' || allowHeaders.split(/\s*,\s*/).includes(h), `${h} allowed (got "${allowHeaders}")`);
  }
  const allowMethods = (res.headers.get('access-control-allow-methods') || '').toUpperCase();
  assert.ok(allowMethods.includes('POST') || allowMethods === '*', `POST allowed (got "${allowMethods}")`);
  // SignalR's browser client sends credentials (withCredentials defaults to true).
  assert.equal(res.headers.get('access-control-allow-credentials'), 'true');

  const real = await fetch(`${daemon.base}${path}`, { method: 'POST', headers: { Origin: ALLOWED } });
  assert.equal(real.status, 200);
  assert.equal(real.headers.get('access-control-allow-origin'), ALLOWED);

  const health = await fetch(`${daemon.base}/health`, { headers: { Origin: 'http://localhost:5173' } });
  assert.equal(health.headers.get('access-control-allow-origin'), 'http://localhost:5173');
});

test('unlisted origin: no CORS headers on the preflight or the request', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { server: { cors_origins: [ALLOWED] } } });
  const path = `${daemon.hubPath}/negotiate?negotiateVersion=1`;
  for (const origin of ['https://evil.example', `${ALLOWED}.evil`, 'null']) {
    const res = await preflight(daemon, path, origin);
    assert.deepEqual(corsHeaders(res), [], `${origin}: preflight carries no CORS headers`);
    const real = await fetch(`${daemon.base}${path}`, { method: 'POST', headers: { Origin: origin } });
    assert.deepEqual(corsHeaders(real), [], `${origin}: request carries no CORS headers`);
  }
});

test('"*" allows any origin', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, { config: { server: { cors_origins: ['*'] } } });
  const res = await preflight(daemon, `${daemon.hubPath}/negotiate?negotiateVersion=1`, 'https://anywhere.example');
  assert.ok(res.status === 200 || res.status === 204, `preflight status ${res.status}`);
  // The SignalR browser client sends credentials (withCredentials defaults to true), and
  // browsers refuse "Access-Control-Allow-Origin: *" on a credentialed request: the origin has to
  // be echoed, with Access-Control-Allow-Credentials: true.
  assert.equal(res.headers.get('access-control-allow-origin'), 'https://anywhere.example');
  assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
});
