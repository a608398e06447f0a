// The NAT lab (issue 13, item 7): a device and a browser, each behind its own NAT router, meet
// across a small "internet" that holds coturn (STUN and TURN) and a snaprtcd relay hub. Each case
// prints the selected ICE candidate pair that Chromium's getStats reports ("natlab: …" lines,
// collected by run.sh). Topology: topo.sh. Run through run.sh (root; it starts this file inside
// the internet namespace).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  SERVERS, DEVICE_PUBLIC, BROWSER_PUBLIC, HUB, ECHO_HUB, TURN_PORT, TURN_SECRET_PORT, TURN_USER, TURN_PASS, TURN_SECRET,
  cleanupWork, setNat, topo, udpDropped, waitFor, startCoturn, startRelay, startDevice, deviceHealth,
  startPageServer, launchBrowser, pairText, summary,
} from './lab.mjs';

const STUN = `stun:${SERVERS}:${TURN_PORT}`;
const turnUrl = (transport) => `turn:${SERVERS}:${TURN_PORT}?transport=${transport}`;

/**
 * The device's [ice] section. NATLAB_WITHOUT_ICE=1 leaves it out (a build without [ice], or the
 * control run: the device is then ICE-lite with host candidates only and (a)–(c) must fail).
 */
function iceSection({ stun = true, turn = null, credential = TURN_PASS } = {}) {
  if (process.env.NATLAB_WITHOUT_ICE === '1') return '';
  const lines = ['[ice]'];
  lines.push(`stun_servers = [${stun ? `"${STUN}"` : ''}]`);
  if (turn) lines.push(`turn_servers = [{ url = "${turnUrl(turn)}", username = "${TURN_USER}", credential = "${credential}" }]`);
  return lines.join('\n') + '\n';
}

/** The device's [[remote]] section: dial out to the lab's relay hub, waiting in `session`. */
const remoteSection = (session, url = HUB, extra = '') => `
[[remote]]
url = "${url}"
session = "${session}"
${extra}
`;

let coturn, browser, pages;
let device = null;
let relay = null;

before(async () => {
  coturn = await startCoturn();
  pages = await startPageServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await device?.stop();
  await relay?.stop();
  await coturn?.stop();
  await pages?.close();
  cleanupWork();
});

async function restartDevice(extra) {
  await device?.stop();
  device = null;
  device = await startDevice(extra);
  return device;
}

const tail = (p, n = 40) => (p ? p.log.slice(-n).join('\n') : '(not running)');

/** The device's viewer page (WHEP) through the forwarded port: frames, a still, the pair. */
async function viewerPage(what) {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  try {
    await page.goto(`http://${DEVICE_PUBLIC}:8080/`);
    await waitFor(() => page.evaluate(() => window.snaprtc.framesDecoded >= 5), 20000, `${what}: 5 decoded frames`);
    await waitFor(() => page.evaluate(() => window.snaprtc.stills >= 1), 10000, `${what}: a still on connect`);
    const pair = await waitFor(() => page.evaluate(() => window.__selectedPair()), 5000, `${what}: a selected pair`);
    // The device's own view, for the summary: its [ice] state in /health.
    const health = await deviceHealth().catch(() => ({}));
    summary(`${what} device /health ice: ${JSON.stringify(health.ice ?? null).slice(0, 400)}`);
    return pair;
  } catch (e) {
    const st = await page.evaluate(async () => ({
      snaprtc: window.snaprtc, pcs: window.__pcs.length, pair: await window.__selectedPair(),
      configs: window.__pcs.map((p) => p.config), sdp: window.__sdpSummary(),
    })).catch((err) => String(err));
    throw new Error(`${e.message}\npage: ${JSON.stringify(st)}\nconsole:\n${consoleLines.slice(-20).join('\n')}\ndevice log:\n${tail(device)}`);
  } finally {
    await page.close();
  }
}

/**
 * Candidates that a page in the browser's namespace gathers with `iceServers` (and
 * `iceTransportPolicy`): [{type, protocol, relayProtocol, address, port}].
 */
async function gather(iceServers, policy = 'all') {
  const page = await browser.newPage();
  try {
    await page.goto(`${pages.origin}/initiator.html?hub=none`).catch(() => {});
    return await page.evaluate(async ([iceServers, policy]) => {
      const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
      pc.createDataChannel('x');
      const out = [];
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.candidate) {
          const c = e.candidate;
          out.push({ type: c.type, protocol: c.protocol, relayProtocol: c.relayProtocol || null, address: c.address, port: c.port });
        }
      };
      const done = new Promise((r) => { pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); }; });
      await pc.setLocalDescription(await pc.createOffer());
      await Promise.race([done, new Promise((r) => setTimeout(r, 10000))]);
      pc.close();
      return out;
    }, [iceServers, policy]);
  } finally {
    await page.close();
  }
}

test('lab: the NATs map as they should, and coturn serves STUN and TURN (UDP, TCP, REST secret)', async () => {
  const twoStun = [{ urls: STUN }, { urls: `stun:${SERVERS}:${TURN_SECRET_PORT}` }];
  // Cone: one mapping (the same public port) whichever STUN server asks.
  setNat('cone', 'cone');
  let c = (await gather(twoStun)).filter((x) => x.type === 'srflx');
  assert.ok(c.length >= 1 && c.every((x) => x.address === BROWSER_PUBLIC), JSON.stringify(c));
  assert.equal(new Set(c.map((x) => x.port)).size, 1, `cone NAT: one public port ${JSON.stringify(c)}`);
  // Symmetric: a port per destination.
  setNat('cone', 'symmetric');
  try {
    c = (await gather(twoStun)).filter((x) => x.type === 'srflx');
    assert.equal(new Set(c.map((x) => x.port)).size, 2, `symmetric NAT: two public ports ${JSON.stringify(c)}`);
    // TURN with long-term credentials (UDP), and with the REST secret's ephemeral credentials.
    const relayed = (await gather([{ urls: turnUrl('udp'), username: TURN_USER, credential: TURN_PASS }], 'relay'));
    assert.ok(relayed.some((x) => x.type === 'relay' && x.address === SERVERS), JSON.stringify(relayed));
    const user = `${Math.floor(Date.now() / 1000) + 600}:natlab`;
    const rest = createHmac('sha1', TURN_SECRET).update(user).digest('base64');
    const viaSecret = await gather([{ urls: `turn:${SERVERS}:${TURN_SECRET_PORT}?transport=udp`, username: user, credential: rest }], 'relay');
    assert.ok(viaSecret.some((x) => x.type === 'relay'), JSON.stringify(viaSecret));
    // UDP to the servers blocked: TURN over TCP still allocates. (Case (c) checks that the
    // routers dropped UDP meanwhile.)
    topo('udp-to-servers', 'block');
    try {
      const tcp = await gather([{ urls: turnUrl('tcp'), username: TURN_USER, credential: TURN_PASS }], 'relay');
      assert.ok(tcp.some((x) => x.type === 'relay' && x.relayProtocol === 'tcp'), JSON.stringify(tcp));
    } finally {
      topo('udp-to-servers', 'allow');
    }
  } finally {
    setNat('cone', 'cone');
  }
  summary('lab: cone NAT keeps one public port, symmetric NAT one per destination; coturn allocates over UDP, TCP (UDP blocked) and with REST credentials');
});

test('(a) cone NATs: the viewer page reaches the device by WHEP; the pair is server-reflexive', async () => {
  setNat('cone', 'cone');
  await restartDevice(iceSection());
  const pair = await viewerPage('(a)');
  summary(`(a) cone NATs, WHEP viewer page: ${pairText(pair)}`);
  assert.ok(['srflx', 'prflx'].includes(pair.remote.type) || ['srflx', 'prflx'].includes(pair.local.type),
    `a server- or peer-reflexive candidate: ${pairText(pair)}`);
  assert.notEqual(pair.local.type, 'relay', pairText(pair));
  assert.notEqual(pair.remote.type, 'relay', pairText(pair));
});

// (b) and (c): only the relay carries the media. The lab's internet drops packets to the LANs'
// private addresses as the real one does (topo.sh: a default route to nowhere); without it
// coturn's relayed send to a viewer's host candidate failed with ENETUNREACH and coturn closed
// the allocation that sent it, the device's and the browser's alike.
test('(b) symmetric NATs: only TURN works, and the selected pair is relayed', async () => {
  setNat('symmetric', 'symmetric');
  try {
    await restartDevice(iceSection({ turn: 'udp' }));
    const pair = await viewerPage('(b)');
    summary(`(b) symmetric NATs, WHEP viewer page: ${pairText(pair)}`);
    assert.ok(pair.local.type === 'relay' || pair.remote.type === 'relay', `a relayed candidate: ${pairText(pair)}`);
  } finally {
    setNat('cone', 'cone');
  }
});

test('(c) UDP to coturn blocked: TURN over TCP carries it', async () => {
  setNat('symmetric', 'symmetric');
  topo('udp-to-servers', 'block');
  try {
    await restartDevice(iceSection({ stun: false, turn: 'tcp' }));
    const pair = await viewerPage('(c)');
    const dropped = udpDropped();
    assert.ok(dropped > 0, 'the routers dropped UDP to coturn meanwhile');
    summary(`(c) UDP to coturn blocked (${dropped} datagrams dropped), symmetric NATs, WHEP viewer page: ${pairText(pair)}`);
    assert.ok(pair.local.type === 'relay' || pair.remote.type === 'relay', `a relayed candidate: ${pairText(pair)}`);
    if (pair.local.type === 'relay') assert.equal(pair.local.relayProtocol, 'tcp', pairText(pair));
  } finally {
    topo('udp-to-servers', 'allow');
    setNat('cone', 'cone');
  }
});

test('(d) a wrong TURN credential: a clear log line, and /health says so', async () => {
  await restartDevice(iceSection({ stun: false, turn: 'udp', credential: 'not-the-password' }));
  const line = await waitFor(
    // snaprtcd's own line (not the TURN crate's traces): "TURN allocation failed: 401 …".
    () => device.log.find((l) => /snaprtcd::/.test(l) && /\b(WARN|ERROR)\b/.test(l) && /turn/i.test(l) && /(401|unauthori[sz]ed|credential)/i.test(l)),
    15000, 'a log line about the TURN credential',
  ).catch((e) => { throw new Error(`${e.message}\ndevice log:\n${tail(device)}`); });
  let health;
  await waitFor(async () => {
    health = await deviceHealth();
    const turn = JSON.stringify(Object.fromEntries(Object.entries(health).filter(([k]) => /ice|turn/i.test(k))));
    return /(401|unauthori[sz]ed|credential)/i.test(turn);
  }, 10000, '/health naming the TURN credential problem').catch((e) => { throw new Error(`${e.message}\n${JSON.stringify(health)}`); });
  summary(`(d) wrong TURN credential: log "${line.trim().slice(0, 240)}"; /health ice: ${JSON.stringify(health.ice ?? null).slice(0, 300)}`);
});

/** A stock SnapRTC initiator page in the browser's namespace; resolves to its page. */
async function openInitiator(session, { ice = [{ urls: STUN }], hub = HUB } = {}) {
  const page = await browser.newPage();
  const q = `hub=${encodeURIComponent(hub)}&session=${encodeURIComponent(session)}&ice=${encodeURIComponent(JSON.stringify(ice))}`;
  await page.goto(`${pages.origin}/initiator.html?${q}`);
  return page;
}

const initiatorState = (page) => page.evaluate(async () => ({ state: window.state, log: window.log, sdp: window.__sdpSummary() }));

/** Wait until the initiator connected, got a JPEG still and decoded video; its pair. */
async function initiatorDone(page, what, ms = 20000) {
  try {
    await waitFor(async () => {
      const st = await page.evaluate(() => window.state);
      if (st.error) throw new Error(`${what}: page error ${st.error}`);
      return st.connected && st.images.length >= 1 && st.framesDecoded >= 5;
    }, ms, `${what}: connected, a still and 5 frames`);
    const st = await page.evaluate(() => window.state);
    const img = st.images[0];
    assert.deepEqual(img.soi, [0xff, 0xd8, 0xff], 'a JPEG');
    assert.deepEqual([img.width, img.height], [320, 240]);
    return await waitFor(() => page.evaluate(() => window.__selectedPair()), 5000, `${what}: a selected pair`);
  } catch (e) {
    const st = await initiatorState(page).catch((err) => String(err));
    throw new Error(`${e.message}\npage: ${JSON.stringify(st)}\ndevice log:\n${tail(device)}\nrelay log:\n${tail(relay, 20)}`);
  }
}

test('(e) dial-out: a stock initiator page on the internet hub reaches the device behind its NAT', async () => {
  setNat('cone', 'cone');
  relay = await startRelay();
  // announce_interval 6 s (its shortest): the session is busy that long after an answer, and
  // (f) waits for the device to be idle again before it restarts the hub.
  await restartDevice(iceSection() + remoteSection('natlab-e', HUB, 'announce_interval = "6s"'));
  const page = await openInitiator('natlab-e');
  try {
    const pair = await initiatorDone(page, '(e)');
    summary(`(e) dial-out through the relay hub, cone NATs, SnapRTC initiator: ${pairText(pair)}`);
    const st = await page.evaluate(() => ({ ...window.state, log: window.log }));
    // A second one would come from the device announcing again before this page connected
    // (and left the hub): the device waits for its viewer to connect (through TURN and two
    // NATs this once took longer than the 6 s announce_interval after the answer, the old
    // rule), and the log says how long the connection took.
    assert.equal(st.signalStarts, 1,
      `exactly one signalStart\npage log:\n${st.log.join('\n')}\ndevice log:\n${tail(device, 60)}`);
  } finally {
    await page.close();
  }
});

test('(f) hub restart: the device dials in again and a new initiator succeeds within 10 s', async () => {
  assert.ok(relay, 'needs (e)\'s relay');
  // The restart hits an idle device (not one still settling after (e)'s exchange).
  await waitFor(async () => (await deviceHealth()).remotes?.[0]?.state === 'idle', 15000, 'the device idle on the hub');
  const mark = device.log.length;
  await relay.stop('SIGKILL');
  relay = await startRelay();
  const t0 = Date.now();
  const page = await openInitiator('natlab-e');
  try {
    const pair = await initiatorDone(page, '(f)', 10000);
    const ms = Date.now() - t0;
    const back = device.log.slice(mark).find((l) => /remote hub: idle/.test(l));
    summary(`(f) hub killed and restarted: the device back on it (${back ? back.match(/connects=\d+/)?.[0] : '?'}), a new initiator connected ${ms} ms after the hub was back: ${pairText(pair)}`);
    assert.ok(ms <= 10000, `${ms} ms`);
  } finally {
    await page.close();
  }
});

test('(g) initiators in turn on a hub that echoes as the original: each one signalStart, a connection, a still', async () => {
  setNat('cone', 'cone');
  // A relay with echo_to_sender sends every message back to its sender and starts no initiator
  // on join, as the .NET hub: the device announces while idle, every announce_interval (its
  // shortest, 6 s, to keep the suite short).
  const echo = await startRelay({ echo: true });
  const opened = [];
  try {
    await restartDevice(iceSection() + remoteSection('natlab-g', ECHO_HUB, 'announce_interval = "6s"'));
    const p1 = await openInitiator('natlab-g', { hub: ECHO_HUB });
    opened.push(p1);
    await waitFor(() => p1.evaluate(() => window.state.signalStarts >= 1), 15000, '1st initiator: signalStart')
      .catch(async (e) => { throw new Error(`${e.message}\n${JSON.stringify(await initiatorState(p1))}\ndevice log:\n${tail(device)}\nhub log:\n${tail(echo, 20)}`); });
    // The 2nd joins while the 1st negotiates.
    const p2 = await openInitiator('natlab-g', { hub: ECHO_HUB });
    opened.push(p2);
    await waitFor(() => p2.evaluate(() => window.state.synced), 10000, '2nd initiator: synced');
    const overlapped = !(await p1.evaluate(() => window.state.connected));
    const pair1 = await initiatorDone(p1, '(g) 1st', 20000);
    const pair2 = await initiatorDone(p2, '(g) 2nd', 25000);
    // The 3rd after both.
    const p3 = await openInitiator('natlab-g', { hub: ECHO_HUB });
    opened.push(p3);
    const pair3 = await initiatorDone(p3, '(g) 3rd', 25000);
    const counts = await Promise.all(opened.map((p) => p.evaluate(() => [window.state.signalStarts, window.state.offers, window.state.answers])));
    summary(`(g) three initiators in turn on an echoing hub (2nd joined ${overlapped ? 'while the 1st negotiated' : 'after the 1st connected'}), [signalStart, offers, answers] each ${JSON.stringify(counts)}: ${[pair1, pair2, pair3].map(pairText).join('; ')}`);
    for (const [i, [starts, offers, answers]] of counts.entries()) {
      assert.equal(starts, 1, `initiator ${i + 1}: exactly one signalStart`);
      assert.equal(offers, 1, `initiator ${i + 1}: one offer`);
      assert.equal(answers, 1, `initiator ${i + 1}: one answer`);
    }
  } finally {
    for (const p of opened) await p.close();
    await echo.stop();
  }
});
