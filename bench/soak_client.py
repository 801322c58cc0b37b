#!/usr/bin/env python3
"""Plain-socket clients for bench/soak.lua's end phases (not npipe: Python's own socket).

    python3 bench/soak_client.py KIND PATH GID0 SECONDS PAD SPEC...

KIND is "halfclose" or "slow"; PATH the server's socket; client i (from 0) has the id
GID0 + i; SECONDS bounds the whole run; PAD is how many "p" bytes the server appends to
each echo. Each SPEC is COUNT:DELAY for one client: it sends COUNT messages and reads its
replies, sleeping DELAY milliseconds after each read of at most 4096 bytes.

  halfclose: send COUNT messages, shutdown(SHUT_WR), read replies until EOF.
  slow:      send COUNT messages from a thread of its own while reading the replies slowly;
             close after the last reply, or stop at the server's EOF (or ECONNRESET, which
             Linux reports, after every queued byte was read, when the server closed with
             some of this client's input unread). Once a send fails (the server closed),
             it reads the rest without sleeping, so the run stays short.

Message framing: 4-byte big-endian length, then "H" or "S", the client id, the sequence
number (from 1) and the Adler-32 of the payload (each 4-byte big-endian), then the payload.
The reply to a message must be the message itself followed by PAD bytes "p", in order.
Prints one line per client:

    client gid=N sent=N received=N bad=N partial=N end=WORD first=TEXT

sent counts messages whose sendall completed; received the complete, correct replies;
partial the bytes of an incomplete reply at the end; end is done, EOF, ECONNRESET,
timeout or an error name. Exits 0 unless a client was cut short by the time limit or
ran into an error other than the end of the connection.
"""
import socket
import struct
import sys
import threading
import time
import zlib

PAYLOADS = [bytes((k * 37 + i * 101 + (i * i) % 7) % 256 for i in range(8 + 4 * k)) for k in range(64)]
SUMS = [zlib.adler32(p) for p in PAYLOADS]


def message(tag, gid, seq):
    k = (seq * 7 + gid) % 64
    return tag + struct.pack(">III", gid, seq, SUMS[k]) + PAYLOADS[k]


def frame(msg):
    return struct.pack(">I", len(msg)) + msg


class Client:
    def __init__(self, kind, path, gid, count, delay, pad, deadline):
        self.kind, self.path, self.gid, self.count = kind, path, gid, count
        self.delay, self.pad, self.deadline = delay, b"p" * pad, deadline
        self.tag = b"H" if kind == "halfclose" else b"S"
        self.sent = self.received = self.bad = self.partial = 0
        self.end, self.first = "-", "-"
        self.send_error = None

    def note(self, text):
        if self.first == "-":
            self.first = text.replace(" ", "_")

    def left(self):
        return max(0.05, self.deadline - time.monotonic())

    def send_all(self, sock):
        try:
            for seq in range(1, self.count + 1):
                sock.settimeout(self.left())
                sock.sendall(frame(message(self.tag, self.gid, seq)))
                self.sent = seq
            if self.kind == "halfclose":
                sock.shutdown(socket.SHUT_WR)
        except socket.timeout:
            self.send_error = "timeout"
        except OSError as e:  # the server ended the connection (EPIPE, ECONNRESET)
            self.send_error = type(e).__name__

    def run(self):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.left())
            sock.connect(self.path)
        except OSError as e:
            self.end = "connect"
            self.note("connect: %s" % e)
            return
        sender = threading.Thread(target=self.send_all, args=(sock,), daemon=True)
        sender.start()
        buf = b""
        seq = 0
        try:
            while True:
                if self.kind == "slow" and self.received == self.count:
                    self.end = "done"
                    break
                sock.settimeout(self.left())
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    self.end = "ECONNRESET"
                    break
                if not data:
                    self.end = "EOF"
                    break
                buf += data
                pos = 0
                while len(buf) - pos >= 4:
                    (n,) = struct.unpack_from(">I", buf, pos)
                    if len(buf) - pos - 4 < n:
                        break
                    reply = buf[pos + 4:pos + 4 + n]
                    pos += 4 + n
                    seq += 1
                    if reply == message(self.tag, self.gid, seq) + self.pad:
                        self.received += 1
                    else:
                        self.bad += 1
                        self.note("wrong reply at %d" % seq)
                buf = buf[pos:]
                if self.delay > 0 and self.send_error is None:
                    time.sleep(self.delay)
        except socket.timeout:
            self.end = "timeout"
            self.note("out of time after %d replies" % self.received)
        except OSError as e:
            self.end = type(e).__name__
            self.note(str(e))
        self.partial = len(buf)
        sender.join(self.left())
        if sender.is_alive():
            self.note("sender still blocked")
        elif self.send_error == "timeout":
            self.note("send timed out")
        sock.close()


def main(argv):
    if len(argv) < 6 or argv[0] not in ("halfclose", "slow"):
        sys.stderr.write(__doc__)
        return 2
    kind, path, gid0, seconds, pad = argv[0], argv[1], int(argv[2]), float(argv[3]), int(argv[4])
    deadline = time.monotonic() + seconds
    clients = []
    for i, spec in enumerate(argv[5:]):
        count, delay = spec.split(":")
        clients.append(Client(kind, path, gid0 + i, int(count), float(delay) / 1000, pad, deadline))
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.05, deadline + 1 - time.monotonic()))
    ok = True
    for c, t in zip(clients, threads):
        if t.is_alive():
            c.end = "timeout"
            c.note("client still running")
        if c.end not in ("done", "EOF", "ECONNRESET") or c.send_error == "timeout":
            ok = False
        print("client gid=%d sent=%d received=%d bad=%d partial=%d end=%s first=%s"
              % (c.gid, c.sent, c.received, c.bad, c.partial, c.end, c.first))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
