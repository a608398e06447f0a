// Three snaprtcd relays sharing sessions through Redis (issue 12): the SnapRTC exchange across
// instances with the official @microsoft/signalr client, directly and through haproxy with no
// stickiness; a connection token from one instance's negotiate used on another; and
// max_members_per_session held across the fleet.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { daemonBin, repoRoot } from '../node/lib/daemon.mjs';
import { negotiate, RawHub, invoke } from '../node/lib/raw.mjs';
import { HAPROXY_CFG, eventually, health, metric, skipReason, startFleet, startInstance } from './lib/fleet.mjs';
import { client, exchange, pool, sessionId } from './lib/exchange.mjs';

const skip = skipReason();
if (skip) console.log(`# scale tests skipped: ${skip}`);

const PAIRS = 100;

/** Status of a WebSocket upgrade: 101, or the HTTP status that refused it. */
async function upgradeStatus(t, url) {
  const raw = new RawHub(url);
  t.after(() => raw.close());
  try {
    await raw.opened;
    return { status: 101, raw };
  } catch (e) {
    return { status: e.status ?? e.message };
  }
}

test(`${PAIRS} pairs, initiator and capture on different instances, complete the exchange byte for byte`, { skip, timeout: 60000 }, async (t) => {
  const fleet = await startFleet(t);
  const [a] = fleet.instances;
  assert.equal((await health(a)).role, 'relay');
  const started = performance.now();
  await pool(PAIRS, 25, async (i) => {
    const [ini, cap] = [fleet.instances[i % 3], fleet.instances[(i + 1) % 3]];
    // skipNegotiation: straight to that instance's WebSocket (negotiate is tested below).
    const initiator = await client(t, ini.hub, { skipNegotiation: true });
    const capture = await client(t, cap.hub, { skipNegotiation: true });
    await exchange(initiator, capture, sessionId(`cross${i}`), `pair${i}`);
    await Promise.all([initiator.stop(), capture.stop()]);
  });
  t.diagnostic(`${PAIRS} cross-instance pairs in ${Math.round(performance.now() - started)} ms`);
  // What went over Redis: each instance published and received.
  for (const d of fleet.instances) {
    assert.ok((await metric(d, 'snaprtcd_backplane_published_total')) > 0, 'each instance published');
    assert.ok((await metric(d, 'snaprtcd_backplane_received_total')) > 0, 'each instance received');
    assert.equal(await metric(d, 'snaprtcd_backplane_dropped_total'), 0, 'nothing dropped');
  }
});

test(`${PAIRS} pairs through haproxy (round-robin, no stickiness), with negotiation, complete the exchange`, { skip, timeout: 60000 }, async (t) => {
  const fleet = await startFleet(t, { haproxy: true });
  const { lb } = fleet;
  const started = performance.now();
  const conns = [];
  await pool(PAIRS, 25, async (i) => {
    // Negotiate and WebSocket each go to the next instance in turn: the token crosses instances.
    const initiator = await client(t, lb.hub);
    const capture = await client(t, lb.hub);
    conns.push(initiator, capture);
    await exchange(initiator, capture, sessionId(`lb${i}`), `lb${i}`);
  });
  t.diagnostic(`${PAIRS} pairs through haproxy in ${Math.round(performance.now() - started)} ms`);
  // Round-robin spread the connections over all three instances.
  const counts = await Promise.all(fleet.instances.map((d) => metric(d, 'snaprtcd_hub_connections')));
  t.diagnostic(`hub connections per instance: ${counts.join(', ')}`);
  assert.equal(counts.reduce((x, y) => x + y, 0), 2 * PAIRS);
  for (const c of counts) assert.ok(c >= PAIRS / 3, `each instance holds a share: ${counts}`);
  await Promise.all(conns.map((c) => c.stop()));
});

test('negotiate on one instance, WebSocket on another: works once, with the backplane', { skip, timeout: 30000 }, async (t) => {
  const fleet = await startFleet(t, { signaling: { handshake_timeout: '1s' } });
  const [a, b, c] = fleet.instances;
  const n = await negotiate(a);
  assert.equal(n.status, 200);
  const url = `${b.wsHub}?id=${encodeURIComponent(n.body.connectionToken)}`;
  const first = await upgradeStatus(t, url);
  assert.equal(first.status, 101, 'the token from A opens a WebSocket on B');
  assert.deepEqual(await first.raw.handshake(), {});
  const done = await invoke(first.raw, 'Sync', [sessionId('tok'), false]);
  assert.ok(!('error' in done), JSON.stringify(done));
  assert.equal((await upgradeStatus(t, url)).status, 404, 'used token on B again');
  assert.equal((await upgradeStatus(t, `${c.wsHub}?id=${encodeURIComponent(n.body.connectionToken)}`)).status, 404, 'used token on C');
  assert.equal((await upgradeStatus(t, `${a.wsHub}?id=${encodeURIComponent(n.body.connectionToken)}`)).status, 404, 'used token on A');
  assert.equal((await upgradeStatus(t, `${b.wsHub}?id=nosuchtoken`)).status, 404, 'unknown token');
  // Unused, a token expires after handshake_timeout (1 s here) everywhere.
  const late = await negotiate(a);
  await new Promise((resolve) => setTimeout(resolve, 1500)); // a timing property: wait past the expiry
  assert.equal((await upgradeStatus(t, `${c.wsHub}?id=${encodeURIComponent(late.body.connectionToken)}`)).status, 404, 'expired token');
});

test('negotiate on one instance, WebSocket on another: 404 without the backplane', { timeout: 30000 }, async (t) => {
  const a = await startInstance(t);
  const b = await startInstance(t);
  const n = await negotiate(a);
  assert.equal(n.status, 200);
  const token = encodeURIComponent(n.body.connectionToken);
  assert.equal((await upgradeStatus(t, `${b.wsHub}?id=${token}`)).status, 404, 'B does not know A\'s token');
  // The token is still good where it was issued.
  assert.equal((await upgradeStatus(t, `${a.wsHub}?id=${token}`)).status, 101);
});

test('max_members_per_session holds across the fleet', { skip, timeout: 30000 }, async (t) => {
  const fleet = await startFleet(t, { signaling: { max_members_per_session: 3 } });
  const [a, b, c] = fleet.instances;
  const session = sessionId('full');
  const ma = await client(t, a.hub, { skipNegotiation: true });
  const mb = await client(t, b.hub, { skipNegotiation: true });
  const mc = await client(t, c.hub, { skipNegotiation: true });
  await ma.invoke('Sync', session, false);
  await mb.invoke('Sync', session, true);
  await mc.invoke('Sync', session, true);
  // A fourth member, on any instance, is one too many.
  for (const d of [a, b, c]) {
    const extra = await client(t, d.hub, { skipNegotiation: true });
    await assert.rejects(extra.invoke('Sync', session, true), /Session is full/, `a 4th member on port ${d.port}`);
    await extra.stop();
  }
  // The members still reach each other.
  await ma.invoke('SignalCapture', session, 'offer');
  assert.deepEqual(await mb.waitFor('signalCapture'), ['offer']);
  assert.deepEqual(await mc.waitFor('signalCapture'), ['offer']);
  // A member leaving on B makes room for one on A.
  await mb.stop();
  const md = await client(t, a.hub, { skipNegotiation: true });
  await eventually('room in the session after a member left', 5000, async () => {
    await md.invoke('Sync', session, true);
    return true;
  });
});

test("the compose file's pieces: haproxy.cfg (which the tests here run) and fleet.toml are valid", { skip, timeout: 30000 }, async () => {
  const dir = path.join(repoRoot, 'packaging', 'container');
  const compose = await readFile(path.join(dir, 'compose.yaml'), 'utf8');
  assert.match(compose, /\.\/haproxy\.cfg:\/usr\/local\/etc\/haproxy\/haproxy\.cfg/, 'compose mounts haproxy.cfg');
  assert.match(compose, /\.\/fleet\.toml:\/etc\/snaprtcd\/relay\.toml/, 'compose mounts fleet.toml');
  assert.equal((compose.match(/^ {2}snaprtcd\d: \*relay$/gm) || []).length, 3, '3 instances');
  // The compose names (snaprtcd1..3) do not resolve here: check with addresses.
  const env = { ...process.env, SNAPRTCD1: '127.0.0.1:1', SNAPRTCD2: '127.0.0.1:2', SNAPRTCD3: '127.0.0.1:3' };
  execFileSync('haproxy', ['-c', '-q', '-f', HAPROXY_CFG], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = execFileSync(daemonBin(), ['check-config', path.join(dir, 'fleet.toml')], { encoding: 'utf8' });
  assert.match(out, /ok/);
  const effective = execFileSync(daemonBin(), ['print-config', '-c', path.join(dir, 'fleet.toml')], { encoding: 'utf8' });
  assert.match(effective, /\[backplane\]\nkind = "redis"\nurl = "redis:\/\/redis:6379\/0"/);
});
