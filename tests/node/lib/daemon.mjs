// Runs the built snaprtcd as a child process, black-box: a config file with port 0, the bound
// address read from the log line `http listening addr=IP:PORT`, then the `ready` line. Nothing
// here sleeps to wait for the daemon; every wait is on an event with a deadline.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (tests/node/lib/../../..). */
export const repoRoot = path.resolve(here, '..', '..', '..');

/** The daemon binary: `SNAPRTCD_BIN`, else the debug build of this checkout. */
export function daemonBin() {
  return process.env.SNAPRTCD_BIN || path.join(repoRoot, 'target', 'debug', 'snaprtcd');
}

const LISTENING = /http listening addr=([0-9.]+):(\d+)/;
const READY = /\bready\b/;
// tracing colours field names even into a pipe unless told not to; strip any escape codes.
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Settings every test daemon gets unless the test overrides them. */
const BASE_CONFIG = {
  server: { listen: '127.0.0.1:0' },
  camera: { source: 'testsrc' },
  signaling: { join_sessions: 'none' },
  mdns: { enabled: false },
  log: { level: 'info', format: 'text' },
};

/** Deep-merges `over` into `base` (plain objects only; arrays and scalars replace). */
function merge(base, over) {
  const out = { ...base };
  for (const [k, v] of Object.entries(over || {})) {
    if (v && typeof v === 'object' && !Array.isArray(v) && typeof out[k] === 'object') {
      out[k] = merge(out[k], v);
    } else {
      out[k] = v;
    }
  }
  return out;
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // a JSON string is a TOML basic string
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  throw new Error(`cannot write ${typeof v} as TOML`);
}

/** `{server: {listen: "…"}}` → `[server]\nlisten = "…"`; one level of sections is enough here. */
export function toToml(config) {
  const lines = [];
  for (const [section, table] of Object.entries(config)) {
    lines.push(`[${section}]`);
    for (const [key, value] of Object.entries(table)) {
      lines.push(`${key} = ${tomlValue(value)}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

/** Resolves when `emitter` emits `event` or rejects after `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A running daemon. Lines of its output are kept (`logs`) so a failing test can show them, and
 * `waitLog(regex)` waits for a line that has not yet been printed or already was.
 */
export class Daemon {
  constructor(child, dir, configPath) {
    this.child = child;
    this.dir = dir;
    this.configPath = configPath;
    this.logs = [];
    this.waiters = [];
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    this.exitInfo = null;
    this.exited.then((info) => {
      this.exitInfo = info;
      for (const w of this.waiters.splice(0)) {
        w.reject(new Error(`daemon exited (${JSON.stringify(info)}) before a line matched ${w.re}\n${this.logText()}`));
      }
    });
    for (const stream of [child.stdout, child.stderr]) {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          this.#line(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
    }
  }

  #line(raw) {
    const line = raw.replace(ANSI, '');
    this.logs.push(line);
    if (process.env.SNAPRTCD_TEST_LOG) process.stderr.write(`[snaprtcd] ${line}\n`);
    this.waiters = this.waiters.filter((w) => {
      const m = line.match(w.re);
      if (m) w.resolve(m);
      return !m;
    });
  }

  logText() {
    return this.logs.map((l) => `  | ${l}`).join('\n');
  }

  /** The first log line (past or future) matching `re`, as a match array. */
  waitLog(re, ms = 10000) {
    for (const line of this.logs) {
      const m = line.match(re);
      if (m) return Promise.resolve(m);
    }
    if (this.exitInfo) return Promise.reject(new Error(`daemon already exited; no line matched ${re}`));
    const p = new Promise((resolve, reject) => this.waiters.push({ re, resolve, reject }));
    return withTimeout(p, ms, `log line ${re}\n${this.logText()}`);
  }

  /** Like waitLog, but only lines printed after this call. */
  waitNewLog(re, ms = 10000) {
    const p = new Promise((resolve, reject) => this.waiters.push({ re, resolve, reject }));
    return withTimeout(p, ms, `log line ${re}\n${this.logText()}`);
  }

  /** Stops the daemon: SIGTERM, then SIGKILL if it lingers. Returns how it exited. */
  async stop({ graceMs = 3000 } = {}) {
    if (!this.exitInfo) {
      this.child.kill('SIGTERM');
      try {
        await withTimeout(this.exited, graceMs, 'daemon exit after SIGTERM');
      } catch (e) {
        this.child.kill('SIGKILL');
        await this.exited;
        throw e;
      }
    }
    return this.exitInfo;
  }

  async cleanup() {
    if (!this.exitInfo) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts snaprtcd with BASE_CONFIG merged with `config`, waits for its listening and ready
 * lines, and registers its teardown with the test context `t` (node:test). Returns the Daemon
 * with `host`, `port`, `base` (http://host:port) and `hub` (base + hub path).
 */
export async function startDaemon(t, { config = {}, env = {}, files = {}, args = [], wrap = [] } = {}) {
  const bin = daemonBin();
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: run \`cargo build\` first or set SNAPRTCD_BIN`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'snaprtcd-test-'));
  // Files the config refers to, e.g. {token: 'secret'} -> <dir>/token; `@dir@` in config
  // strings is replaced by the folder.
  for (const [name, content] of Object.entries(files)) {
    await writeFile(path.join(dir, name), content, { mode: 0o600 });
  }
  const full = JSON.parse(JSON.stringify(merge(BASE_CONFIG, config)).replaceAll('@dir@', dir));
  const configPath = path.join(dir, 'snaprtcd.toml');
  await writeFile(configPath, toToml(full));

  const argv = [...wrap, bin, '--config', configPath, ...args];
  const child = spawn(argv[0], argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', RUST_BACKTRACE: '1', ...env },
  });
  const daemon = new Daemon(child, dir, configPath);
  t.after(() => daemon.cleanup());

  const m = await daemon.waitLog(LISTENING, 20000);
  await daemon.waitLog(READY, 20000);
  daemon.host = m[1];
  daemon.port = Number(m[2]);
  daemon.base = `http://${daemon.host}:${daemon.port}`;
  daemon.hubPath = full.signaling.hub_path || '/snaprtc-hub';
  daemon.hub = daemon.base + daemon.hubPath;
  daemon.wsHub = `ws://${daemon.host}:${daemon.port}${daemon.hubPath}`;
  daemon.config = full;
  return daemon;
}

/** VmRSS of a process in KiB, from /proc (Linux). */
export async function rssKiB(pid) {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = status.match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) : NaN;
}
