// Node.js echo server for the benchmark.
//   node bench/servers/node_echo.js SOCKET_PATH
// The idiomatic Node echo: socket.pipe(socket) (which also handles backpressure).
'use strict';
const net = require('net');
const fs = require('fs');

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: node_echo.js SOCKET_PATH\n');
  process.exit(2);
}
try { fs.unlinkSync(path); } catch (e) { /* not there */ }

const server = net.createServer((socket) => {
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});
server.on('error', (e) => { process.stderr.write(`node_echo: ${e.message}\n`); process.exit(1); });
server.listen({ path, backlog: 511 });

function stop() {
  server.close();
  try { fs.unlinkSync(path); } catch (e) { /* gone */ }
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
