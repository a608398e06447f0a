// The whole SnapRTC signalling exchange between two official @microsoft/signalr clients,
// relayed by snaprtcd acting as the seed's hub (join_sessions = "none").

import { test } from 'node:test';
import assert from 'node:assert/strict';
import LZString from 'lz-string';
import { startDaemon } from './lib/daemon.mjs';
import { connect, sessionId } from './lib/hub.mjs';

// What simple-peer emits with trickle:false, compressed the way SnapRTC does.
const offerSdp = [
  'v=0', 'o=- 4611731400430051336 2 IN IP4 127.0.0.1', 's=-', 't=0 0',
  'a=group:BUNDLE 0', 'a=extmap-allow-mixed', 'a=msid-semantic: WMS',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
  'a=candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host generation 0',
  'a=ice-ufrag:abcd', 'a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa', 'a=ice-options:trickle',
  'a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF',
  'a=setup:actpass', 'a=mid:0', 'a=sctp-port:5000', 'a=max-message-size:262144', '',
].join('\r\n');
const offer = LZString.compressToEncodedURIComponent(JSON.stringify({ type: 'offer', sdp: offerSdp }));
const answer = LZString.compressToEncodedURIComponent(
  JSON.stringify({ type: 'answer', sdp: offerSdp.replace('actpass', 'active') }),
);

test('initiator and capture meet, offer and answer are relayed byte for byte, no echo', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('exchange');
  const initiator = await connect(t, daemon);
  const capture = await connect(t, daemon);

  await initiator.invoke('Sync', session, false);
  await capture.invoke('Sync', session, true);
  // The initiator learns that the capture side is there.
  assert.deepEqual(await initiator.waitFor('signalStart'), []);

  await initiator.invoke('SignalCapture', session, offer);
  const [gotOffer] = await capture.waitFor('signalCapture');
  assert.equal(gotOffer, offer, 'offer relayed byte for byte');
  const decoded = JSON.parse(LZString.decompressFromEncodedURIComponent(gotOffer));
  assert.equal(decoded.type, 'offer');

  await capture.invoke('SignalInitiator', session, answer);
  const [gotAnswer] = await initiator.waitFor('signalInitiator');
  assert.equal(gotAnswer, answer, 'answer relayed byte for byte');

  // Ordering is the barrier for "no echo": each connection's messages come in the order the hub
  // produced them, so by the time the initiator has the answer, an echo of its own offer would
  // already have arrived, and likewise the capture's own answer after the next round trip.
  // (Count before invoking: the barrier may reach the capture side before the Completion
  // reaches the initiator.)
  const seen = capture.messages.length;
  await initiator.invoke('SignalCapture', session, 'barrier');
  assert.deepEqual(await capture.waitFor('signalCapture', { after: seen }), ['barrier']);
  assert.deepEqual(initiator.messages, [['signalstart'], ['signalinitiator', answer]], 'initiator got no echo');
  assert.deepEqual(
    capture.messages,
    [['signalcapture', offer], ['signalcapture', 'barrier']],
    'capture got no signalStart of its own and no echo of its answer',
  );
});

test('plain JSON and awkward payloads are relayed unchanged', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('payloads');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  await a.invoke('Sync', session, false);
  await b.invoke('Sync', session, true);
  await a.waitFor('signalStart');
  const payloads = [
    JSON.stringify({ type: 'offer', sdp: offerSdp }),
    '',
    'ünïcødé ✓ 😀 \u0000 \u001e "quotes" \\ backslash',
    'x'.repeat(1500),
  ];
  for (const p of payloads) {
    const after = b.messages.length;
    await a.invoke('SignalCapture', session, p);
    assert.deepEqual(await b.waitFor('signalCapture', { after }), [p]);
  }
});

test('send (no invocationId) relays too, and invoke completes with no result', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('send');
  const a = await connect(t, daemon);
  const b = await connect(t, daemon);
  assert.equal(await a.invoke('Sync', session, false), undefined);
  await b.send('Sync', session, true);
  await a.waitFor('signalStart');
  await a.send('SignalCapture', session, offer);
  assert.deepEqual(await b.waitFor('signalCapture'), [offer]);
  await b.send('SignalInitiator', session, answer);
  assert.deepEqual(await a.waitFor('signalInitiator'), [answer]);
});

test('a second capture joining later starts the exchange again; members leave on disconnect', { timeout: 30000 }, async (t) => {
  const daemon = await startDaemon(t);
  const session = sessionId('rejoin');
  const initiator = await connect(t, daemon);
  const first = await connect(t, daemon);
  await initiator.invoke('Sync', session, false);
  await first.invoke('Sync', session, true);
  await initiator.waitFor('signalStart');
  await first.stop();

  const second = await connect(t, daemon);
  const after = initiator.messages.length;
  await second.invoke('Sync', session, true);
  await initiator.waitFor('signalStart', { after });
  await initiator.invoke('SignalCapture', session, offer);
  assert.deepEqual(await second.waitFor('signalCapture'), [offer]);
});
