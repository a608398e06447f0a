// PeerJS's server (npm `peer`) as the benchmark's baseline: the library's own PeerServer with
// its defaults, except a connection limit high enough for the benchmark and no per-connection
// console logging (the stock `peerjs` CLI prints a line per connect and disconnect).
//   node server.mjs [port] [concurrent_limit]
import { PeerServer } from 'peer';

const port = Number(process.argv[2] || 9000);
const limit = Number(process.argv[3] || 20000);
PeerServer({ host: '127.0.0.1', port, path: '/', concurrent_limit: limit }, (server) => {
  const { address, port: bound } = server.address();
  console.log(`peerjs listening addr=${address}:${bound} pid=${process.pid}`);
});
