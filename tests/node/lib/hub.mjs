// The official `@microsoft/signalr` client, used the way SnapRTC pages use it, plus small
// helpers to wait for hub messages with a deadline.

import * as signalR from '@microsoft/signalr';
import { withTimeout } from './daemon.mjs';

export { signalR };

/**
 * A started HubConnection to `daemon.hub`, stopped when the test ends. `messages` records every
 * hub call the client receives, in order, as `[name, ...args]` (names lower-cased).
 */
export async function connect(t, daemon, { accessTokenFactory, skipNegotiation = false, url } = {}) {
  const options = {
    transport: signalR.HttpTransportType.WebSockets,
    skipNegotiation,
  };
  if (accessTokenFactory) options.accessTokenFactory = accessTokenFactory;
  const conn = new signalR.HubConnectionBuilder()
    .withUrl(url || daemon.hub, options)
    .configureLogging(process.env.SNAPRTCD_TEST_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None)
    .build();
  const recorder = record(conn, ['signalStart', 'signalCapture', 'signalInitiator']);
  conn.messages = recorder.messages;
  conn.waitFor = recorder.waitFor;
  conn.closed = new Promise((resolve) => conn.onclose((err) => resolve(err ?? null)));
  t.after(() => conn.stop());
  await withTimeout(conn.start(), 10000, 'HubConnection.start()');
  return conn;
}

/**
 * Records calls of `methods` on `conn`. `waitFor(name, {after})` resolves with the args of the
 * first call of `name` at index >= `after` in `messages` (default: any, including past ones).
 */
export function record(conn, methods) {
  const messages = [];
  const waiters = [];
  for (const name of methods) {
    conn.on(name, (...args) => {
      messages.push([name.toLowerCase(), ...args]);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        const idx = messages.length - 1;
        if (w.name === name.toLowerCase() && idx >= w.after) {
          waiters.splice(i, 1);
          w.resolve(args);
        }
      }
    });
  }
  const waitFor = (name, { after = 0, ms = 5000 } = {}) => {
    const lname = name.toLowerCase();
    const idx = messages.findIndex((m, i) => i >= after && m[0] === lname);
    if (idx >= 0) return Promise.resolve(messages[idx].slice(1));
    const p = new Promise((resolve) => waiters.push({ name: lname, after, resolve }));
    return withTimeout(p, ms, `hub message ${name} (got so far: ${JSON.stringify(messages)})`);
  };
  return { messages, waitFor };
}

/** A fresh session id, unique per call. */
let counter = 0;
export function sessionId(prefix = 's') {
  counter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${counter}`;
}
