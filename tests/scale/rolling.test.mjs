// A rolling restart (issue 12 item 8): while pairs keep exchanging offers and answers, one
// instance of three is replaced (SIGTERM, then a new one on the same port). No pair whose two
// sides are on the other instances may lose a single exchange; the pairs that had a side on
// the replaced instance come back by themselves (withAutomaticReconnect and Sync again, as a
// cloud page does) and exchange again through the new instance.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTimeout } from '../node/lib/daemon.mjs';
import { skipReason, startFleet } from './lib/fleet.mjs';
import { reconnectingClient, sessionId } from './lib/exchange.mjs';

const skip = skipReason();
if (skip) console.log(`# scale tests skipped: ${skip}`);

const REPLACED = 2;
// Where each pair's initiator and capture sides connect: across instances, on one, and on the
// instance that is replaced (either side or both).
const PLACEMENTS = [[0, 1], [1, 0], [0, 0], [1, 1], [0, 2], [2, 1], [2, 2]];
const PAIRS_PER_PLACEMENT = 3;

/** A pair exchanging offer r / answer r in a loop until `stop`, counting rounds and failures. */
class Pair {
  constructor(name, initiator, capture, session, affected) {
    Object.assign(this, { name, initiator, capture, session, affected });
    this.rounds = 0;
    this.failures = [];
    this.waiters = [];
    this.stop = false;
  }

  /** Resolves once `rounds` reaches `n`. */
  reach(n) {
    if (this.rounds >= n) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  async #one(r, ms) {
    const { initiator, capture, session } = this;
    let seen = capture.messages.length;
    await withTimeout(initiator.invoke('SignalCapture', session, `offer-${r}`), ms, 'SignalCapture completion');
    const [offer] = await capture.waitFor('signalCapture', { after: seen, ms });
    assert.equal(offer, `offer-${r}`);
    seen = initiator.messages.length;
    await withTimeout(capture.invoke('SignalInitiator', session, `answer-${r}`), ms, 'SignalInitiator completion');
    const [answer] = await initiator.waitFor('signalInitiator', { after: seen, ms });
    assert.equal(answer, `answer-${r}`);
  }

  async run() {
    // A pair on the surviving instances has 5 s per step (it must never miss); a pair on the
    // replaced one gives up a round after 1 s and tries the next (its side is reconnecting).
    const ms = this.affected ? 1000 : 5000;
    for (let r = 0; !this.stop; r++) {
      try {
        await this.#one(r, ms);
        this.rounds += 1;
        this.waiters = this.waiters.filter((w) => (this.rounds >= w.n ? (w.resolve(), false) : true));
      } catch (e) {
        this.failures.push(`round ${r}: ${e.message.split('\n')[0]}`);
        if (!this.affected) return;
        // A side is reconnecting: wait for it (an invoke on it would fail at once, and a loop
        // of those would never let the event loop run).
        await Promise.all([this.initiator.whenConnected(), this.capture.whenConnected()]);
      }
    }
  }
}

test('rolling restart: one instance replaced while pairs run; no pair off it loses an exchange', { skip, timeout: 60000 }, async (t) => {
  const fleet = await startFleet(t);
  const pairs = [];
  for (const [pi, pc] of PLACEMENTS) {
    for (let k = 0; k < PAIRS_PER_PLACEMENT; k++) {
      const name = `${pi}-${pc}#${k}`;
      const session = sessionId(`roll${pi}${pc}`);
      const initiator = await reconnectingClient(t, fleet.instances[pi].hub);
      const capture = await reconnectingClient(t, fleet.instances[pc].hub);
      initiator.syncAs = [session, false];
      capture.syncAs = [session, true];
      await initiator.invoke('Sync', session, false);
      await capture.invoke('Sync', session, true);
      await initiator.waitFor('signalStart');
      pairs.push(new Pair(name, initiator, capture, session, pi === REPLACED || pc === REPLACED));
    }
  }
  const loops = pairs.map((p) => p.run());
  const failFast = Promise.all(loops).then(() => {
    throw new Error('a pair stopped before the end');
  });
  const watch = (p) => Promise.race([p, failFast]);

  await watch(withTimeout(Promise.all(pairs.map((p) => p.reach(2))), 15000, 'every pair doing 2 rounds'));
  const before = pairs.map((p) => p.rounds);
  const started = performance.now();
  const exit = await fleet.replace(REPLACED);
  const replacedIn = Math.round(performance.now() - started);
  assert.deepEqual(exit, { code: 0, signal: null }, 'the old instance exited cleanly on SIGTERM');
  // Everyone, the pairs that were on the replaced instance included, does 3 more rounds.
  const after = pairs.map((p) => p.rounds);
  await watch(withTimeout(Promise.all(pairs.map((p, i) => p.reach(after[i] + 3))), 20000,
    `3 more rounds for every pair: ${pairs.map((p) => `${p.name}=${p.rounds}`).join(' ')}`));
  const backIn = Math.round(performance.now() - started);
  for (const p of pairs) p.stop = true;
  await Promise.all(loops);

  const unaffected = pairs.filter((p) => !p.affected);
  const affected = pairs.filter((p) => p.affected);
  t.diagnostic(`instance replaced in ${replacedIn} ms; all ${pairs.length} pairs exchanging again after ${backIn} ms`);
  t.diagnostic(`rounds per pair: ${pairs.map((p, i) => `${p.name}: ${before[i]}→${p.rounds}`).join(', ')}`);
  t.diagnostic(`pairs on the replaced instance: ${affected.map((p) => `${p.name} lost ${p.failures.length}, reconnected ${p.initiator.reconnected + p.capture.reconnected}`).join('; ')}`);
  for (const p of unaffected) {
    assert.deepEqual(p.failures, [], `pair ${p.name} (not on the replaced instance) lost no exchange`);
    assert.equal(p.initiator.reconnected + p.capture.reconnected, 0, `pair ${p.name} never reconnected`);
  }
  for (const p of affected) {
    assert.ok(p.initiator.reconnected + p.capture.reconnected >= 1, `pair ${p.name} reconnected`);
  }
});
