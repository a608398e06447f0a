// The backplane's faults (issue 12 item 5), each with real processes: Redis killed in the
// middle of a run and started again, Redis down when an instance starts, and an instance
// killed with -9. The daemon never exits because of Redis, calls that need another instance
// fail fast instead of hanging, and sessions held by one instance are never affected.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTimeout } from '../node/lib/daemon.mjs';
import { INSTANCE_TTL_MS, eventually, freePort, health, metric, skipReason, startFleet, startInstance, startRedis } from './lib/fleet.mjs';
import { client, exchange, sessionId } from './lib/exchange.mjs';

const skip = skipReason();
if (skip) console.log(`# scale tests skipped: ${skip}`);

const direct = { skipNegotiation: true };

/**
 * Sends `probe-N` from `from` to `to` in `session` until one arrives, each try waiting for its
 * message with a short timeout (a message published while an instance is not yet subscribed
 * again is lost, so the next try sends a new one). Resolves with the number of tries.
 */
async function relayWorksAgain(from, to, method, session, ms) {
  const event = method === 'SignalCapture' ? 'signalCapture' : 'signalInitiator';
  let tries = 0;
  await eventually(`${method} relayed across instances`, ms, async () => {
    tries += 1;
    const seen = to.messages.length;
    await withTimeout(from.invoke(method, session, `probe-${tries}`), 2000, `${method} completion`);
    const [got] = await to.waitFor(event, { after: seen, ms: 300 });
    return got.startsWith('probe-');
  });
  return tries;
}

/** An invocation that must settle (either way) within `ms`: a hang fails the test. */
function settles(promise, ms, what) {
  return withTimeout(
    promise.then(
      (value) => ({ ok: true, value }),
      (error) => ({ ok: false, error }),
    ),
    ms,
    `${what} to complete (it must never hang)`,
  );
}

test('Redis killed mid-run: fast errors, local sessions unaffected; Redis back: relaying again within 5 s', { skip, timeout: 60000 }, async (t) => {
  const fleet = await startFleet(t);
  const [a, b, c] = fleet.instances;
  // A pair across instances A and B, and a pair whose two members are both on C.
  const xi = await client(t, a.hub, direct);
  const xc = await client(t, b.hub, direct);
  const sx = sessionId('cross');
  await exchange(xi, xc, sx, 'cross');
  const li = await client(t, c.hub, direct);
  const lc = await client(t, c.hub, direct);
  const sl = sessionId('local');
  await li.invoke('Sync', sl, false);
  await lc.invoke('Sync', sl, true);
  await li.waitFor('signalStart');
  // More live sessions, spanning every ordered pair of instances, for the return of Redis.
  const spans = [];
  for (let k = 0; k < 12; k++) {
    const [pi, pc] = [k % 3, (k + 1 + Math.floor(k / 3) % 2) % 3];
    const ini = await client(t, fleet.instances[pi].hub, direct);
    const cap = await client(t, fleet.instances[pc].hub, direct);
    const s = sessionId(`span${k}`);
    await exchange(ini, cap, s, `span${k}`);
    spans.push({ ini, cap, s });
  }

  await fleet.killRedis();
  const killed = performance.now();

  // A Sync needs the backplane (fleet-wide membership): an error Completion naming it, fast.
  const fresh = await client(t, b.hub, direct);
  for (let i = 0; ; i++) {
    const r = await settles(fresh.invoke('Sync', sessionId(`down${i}`), false), 2000, 'Sync with Redis down');
    if (!r.ok) {
      assert.match(r.error.message, /backplane/, 'the error says why');
      t.diagnostic(`Sync refused ${Math.round(performance.now() - killed)} ms after Redis died: ${r.error.message}`);
      break;
    }
    assert.ok(performance.now() - killed < 2000, 'a Sync is refused within 2 s of Redis dying');
  }
  // A signal whose only recipient is on another instance: an error Completion, never a hang.
  const r = await settles(xi.invoke('SignalCapture', sx, 'lost'), 2000, 'SignalCapture with Redis down');
  assert.equal(r.ok, false, 'SignalCapture to another instance is refused while Redis is down');
  t.diagnostic(`SignalCapture across instances refused: ${r.error.message}`);
  const r2 = await settles(xc.invoke('SignalInitiator', sx, 'lost'), 2000, 'SignalInitiator with Redis down');
  assert.equal(r2.ok, false, 'SignalInitiator to another instance is refused while Redis is down');
  assert.ok(performance.now() - killed < 2000 + 2 * 2000);

  // The session held by C alone works as before.
  await li.invoke('SignalCapture', sl, 'local-offer');
  assert.deepEqual(await lc.waitFor('signalCapture'), ['local-offer']);
  await lc.invoke('SignalInitiator', sl, 'local-answer');
  assert.deepEqual(await li.waitFor('signalInitiator'), ['local-answer']);

  // Every instance says so, and none exited.
  for (const d of fleet.instances) {
    await eventually('/health backplane down', 2000, async () => (await health(d)).backplane?.state === 'down');
    assert.deepEqual((await health(d)).backplane, { kind: 'redis', state: 'down' });
    assert.equal(await metric(d, 'snaprtcd_backplane_up'), 0);
    assert.equal(d.exitInfo, null, 'the instance is still running');
  }

  // Redis back (empty, on the same port): every live cross-instance session relays again
  // within 5 s, both ways, with no new Sync.
  await fleet.restartRedis();
  const back = performance.now();
  const left = () => Math.max(1, 5000 - (performance.now() - back));
  const tries = await relayWorksAgain(xi, xc, 'SignalCapture', sx, 5000);
  await relayWorksAgain(xc, xi, 'SignalInitiator', sx, left());
  await Promise.all(spans.map(async ({ ini, cap, s }) => {
    await relayWorksAgain(ini, cap, 'SignalCapture', s, left());
    await relayWorksAgain(cap, ini, 'SignalInitiator', s, left());
  }));
  const took = Math.round(performance.now() - back);
  t.diagnostic(`all ${spans.length + 1} cross-instance sessions relaying again ${took} ms after Redis came back (${tries} probes for the first)`);
  assert.ok(took <= 5000, `relay back within 5 s (took ${took} ms)`);
  for (const d of fleet.instances) {
    await eventually('/health backplane up', 5000, async () => (await health(d)).backplane?.state === 'up');
    assert.equal(await metric(d, 'snaprtcd_backplane_up'), 1);
  }
  // New sessions across instances work too.
  await exchange(await client(t, c.hub, direct), await client(t, a.hub, direct), sessionId('after'), 'after');
});

test('Redis down at start: the instance starts, says down, refuses Sync fast, and connects when Redis comes', { skip, timeout: 30000 }, async (t) => {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}/0`;
  const a = await startInstance(t, { redisUrl: url });
  const b = await startInstance(t, { redisUrl: url });
  assert.deepEqual((await health(a)).backplane, { kind: 'redis', state: 'down' });
  assert.equal(await metric(a, 'snaprtcd_backplane_up'), 0);
  // Joining a session needs the fleet-wide member count: refused at once, naming the cause.
  const i = await client(t, a.hub, direct);
  const r = await settles(i.invoke('Sync', sessionId('early'), false), 2000, 'Sync with Redis down');
  assert.equal(r.ok, false);
  assert.match(r.error.message, /backplane/);

  // Redis starts: both instances connect (they retry with backoff) and sessions span them.
  await startRedis(t, { port });
  for (const d of [a, b]) {
    await eventually('/health backplane up', 10000, async () => (await health(d)).backplane?.state === 'up', { gapMs: 50 });
  }
  await exchange(await client(t, a.hub, direct), await client(t, b.hub, direct), sessionId('x'), 'x');
});

test('an instance killed -9: the others keep working, its members stop counting after instance_ttl', { skip, timeout: 30000 }, async (t) => {
  const fleet = await startFleet(t, { signaling: { max_members_per_session: 2 } });
  const [a, b, c] = fleet.instances;
  const session = sessionId('killed');
  const ia = await client(t, a.hub, direct);
  const cc = await client(t, c.hub, direct);
  await exchange(ia, cc, session, 'killed');
  // The session is full fleet-wide.
  const nb = await client(t, b.hub, direct);
  await assert.rejects(nb.invoke('Sync', session, false), /Session is full/);

  a.child.kill('SIGKILL');
  await withTimeout(a.exited, 5000, 'the killed instance to go');
  const killed = performance.now();

  // The others keep working, at once.
  await exchange(await client(t, b.hub, direct), await client(t, c.hub, direct), sessionId('others'), 'others');
  // A's member stops counting once A's share of the count expires: B's client gets in.
  await eventually("the killed instance's member released", INSTANCE_TTL_MS + 3000, async () => {
    await nb.invoke('Sync', session, false);
    return true;
  }, { gapMs: 100 });
  const took = Math.round(performance.now() - killed);
  t.diagnostic(`a member on the killed instance stopped counting after ${took} ms (instance_ttl ${INSTANCE_TTL_MS} ms)`);
  // And it meets the capture side on C.
  const seen = cc.messages.length;
  await nb.invoke('SignalCapture', session, 'offer-after-kill');
  assert.deepEqual(await cc.waitFor('signalCapture', { after: seen }), ['offer-after-kill']);
});
