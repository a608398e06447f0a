// A fleet of snaprtcd relays sharing sessions through Redis, as the scale suite runs it: a
// redis-server and a haproxy from Debian and N snaprtcd instances, each on a loopback port
// picked here, each a child process of the test and torn down with it (node:test's `t.after`).
//
// Processes are driven through tests/node/lib/daemon.mjs's Daemon (log lines kept, waits on a
// line with a deadline): nothing here sleeps to wait for a process. haproxy runs the very
// configuration the compose file ships (packaging/container/haproxy.cfg), with its
// environment variables pointing at the instances.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Daemon, repoRoot, startDaemon, withTimeout } from '../../node/lib/daemon.mjs';

/** The haproxy configuration shared with packaging/container/compose.yaml. */
export const HAPROXY_CFG = path.join(repoRoot, 'packaging', 'container', 'haproxy.cfg');

/** The instance_ttl the suite runs with: a killed instance's members stop counting after it. */
export const INSTANCE_TTL_MS = 2000;

function which(tool) {
  try {
    return execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

/**
 * Why the suite cannot run here (a tool it needs is not installed), or false. Under CI
 * (`CI=true`) a missing tool never skips: the tests run and fail, naming what is missing.
 */
export function skipReason(tools = ['redis-server', 'haproxy']) {
  const missing = tools.filter((tool) => !which(tool));
  if (missing.length === 0) return false;
  const why = `${missing.join(', ')} not installed (apt-get install ${missing.join(' ')})`;
  if (process.env.CI === 'true') return false;
  return why;
}

/** Throws, naming it, when a tool is missing (so that under CI a missing tool fails the test). */
function need(tool) {
  if (!which(tool)) throw new Error(`${tool} is not installed (apt-get install ${tool}); tests/scale/run.sh installs it`);
}

/** A TCP port that was free on 127.0.0.1 a moment ago (for servers that cannot take port 0). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Spawns `argv` (behind `wrap`, e.g. `ip netns exec NS`) as a Daemon killed when `t` ends. */
async function spawnProcess(t, argv, { wrap = [], env = {} } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'snaprtcd-scale-'));
  const full = [...wrap, ...argv];
  const child = spawn(full[0], full.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: dir,
    env: { ...process.env, ...env },
  });
  const proc = new Daemon(child, dir, null);
  t.after(() => proc.cleanup());
  return proc;
}

/**
 * A redis-server on 127.0.0.1 (no persistence), ready. `port` restarts one on a known port;
 * otherwise a free port is picked (and picked again if another process took it meanwhile).
 */
export async function startRedis(t, { port, wrap = [] } = {}) {
  need('redis-server');
  for (let attempt = 0; ; attempt++) {
    const p = port ?? (await freePort());
    const redis = await spawnProcess(
      t,
      ['redis-server', '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'],
      { wrap },
    );
    try {
      await redis.waitLog(/Ready to accept connections/, 10000);
    } catch (e) {
      await redis.cleanup();
      if (port === undefined && attempt < 3) continue;
      throw e;
    }
    redis.port = p;
    redis.url = `redis://127.0.0.1:${p}/0`;
    return redis;
  }
}

/**
 * A snaprtcd relay ([camera] source = "none") on 127.0.0.1:`port` (0: any), with the Redis
 * backplane at `redisUrl` (or none when null). `signaling` and `backplane` add to its config.
 */
export async function startInstance(t, { port = 0, redisUrl = null, signaling = {}, backplane = {}, wrap = [] } = {}) {
  const config = {
    server: { listen: `127.0.0.1:${port}` },
    camera: { source: 'none' },
    signaling: { join_sessions: 'none', ...signaling },
    backplane: redisUrl
      ? {
          kind: 'redis',
          url: redisUrl,
          instance_ttl: `${INSTANCE_TTL_MS}ms`,
          max_queued_messages: 4096,
          ...backplane,
        }
      : { kind: 'none' },
  };
  return startDaemon(t, { config, wrap });
}

/**
 * haproxy with packaging/container/haproxy.cfg in front of `instances` (exactly 3), listening
 * on a free loopback port. Returns its Daemon with `base`, `hub` and `wsHub` as an instance has.
 */
export async function startHaproxy(t, instances, { wrap = [] } = {}) {
  need('haproxy');
  if (instances.length !== 3) throw new Error('haproxy.cfg names 3 instances');
  const port = await freePort();
  const env = { SNAPRTCD_LB_BIND: `127.0.0.1:${port}` };
  instances.forEach((d, i) => {
    env[`SNAPRTCD${i + 1}`] = `127.0.0.1:${d.port}`;
  });
  // -db: foreground; -V: it prints the polling mechanism once its listeners are bound.
  const lb = await spawnProcess(t, ['haproxy', '-db', '-V', '-f', HAPROXY_CFG], { wrap, env });
  await lb.waitLog(/as the polling mechanism/, 10000);
  lb.port = port;
  lb.base = `http://127.0.0.1:${port}`;
  // It is up once it answers /health through a backend (or it exited, saying why).
  await Promise.race([
    eventually('haproxy answering /health', 10000, async () => (await fetch(`${lb.base}/health`)).ok),
    lb.exited.then((e) => {
      throw new Error(`haproxy exited ${JSON.stringify(e)}\n${lb.logText()}`);
    }),
  ]);
  lb.hubPath = instances[0].hubPath;
  lb.hub = lb.base + lb.hubPath;
  lb.wsHub = `ws://127.0.0.1:${port}${lb.hubPath}`;
  return lb;
}

/**
 * The whole fleet: Redis (unless `backplane` is false), `n` instances and, with `haproxy`, the
 * balancer. `fleet.replace(i)` stops instance i with SIGTERM and starts a new one on its port;
 * `fleet.restartRedis()` starts Redis again on its port after it was killed.
 */
export async function startFleet(t, { n = 3, haproxy = false, backplane = true, signaling = {}, wrap = [] } = {}) {
  const redis = backplane ? await startRedis(t, { wrap }) : null;
  const opts = { redisUrl: redis?.url ?? null, signaling, wrap };
  const instances = await Promise.all(Array.from({ length: n }, () => startInstance(t, opts)));
  const fleet = { redis, instances, lb: null };
  if (haproxy) fleet.lb = await startHaproxy(t, instances, { wrap });
  fleet.replace = async (i) => {
    const old = fleet.instances[i];
    const exit = await old.stop({ graceMs: 5000 });
    fleet.instances[i] = await startInstance(t, { ...opts, port: old.port });
    return exit;
  };
  fleet.killRedis = async () => {
    fleet.redis.child.kill('SIGKILL');
    await withTimeout(fleet.redis.exited, 5000, 'redis-server to die');
  };
  fleet.restartRedis = async () => {
    fleet.redis = await startRedis(t, { port: fleet.redis.port, wrap });
    return fleet.redis;
  };
  return fleet;
}

/** GET /health as JSON. */
export async function health(daemon) {
  const res = await fetch(`${daemon.base}/health`, { headers: { accept: 'application/json' } });
  return res.json();
}

/** The value of an unlabelled metric in `daemon`'s /metrics (NaN when absent). */
export async function metric(daemon, name) {
  const text = await (await fetch(`${daemon.base}/metrics`)).text();
  const m = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm'));
  return m ? Number(m[1]) : NaN;
}

/**
 * Calls `probe` until it returns a truthy value, failing after `ms`: a condition polled with a
 * deadline (a probe that waits on an event carries its own timeout). `gapMs` between calls only
 * keeps a quick probe (an HTTP GET) from spinning a core; nothing depends on its length.
 */
export async function eventually(what, ms, probe, { gapMs = 20 } = {}) {
  const deadline = performance.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
      last = new Error(`${what}: not yet (${JSON.stringify(v)})`);
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) {
      throw new Error(`${what}: not within ${ms} ms; last: ${last?.message ?? last}`);
    }
    await new Promise((resolve) => setTimeout(resolve, gapMs));
  }
}
