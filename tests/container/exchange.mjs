// Drives the relay container (tests/container/run.sh) with the official @microsoft/signalr
// client: node exchange.mjs BASE_URL STOP_COMMAND...
// /health is role relay; two clients complete the SnapRTC exchange through it; then a client
// stays connected while STOP_COMMAND (podman stop: SIGTERM) runs, and must see a clean close.
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { connect, sessionId, signalR } from '../node/lib/hub.mjs';
import { withTimeout } from '../node/lib/daemon.mjs';

const [base, ...stop] = process.argv.slice(2);
const daemon = { hub: `${base}/snaprtc-hub` };
const t = { after: () => {} }; // connect() registers cleanups; this script closes what it opens
let failed = 0;
const ok = (what) => console.log(`ok - ${what}`);
async function step(what, f) {
  try {
    const detail = await f();
    ok(detail ? `${what}: ${detail}` : what);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${what}: ${e.message}`);
  }
}

await step('/health answers as a relay', async () => {
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      const r = await fetch(`${base}/health`, { headers: { accept: 'application/json' } });
      const h = await r.json();
      assert.equal(h.role, 'relay', JSON.stringify(h));
      return `${JSON.stringify(h).slice(0, 120)}`;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100)); // polling the container's start, with a deadline
    }
  }
});

await step('the SnapRTC exchange goes through the container, byte for byte', async () => {
  const session = sessionId('container');
  const initiator = await connect(t, daemon);
  const capture = await connect(t, daemon);
  await initiator.invoke('Sync', session, false);
  await capture.invoke('Sync', session, true);
  await initiator.waitFor('signalStart');
  await initiator.invoke('SignalCapture', session, 'offer-é-\u2603');
  assert.deepEqual(await capture.waitFor('signalCapture'), ['offer-é-\u2603']);
  await capture.invoke('SignalInitiator', session, 'answer');
  assert.deepEqual(await initiator.waitFor('signalInitiator'), ['answer']);
  assert.equal(initiator.messages.filter((m) => m[0] === 'signalcapture').length, 0, 'no echo');
  await initiator.stop();
  await capture.stop();
});

await step('SIGTERM: a connected client is told the server is going away, and reconnects', async () => {
  // Built as a cloud page would be: automatic reconnect. A Close record with allowReconnect
  // makes it reconnect; a dropped socket or a refusal would show up as an error or a stop.
  const client = new signalR.HubConnectionBuilder()
    .withUrl(daemon.hub, { transport: signalR.HttpTransportType.WebSockets })
    .withAutomaticReconnect([0, 60000])
    .configureLogging(signalR.LogLevel.None)
    .build();
  const reconnecting = new Promise((resolve) => client.onreconnecting((err) => resolve(err)));
  await withTimeout(client.start(), 10000, 'HubConnection.start()');
  const started = Date.now();
  const r = spawnSync(stop[0], stop.slice(1), { stdio: ['ignore', 'ignore', 'inherit'], timeout: 30000 });
  assert.equal(r.status, 0, `${stop.join(' ')} exited ${r.status}`);
  const err = await withTimeout(reconnecting, 10000, 'onreconnecting');
  assert.match(String(err), /Server is shutting down/);
  await client.stop();
  return `reconnecting after "${err.message}", container stopped in ${Date.now() - started} ms`;
});

process.exit(failed ? 1 : 0);
