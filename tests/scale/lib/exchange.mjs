// The SnapRTC exchange between an initiator and a capture side, with the official
// @microsoft/signalr client (tests/node/lib/hub.mjs), for pairs whose sides may sit on
// different instances of the fleet.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { connect, record, sessionId, signalR } from '../../node/lib/hub.mjs';
import { withTimeout } from '../../node/lib/daemon.mjs';

// lz-string is installed with tests/node's packages (npm ci there).
const LZString = createRequire(new URL('../../node/package.json', import.meta.url))('lz-string');

/** Offer and answer as a SnapRTC page sends them (simple-peer, trickle off, LZ-compressed), unique to `tag`. */
export function signals(tag) {
  const sdp = [
    'v=0', `o=- ${tag.length}4611731400430051336 2 IN IP4 127.0.0.1`, `s=${tag}`, 't=0 0',
    'a=group:BUNDLE 0', 'a=extmap-allow-mixed', 'a=msid-semantic: WMS',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
    'a=candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host generation 0',
    'a=ice-ufrag:abcd', 'a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa', 'a=ice-options:trickle',
    'a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF',
    'a=setup:actpass', 'a=mid:0', 'a=sctp-port:5000', 'a=max-message-size:262144', '',
  ].join('\r\n');
  const lz = (o) => LZString.compressToEncodedURIComponent(JSON.stringify(o));
  return {
    offer: lz({ type: 'offer', sdp }),
    answer: lz({ type: 'answer', sdp: sdp.replace('actpass', 'active') }),
  };
}

/** A started official client on `url` (an instance's or haproxy's hub), stopped when `t` ends. */
export function client(t, url, opts = {}) {
  return connect(t, { hub: url }, opts);
}

/**
 * The whole SnapRTC exchange in `session` between two started clients: Sync both, signalStart,
 * offer, answer, each compared byte for byte; then one barrier each way, after which neither
 * side may hold an echo of its own message or a second copy of the other's.
 */
export async function exchange(initiator, capture, session, tag = session, ms = 10000) {
  const { offer, answer } = signals(tag);
  await initiator.invoke('Sync', session, false);
  await capture.invoke('Sync', session, true);
  assert.deepEqual(await initiator.waitFor('signalStart', { ms }), [], `${tag}: signalStart`);
  await initiator.invoke('SignalCapture', session, offer);
  assert.deepEqual(await capture.waitFor('signalCapture', { ms }), [offer], `${tag}: offer byte for byte`);
  await capture.invoke('SignalInitiator', session, answer);
  assert.deepEqual(await initiator.waitFor('signalInitiator', { ms }), [answer], `${tag}: answer byte for byte`);
  // Barriers: messages to one connection come in the order the hub produced them (a Redis
  // channel keeps publish order), so an echo or a duplicate would have arrived before them.
  let seen = capture.messages.length;
  await initiator.invoke('SignalCapture', session, `barrier-${tag}`);
  await capture.waitFor('signalCapture', { after: seen, ms });
  seen = initiator.messages.length;
  await capture.invoke('SignalInitiator', session, `barrier-${tag}`);
  await initiator.waitFor('signalInitiator', { after: seen, ms });
  assert.deepEqual(
    initiator.messages,
    [['signalstart'], ['signalinitiator', answer], ['signalinitiator', `barrier-${tag}`]],
    `${tag}: the initiator got exactly signalStart, the answer and the barrier`,
  );
  assert.deepEqual(
    capture.messages,
    [['signalcapture', offer], ['signalcapture', `barrier-${tag}`]],
    `${tag}: the capture side got exactly the offer and the barrier`,
  );
}

/** Runs `f(i)` for i in 0..n-1, at most `width` at a time; rejects with the first failure. */
export async function pool(n, width, f) {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await f(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, worker));
}

/**
 * An official client built as a cloud page builds it: `withAutomaticReconnect`, and `Sync`
 * again in `onreconnected` (the session is joined anew on whichever instance it reached).
 * `conn.syncAs = [session, isCapture]` sets what it re-Syncs; `conn.reconnected` counts.
 */
export async function reconnectingClient(t, url) {
  const conn = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport: signalR.HttpTransportType.WebSockets })
    .withAutomaticReconnect([0, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000])
    .configureLogging(signalR.LogLevel.None)
    .build();
  const recorder = record(conn, ['signalStart', 'signalCapture', 'signalInitiator']);
  conn.messages = recorder.messages;
  conn.waitFor = recorder.waitFor;
  conn.reconnected = 0;
  const waiters = [];
  conn.onreconnected(() => {
    conn.reconnected += 1;
    const synced = conn.syncAs ? conn.invoke('Sync', ...conn.syncAs).catch(() => {}) : Promise.resolve();
    synced.then(() => {
      for (const w of waiters.splice(0)) w();
    });
  });
  /** Resolves when connected (and, after a reconnect, synced again); rejects after `ms`. */
  conn.whenConnected = (ms = 10000) => {
    if (conn.state === signalR.HubConnectionState.Connected) return Promise.resolve();
    return withTimeout(new Promise((resolve) => waiters.push(resolve)), ms, 'the reconnect');
  };
  t.after(() => conn.stop());
  await withTimeout(conn.start(), 10000, 'HubConnection.start()');
  return conn;
}

export { sessionId };
