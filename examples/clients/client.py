#!/usr/bin/env python3
"""A message-framing client for npipe servers (e.g. examples/kv.lua), standard library only.

usage: client.py PATH MESSAGE...

Connects to the Unix socket PATH (what the server prints on start), sends each MESSAGE
as one message (a 4-byte big-endian length, then the payload) and prints each reply on
a line. Exits 1 on any error (no server, the server hung up, ...), 2 on bad usage.
"""
import socket
import struct
import sys

TIMEOUT = 5.0
MAX_REPLY = 16 * 1024 * 1024


def recv_exact(sock, n):
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise ConnectionError("the server closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def transact(sock, message):
    data = message.encode("utf-8")
    sock.sendall(struct.pack(">I", len(data)) + data)
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    if length > MAX_REPLY:
        raise ValueError("reply too large: %d bytes" % length)
    return recv_exact(sock, length)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: client.py PATH MESSAGE...\n")
        return 2
    path, messages = argv[1], argv[2:]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        try:
            for message in messages:
                reply = transact(sock, message)
                sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
                sys.stdout.flush()
        finally:
            sock.close()
    except (OSError, ValueError) as e:
        sys.stderr.write("client.py: %s: %s\n" % (path, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
