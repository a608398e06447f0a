// Writes tests/fixtures/lz-string-vectors.json: random strings and what the npm lz-string
// (the library SnapRTC pages use) makes of them with compressToEncodedURIComponent. The Rust
// decoder (src/signaling/lzstring.rs) is checked against these vectors by `cargo test`.
//
//   cd tests/node && npm ci && node lz-vectors.mjs
//
// Seeded, so re-running it gives the same file unless lz-string changes.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import LZString from 'lz-string';

let seed = 0x5eed1234;
function rand() {
  // xorshift32
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed / 0x100000000;
}
const int = (n) => Math.floor(rand() * n);
const pick = (s) => s[int(s.length)];

const alphabets = [
  'ab',
  'abcdefghijklmnopqrstuvwxyz ',
  'v=0\r\no=- 1 2 IN IP4 127.0.0.1 a=candidate:1 udp 2130706431 typ host {}":,',
  'é✓ßø€中文字😀🎥',
];

function randomString() {
  const kind = int(6);
  const len = [0, 1, 8, 64, 300, 2000][int(6)];
  let s = '';
  for (let i = 0; i < len; i++) {
    if (kind === 5) {
      // Any UTF-16 code unit, lone surrogates included.
      s += String.fromCharCode(int(0x10000));
    } else if (kind === 4) {
      s += String.fromCodePoint(int(0x110000 - 0x800) + (int(2) ? 0 : 0x800));
    } else {
      s += pick([...alphabets[kind]]);
    }
  }
  return s;
}

const vectors = [];
for (const fixed of ['', 'a', 'a'.repeat(1000), JSON.stringify({ type: 'offer', sdp: 'v=0\r\n' })]) {
  vectors.push(fixed);
}
for (let i = 0; i < 150; i++) vectors.push(randomString());

const out = vectors.map((s) => ({
  units: Array.from({ length: s.length }, (_, i) => s.charCodeAt(i)),
  packed: LZString.compressToEncodedURIComponent(s),
}));
const path = fileURLToPath(new URL('../fixtures/lz-string-vectors.json', import.meta.url));
writeFileSync(path, JSON.stringify({ library: 'lz-string 1.5.0', vectors: out }) + '\n');
console.log(`wrote ${out.length} vectors to ${path}`);
