// A hand-rolled SignalR JSON-protocol client over a bare WebSocket (the `ws` package), for the
// tests that must send what the official client never would: garbage, binary frames, silence.

import WebSocket from 'ws';
import { withTimeout } from './daemon.mjs';

export const RS = '\x1e';

/** `POST {hub}/negotiate?negotiateVersion=1`; returns {status, body (parsed when JSON), headers}. */
export async function negotiate(daemon, { headers = {}, method = 'POST', query = 'negotiateVersion=1' } = {}) {
  const res = await fetch(`${daemon.hub}/negotiate${query ? `?${query}` : ''}`, { method, headers });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body, headers: res.headers };
}

/**
 * A raw WebSocket to the hub. Incoming text is split into records on 0x1E; `next()` returns
 * the next record (parsed JSON, or `{unparsed: text}`), `closed` resolves with {code, reason}
 * when the socket closes. `skipPings` drops type-6 records from `next()` (they are still counted
 * in `pings`).
 */
export class RawHub {
  constructor(url, { headers = {}, skipPings = true } = {}) {
    this.url = url;
    this.ws = new WebSocket(url, { headers, perMessageDeflate: false });
    this.records = [];
    this.pings = [];
    this.waiters = [];
    this.skipPings = skipPings;
    this.buffer = '';
    this.frames = [];
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('unexpected-response', (_req, res) => {
        const err = new Error(`upgrade refused: HTTP ${res.statusCode}`);
        err.status = res.statusCode;
        reject(err);
        res.resume();
      });
      this.ws.once('error', reject);
    });
    // Errors after a refused upgrade are reported through `opened`; keep them from escaping.
    this.ws.on('error', () => {});
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const w of this.waiters.splice(0)) w.resolve(null);
        resolve(this.closeInfo);
      });
    });
    this.ws.on('message', (data, isBinary) => {
      const text = data.toString('utf8');
      this.frames.push({ text, isBinary, at: performance.now() });
      this.buffer += text;
      let i;
      while ((i = this.buffer.indexOf(RS)) >= 0) {
        const rec = this.buffer.slice(0, i);
        this.buffer = this.buffer.slice(i + 1);
        let msg;
        try {
          msg = JSON.parse(rec);
        } catch {
          msg = { unparsed: rec };
        }
        if (msg && msg.type === 6) {
          this.pings.push(performance.now());
          if (this.skipPings) continue;
        }
        this.#push(msg);
      }
    });
  }

  #push(msg) {
    const w = this.waiters.shift();
    if (w) w.resolve(msg);
    else this.records.push(msg);
  }

  /** The next record, or null if the socket closed first. Rejects after `ms`. */
  next(ms = 5000) {
    if (this.records.length) return Promise.resolve(this.records.shift());
    if (this.closeInfo) return Promise.resolve(null);
    const p = new Promise((resolve) => this.waiters.push({ resolve }));
    return withTimeout(p, ms, `a record from ${this.url} (frames so far: ${JSON.stringify(this.frames.map((f) => f.text))})`);
  }

  /** Skips records until one satisfies `pred`; returns it (null if the socket closed). */
  async nextMatching(pred, ms = 5000) {
    const deadline = performance.now() + ms;
    for (;;) {
      const left = Math.max(1, deadline - performance.now());
      const msg = await this.next(left);
      if (msg === null || pred(msg)) return msg;
    }
  }

  /** Sends `obj` as one JSON record (object) or `text` as is (string), as a text frame. */
  send(objOrText) {
    const text = typeof objOrText === 'string' ? objOrText : JSON.stringify(objOrText) + RS;
    this.ws.send(text, { binary: false });
  }

  sendBinary(buf) {
    this.ws.send(buf, { binary: true });
  }

  /** Sends the JSON handshake and returns the server's answer record. */
  async handshake(protocol = 'json', version = 1) {
    this.send({ protocol, version });
    return this.next();
  }

  waitClosed(ms = 5000) {
    return withTimeout(this.closed, ms, `close of ${this.url}`);
  }

  close() {
    this.ws.terminate();
  }
}

/** Opens a raw hub socket (negotiating first unless `skipNegotiation`), ready for the handshake. */
export async function openRaw(t, daemon, { skipNegotiation = false, headers = {}, query = '', skipPings = true } = {}) {
  let url = daemon.wsHub;
  const params = [];
  if (!skipNegotiation) {
    const n = await negotiate(daemon, { headers });
    if (n.status !== 200) throw new Error(`negotiate answered ${n.status}: ${JSON.stringify(n.body)}`);
    params.push(`id=${encodeURIComponent(n.body.connectionToken)}`);
  }
  if (query) params.push(query);
  if (params.length) url += `?${params.join('&')}`;
  const raw = new RawHub(url, { headers, skipPings });
  t.after(() => raw.close());
  await withTimeout(raw.opened, 5000, `WebSocket open ${url}`);
  return raw;
}

/** Opens a raw hub socket and completes the JSON handshake, asserting `{}`. */
export async function openRawReady(t, daemon, opts) {
  const raw = await openRaw(t, daemon, opts);
  const hs = await raw.handshake();
  if (!hs || Object.keys(hs).length !== 0) {
    throw new Error(`handshake answer was ${JSON.stringify(hs)}, wanted {}`);
  }
  return raw;
}

let invocation = 0;
/** Sends an Invocation with an invocationId and returns the Completion for it. */
export async function invoke(raw, target, args, ms = 5000) {
  invocation += 1;
  const invocationId = `i${invocation}`;
  raw.send({ type: 1, invocationId, target, arguments: args });
  return raw.nextMatching((m) => m.type === 3 && m.invocationId === invocationId, ms);
}
