#!/usr/bin/env node
// A message-framing client for npipe servers (e.g. examples/kv.lua); only Node's `net`.
//
// usage: node client.js PATH MESSAGE...
//
// Connects to the Unix socket PATH (what the server prints on start), sends each MESSAGE
// as one message (a 4-byte big-endian length, then the payload) and prints each reply on
// a line. Exits 1 on any error (no server, the server hung up, ...), 2 on bad usage.
'use strict';
const net = require('net');

const TIMEOUT_MS = 5000;
const MAX_REPLY = 16 * 1024 * 1024;

function fail(msg, code) {
  process.stderr.write(`client.js: ${msg}\n`);
  process.exitCode = code || 1;
}

function main(argv) {
  if (argv.length < 2) {
    fail('usage: client.js PATH MESSAGE...', 2);
    return;
  }
  const [path, ...messages] = argv;
  let buffer = Buffer.alloc(0);
  let next = 0; // index of the message whose reply we wait for
  let finished = false;

  const sock = net.createConnection({ path });
  sock.setTimeout(TIMEOUT_MS);

  function done(err) {
    if (finished) return;
    finished = true;
    if (err) fail(`${path}: ${err}`);
    sock.destroy();
  }

  function send() {
    if (next >= messages.length) {
      done(null);
      return;
    }
    const payload = Buffer.from(messages[next], 'utf8');
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length, 0);
    sock.write(Buffer.concat([header, payload]));
  }

  sock.on('connect', send);
  sock.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (!finished && buffer.length >= 4) {
      const length = buffer.readUInt32BE(0);
      if (length > MAX_REPLY) {
        done(`reply too large: ${length} bytes`);
        return;
      }
      if (buffer.length < 4 + length) break;
      const reply = buffer.subarray(4, 4 + length).toString('utf8');
      buffer = buffer.subarray(4 + length);
      process.stdout.write(reply + '\n');
      next += 1;
      send();
    }
  });
  sock.on('timeout', () => done('timed out waiting for a reply'));
  sock.on('error', (err) => done(err.message));
  sock.on('close', () => {
    if (!finished) done('the server closed the pipe');
  });
}

main(process.argv.slice(2));
