// A tiny static server for the browser tests: the SnapRTC pages and the npm browser builds
// they load. Listens on 127.0.0.1:0 and prints `static listening port=N`. Run as its own process
// so the test can start it inside the network namespace Chromium lives in.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const pkg = (name) => path.dirname(require.resolve(`${name}/package.json`));

const FILES = {
  '/initiator.html': path.join(here, 'initiator.html'),
  '/capture.html': path.join(here, 'capture.html'),
  '/device-initiator.html': path.join(here, 'device-initiator.html'),
  '/vendor/signalr.min.js': path.join(pkg('@microsoft/signalr'), 'dist/browser/signalr.min.js'),
  '/vendor/simplepeer.min.js': path.join(pkg('simple-peer'), 'simplepeer.min.js'),
  '/vendor/lz-string.min.js': path.join(pkg('lz-string'), 'libs/lz-string.min.js'),
};

const server = createServer(async (req, res) => {
  const file = FILES[new URL(req.url, 'http://x').pathname];
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  const type = file.endsWith('.html') ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8';
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(await readFile(file));
});
server.listen(0, '127.0.0.1', () => {
  console.log(`static listening port=${server.address().port}`);
});
// The parent closes our stdin when it is done (or dies): exit then.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
