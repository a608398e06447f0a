// GET /health: 200, a timestamp (as the seed) and the daemon's version.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { startDaemon, daemonBin } from './lib/daemon.mjs';

test('/health is 200 with a timestamp and the version', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const before = Date.now();
  const res = await fetch(`${daemon.base}/health`);
  const after = Date.now();
  assert.equal(res.status, 200);
  const body = await res.text();
  t.diagnostic(`/health body: ${JSON.stringify(body)}`);
  // `snaprtcd --version` prints e.g. "snaprtcd 0.1.0".
  const version = execFileSync(daemonBin(), ['--version'], { encoding: 'utf8' }).trim().split(/\s+/).pop();
  assert.ok(body.includes(version), `body mentions version ${version}`);
  // A timestamp close to now: an RFC 3339 / ISO 8601 date-time, or Unix seconds/milliseconds.
  const iso = body.match(/\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?/);
  let when;
  if (iso) {
    when = Date.parse(iso[0].replace(' ', 'T') + (iso[2] ? '' : 'Z'));
  } else {
    const n = body.match(/\b\d{10,13}\b/);
    assert.ok(n, `no timestamp in ${JSON.stringify(body)}`);
    when = n[0].length === 13 ? Number(n[0]) : Number(n[0]) * 1000;
  }
  assert.ok(when >= before - 2000 && when <= after + 2000, `timestamp ${new Date(when).toISOString()} is not now`);
});

test('/health needs no token when auth is on, and HEAD/GET only', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t, {
    config: { server: { auth: 'token', auth_token_file: '@dir@/token' } },
    files: { token: 'sekrit-sekrit-sekrit' },
  });
  assert.equal((await fetch(`${daemon.base}/health`)).status, 200);
  const post = await fetch(`${daemon.base}/health`, { method: 'POST' });
  assert.ok(post.status === 405 || post.status === 404, `POST /health: ${post.status}`);
});
