// Writes the generated part of the fuzz seed corpora under fuzz/corpus/ (the rest, real
// browser offers and configs, is committed as captured). Run it after changing a target's
// input format, then commit what changed:
//
//   npm ci --prefix tests/node      # for lz-string, the library SnapRTC pages use
//   node tests/fuzz/make_seeds.mjs  # needs ffmpeg with libx264 for the Annex-B streams
//
// fuzz/corpus/offer/chromium-*.sdp are real offers from Chromium 14x (headless), made by a page
// that does what simple-peer does with trickle:false: `addTransceiver('video', {direction:
// 'recvonly'})` (or not), `createDataChannel`, `setLocalDescription`, wait for ICE gathering
// to complete, print `localDescription.sdp`. Their host candidates are mDNS `.local` names,
// as Chromium sends them.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const corpus = join(root, 'fuzz', 'corpus');
const require = createRequire(join(root, 'tests', 'node', 'package.json'));
const LZString = require('lz-string');

const write = (target, name, data) => writeFileSync(join(corpus, target, name), data);
const offers = ['chromium-video-data.sdp', 'chromium-data-only.sdp'].map((f) =>
  readFileSync(join(corpus, 'offer', f), 'utf8'));

// --- snappeer: payload text, as `signalCapture(payload)` carries it.
const lz = (signal) => LZString.compressToEncodedURIComponent(JSON.stringify(signal));
write('snappeer', 'lz-offer-video.txt', lz({ type: 'offer', sdp: offers[0] }));
write('snappeer', 'lz-offer-data.txt', lz({ type: 'offer', sdp: offers[1] }));
write('snappeer', 'lz-answer.txt', lz({ type: 'answer', sdp: offers[1].replace('actpass', 'active') }));
write('snappeer', 'lz-candidate.txt', lz({ type: 'candidate', candidate: { candidate: 'candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host', sdpMLineIndex: 0, sdpMid: '0' } }));
write('snappeer', 'lz-renegotiate.txt', lz({ renegotiate: true }));
write('snappeer', 'lz-transceiver.txt', lz({ type: 'transceiverRequest', transceiverRequest: { kind: 'video', init: { direction: 'recvonly' } } }));
// What compressing a run of one character gives: each code names the next dictionary entry
// (the shape of issue 11's decompression bomb, kept far below the budget here).
write('snappeer', 'lz-run.txt', lz({ type: 'offer', sdp: 'v=0\r\n' + 'a'.repeat(3000) }));
write('snappeer', 'json-offer.txt', JSON.stringify({ type: 'offer', sdp: offers[1] }));
write('snappeer', 'json-candidate.txt', JSON.stringify({ candidate: { candidate: 'candidate:2 1 udp 1 x.local 4001 typ host', sdpMid: '0' } }));

// --- signalr: a script of operations (see fuzz/fuzz_targets/signalr.rs).
const RS = '\x1e';
const u16 = (n) => Buffer.from([n & 0xff, (n >> 8) & 0xff]);
const text = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([Buffer.from([0]), u16(b.length), b]); };
const binary = (b) => Buffer.concat([Buffer.from([1]), u16(b.length), b]);
const advance = (ms) => Buffer.concat([Buffer.from([2]), u16(Math.min(0xffff, Math.round(ms / 4)))]);
const fire = Buffer.from([3]);
const [activity, sent, close, disconnect] = [4, 5, 6, 7].map((op) => Buffer.from([op]));
const limit = (i) => Buffer.from([i]); // 0: 64 B, 1: 1 KiB, 2: 64 KiB
const script = (...parts) => Buffer.concat(parts);
const hs = `{"protocol":"json","version":1}${RS}`;
const rec = (o) => JSON.stringify(o) + RS;
const invoke = (id, target, args) => rec({ type: 1, invocationId: String(id), target, arguments: args });
const send = (target, args) => rec({ type: 1, target, arguments: args });

write('signalr', 'handshake.bin', script(limit(1), text(hs)));
write('signalr', 'handshake-split.bin', script(limit(1), text(hs.slice(0, 9)), text(hs.slice(9))));
write('signalr', 'handshake-and-sync-one-frame.bin',
  script(limit(1), text(hs + invoke(0, 'Sync', ['session-1', false]) + rec({ type: 6 }))));
write('signalr', 'exchange.bin', script(limit(2), text(hs),
  text(invoke(0, 'Sync', ['s1', true])),
  text(send('SignalCapture', ['s1', lz({ type: 'offer', sdp: offers[1] })])),
  text(invoke(1, 'signalinitiator', ['s1', lz({ type: 'answer', sdp: offers[1] })])),
  text(rec({ type: 7 }))));
write('signalr', 'record-across-frames.bin', script(limit(2), text(hs),
  text(invoke(2, 'SignalCapture', ['s2', 'N4IgLgnmA']).slice(0, 20)),
  text(invoke(2, 'SignalCapture', ['s2', 'N4IgLgnmA']).slice(20) + rec({ type: 6 }))));
write('signalr', 'errors-keep-open.bin', script(limit(1), text(hs),
  text(invoke(3, 'Nope', [])), text(send('Nope', [1])),
  text(invoke(4, 'Sync', [1, true])), text(invoke(5, 'Sync', ['a b', false])),
  text(invoke(6, 'SignalCapture', ['s', {}])),
  text(rec({ type: 4, invocationId: '7', target: 'Stream', arguments: [] }) + rec({ type: 5, invocationId: '7' }))));
write('signalr', 'keepalive.bin', script(limit(1), text(hs), fire, advance(15000),
  text(rec({ type: 6 })), activity, sent, fire, fire, advance(30000)));
write('signalr', 'handshake-timeout.bin', script(limit(1), advance(14000), fire, text(hs)));
write('signalr', 'bad-handshakes.bin', script(limit(1), text(`{"protocol":"messagepack","version":1}${RS}`)));
write('signalr', 'bad-version.bin', script(limit(1), text(`{"protocol":"json","version":2}${RS}`)));
write('signalr', 'garbage-after-handshake.bin', script(limit(1), text(hs), text(`{"type":99}${RS}[1,2]${RS}`)));
write('signalr', 'binary.bin', script(limit(1), text(hs), binary(Buffer.from([0x91, 0x06]))));
write('signalr', 'oversized.bin', script(limit(0), text(hs.slice(0, 30)), text(hs),
  text(rec({ type: 6, pad: 'x'.repeat(100) }))));
write('signalr', 'shell-close.bin', script(limit(1), text(hs), sent, close, text(rec({ type: 6 })), disconnect));
write('signalr', 'disconnect.bin', script(limit(1), text(hs), disconnect, fire));
write('signalr', 'deep-json.bin', script(limit(1), text(hs),
  text(`{"type":1,"target":"Sync","arguments":[${'['.repeat(200)}${']'.repeat(200)}]}${RS}`)));

// --- sdpfrag: WHEP PATCH bodies (RFC 8840 / RFC 9725 §4.3.1).
const frag = (...lines) => lines.join('\r\n') + '\r\n';
write('sdpfrag', 'host-and-srflx.txt', frag('a=ice-options:trickle ice2', 'a=group:BUNDLE 0', 'm=video 9 UDP/TLS/RTP/SAVPF 0',
  'a=mid:0', 'a=ice-ufrag:R05X', 'a=ice-pwd:tuug5tz1LjYyF8cEFUO8fHjc',
  'a=candidate:1387637174 1 udp 2122260223 192.0.2.10 61764 typ host generation 0 ufrag R05X network-id 1',
  'a=candidate:3471623853 1 udp 1686052607 198.51.100.7 61764 typ srflx raddr 192.0.2.10 rport 61764 generation 0',
  'a=candidate:2 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active',
  'a=candidate:3 1 udp 41885439 203.0.113.5 3478 typ relay raddr 198.51.100.7 rport 61764'));
write('sdpfrag', 'mdns-and-ipv6.txt', frag('a=ice-ufrag:abcd', 'a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa', 'm=audio 9 RTP/AVP 0', 'a=mid:0',
  'a=candidate:3383552080 1 udp 2113937151 78d7ced3-82f4-4b31-928b-3038d7f0f9f8.local 36016 typ host generation 0 network-cost 999',
  'a=candidate:4 1 UDP 2122194687 2001:db8::1 51000 typ host', 'a=end-of-candidates'));
write('sdpfrag', 'restart.txt', frag('a=ice-ufrag:new1', 'a=ice-pwd:bbbbbbbbbbbbbbbbbbbbbbbb'));

// --- remote: a script of operations (see fuzz/fuzz_targets/remote.rs).
{
  const frame = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([Buffer.from([0]), u16(b.length), b]); };
  const wait = (ms) => Buffer.concat([Buffer.from([1]), u16(Math.min(0xffff, Math.round(ms / 16)))]);
  const [timer, failed, answer, offer, hello] = [2, 3, 5, 6, 7].map((op) => Buffer.from([op]));
  const open = (startOnJoin) => Buffer.from([4, startOnJoin ? 1 : 0]);
  const ping = frame(rec({ type: 6 }));
  write('remote', 'idle-dotnet.bin', script(open(false), hello, wait(7000), ping, wait(7000), timer, timer));
  write('remote', 'serve-snaprtcd.bin', script(open(true), hello, offer, offer, wait(1000), answer, timer, ping, timer));
  write('remote', 'echoes.bin', script(open(false), hello,
    frame(rec({ type: 1, target: 'signalStart', arguments: [] })), offer, answer,
    frame(rec({ type: 1, target: 'signalInitiator', arguments: ['answer'] }) + rec({ type: 3, invocationId: '1' })), timer));
  write('remote', 'reconnect.bin', script(open(false), hello, offer, failed, timer, open(false), hello, timer, timer, answer));
  write('remote', 'refused.bin', script(open(false), frame(rec({ error: 'nope' })), timer, timer, open(true), hello,
    frame(rec({ type: 3, invocationId: '1', error: 'Session is full (8 members).' })), timer));
  write('remote', 'split-and-close.bin', script(open(true), frame('{'), frame('}' + RS + '{"type":1,"target":"signal'),
    frame('Capture","arguments":["x"]}' + RS), frame(rec({ type: 7, error: 'bye', allowReconnect: true })), timer));
}

// --- annexb: two header bytes (AU limit, largest piece; see annexb.rs) + a real H.264 stream.
const tmp = mkdtempSync(join(tmpdir(), 'snaprtcd-seeds-'));
const h264 = (name, x264) => {
  const out = join(tmp, `${name}.h264`);
  execFileSync('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=96x64:rate=10', '-frames:v', '12',
    '-pix_fmt', 'yuv420p', '-c:v', 'libx264', '-profile:v', 'baseline', '-g', '5', '-x264-params', x264, '-f', 'h264', out]);
  return readFileSync(out);
};
write('annexb', 'x264-baseline.bin', Buffer.concat([Buffer.from([11, 12]), h264('plain', 'log-level=error')]));
write('annexb', 'x264-aud-small-reads.bin', Buffer.concat([Buffer.from([10, 3]), h264('aud', 'aud=1:log-level=error')]));
write('annexb', 'x264-slices-tight-limit.bin', Buffer.concat([Buffer.from([4, 8]), h264('slices', 'slices=3:repeat-headers=1:log-level=error')]));
rmSync(tmp, { recursive: true });
console.log('seeds written under', corpus);
