// Time to first frame across the NAT lab (issue 13, item 9): WHEP POST to the first decoded
// frame in headless Chromium, median of N (10), for the device behind a cone NAT reached
// directly (server-reflexive) and through coturn (the browser's iceTransportPolicy "relay";
// with the device on STUN alone, then with the device's own TURN allocation as well).
// Runs inside the lab's internet namespace (run.sh). Prints a Markdown table.
import {
  SERVERS, DEVICE_PUBLIC, TURN_PORT, TURN_USER, TURN_PASS,
  cleanupWork, setNat, startCoturn, startDevice, launchBrowser, waitFor,
} from '../../tests/natlab/lab.mjs';

const N = Number(process.env.BENCH_RUNS || 10);
const STUN = `stun:${SERVERS}:${TURN_PORT}`;
const TURN = `turn:${SERVERS}:${TURN_PORT}?transport=udp`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// In the page (served by the device, so WHEP is same-origin): one WHEP viewer; gathering is
// done before the POST (the offer carries every candidate), so the time counts from the POST
// to the first decoded frame only.
const pageHelpers = () => {
  window.ttff = async (iceServers, policy) => {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const v = document.createElement('video');
    v.muted = true; v.autoplay = true; v.playsInline = true;
    document.body.appendChild(v);
    let started = 0;
    // When each step ended (ms after the POST): the answer applied, ICE connected, DTLS done.
    const at = {};
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === 'connected' && at.ice === undefined) at.ice = performance.now() - started;
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected' && at.dtls === undefined) at.dtls = performance.now() - started;
    };
    const first = new Promise((resolve) => {
      pc.ontrack = (ev) => {
        v.srcObject = new MediaStream([ev.track]);
        v.play().catch(() => {});
        v.requestVideoFrameCallback(() => resolve(performance.now() - started));
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    if (pc.iceGatheringState !== 'complete') {
      await new Promise((r) => { pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); }; });
    }
    started = performance.now();
    const r = await fetch('/whep', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    if (r.status !== 201) throw new Error(`WHEP ${r.status}: ${await r.text()}`);
    const location = r.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    at.answer = performance.now() - started;
    const ms = await Promise.race([first, new Promise((_, rej) => setTimeout(() => rej(new Error('no frame in 15 s')), 15000))]);
    let pair = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = s.selectedCandidatePairId;
    });
    const stats = await pc.getStats();
    const p = pair && stats.get(pair);
    const types = p ? `${stats.get(p.localCandidateId).candidateType}/${stats.get(p.remoteCandidateId).candidateType}` : '?';
    pc.close();
    v.remove();
    await fetch(location, { method: 'DELETE' });
    return { ms, types, at };
  };
};

setNat('cone', 'cone');
const coturn = await startCoturn();
// The device's [ice] per path: STUN alone for the direct path, STUN and TURN for the relayed one.
const ICE_STUN = `[ice]\nstun_servers = ["${STUN}"]\n`;
const ICE_TURN = `${ICE_STUN}turn_servers = [{ url = "${TURN}", username = "${TURN_USER}", credential = "${TURN_PASS}" }]\n`;
let device = null;
const browser = await launchBrowser();
const rows = [];
try {
  await browser.addInitScript(pageHelpers);
  const paths = [
    ['direct through the cone NATs (STUN)', ICE_STUN, [{ urls: STUN }], 'all'],
    ['through coturn (the browser relays over TURN/UDP; device STUN only)', ICE_STUN, [{ urls: TURN, username: TURN_USER, credential: TURN_PASS }], 'relay'],
    ['through coturn (the browser relays; the device has its TURN allocation too)', ICE_TURN, [{ urls: TURN, username: TURN_USER, credential: TURN_PASS }], 'relay'],
  ];
  for (const [name, deviceIce, ice, policy] of paths) {
    const runs = [];
    const steps = [];
    const types = new Set();
    let page = null;
    try {
      await device?.stop();
      device = await startDevice(deviceIce);
      page = await browser.newPage();
      await page.goto(`http://${DEVICE_PUBLIC}:8080/health`);
      // One unmeasured run first (the encoder opens for the first viewer).
      await page.evaluate(([ice, policy]) => window.ttff(ice, policy), [ice, policy]);
      for (let i = 0; i < N; i++) {
        const r = await page.evaluate(([ice, policy]) => window.ttff(ice, policy), [ice, policy]);
        runs.push(r.ms);
        steps.push(r.at);
        types.add(r.types);
        // The device drops the viewer on DELETE; wait until it has (no overlap between runs).
        await waitFor(async () => (await (await fetch(`http://${DEVICE_PUBLIC}:8080/health`, { headers: { Accept: 'application/json' } })).json()).viewers === 0, 5000, 'viewer gone');
      }
      const step = (k) => median(steps.map((a) => a[k] ?? NaN)).toFixed(0);
      rows.push({ name, median: median(runs), min: Math.min(...runs), max: Math.max(...runs), types: [...types].join(', '),
        steps: `${step('answer')} / ${step('ice')} / ${step('dtls')}` });
    } catch (e) {
      rows.push({ name, error: String(e.message || e).split('\n')[0] });
    } finally {
      await page?.close();
    }
  }
} finally {
  await browser.close();
  await device?.stop();
  await coturn.stop();
  cleanupWork();
}
console.log(`\n| path (N=${N}) | TTFF median | min | max | answer / ICE connected / DTLS connected (medians, ms after the POST) | selected pair (browser/device) |`);
console.log('|---|---|---|---|---|---|');
for (const r of rows) {
  if (r.error) console.log(`| ${r.name} | failed: ${r.error} | | | | |`);
  else console.log(`| ${r.name} | ${r.median.toFixed(0)} ms | ${r.min.toFixed(0)} | ${r.max.toFixed(0)} | ${r.steps} | ${r.types} |`);
}
if (rows.some((r) => r.error)) process.exitCode = 1;
