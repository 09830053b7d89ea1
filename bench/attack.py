#!/usr/bin/env python3
"""Under-attack figures for BENCHMARKS.md (issue 10), against a release server it starts itself.

  replay:    100 POSTs of 64 KiB of newlines to one user, then 40 resumes from the first id that
             never read; prints the server's RSS growth.
  flood:     N idle stream connections (default 19,500, above the default --max-connections
             of 18,976 for 20,000 open files), /healthz probed meanwhile; prints how many were
             refused with 503 and the /healthz latency while the server is full.
  broadcast: N idle streams of N users (never reading), one 64 KiB broadcast of newlines, with
             /healthz probed every 5 ms and a /v3 user's delivery (a stream the broadcast does not
             reach) timed meanwhile.

Usage: bench/attack.py replay|flood|broadcast [N]   (SERVER_BIN, default target/release/server_sent_events)
"""
import json, os, socket, subprocess, sys, tempfile, threading, time

BIN = os.environ.get("SERVER_BIN", "target/release/server_sent_events")
PORT = 3911


def rss_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


def request(method, path, body=b"", timeout=30):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    s.sendall(head.encode() + body)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def open_stream(path, bind=None):
    s = socket.socket()
    if bind:
        s.bind((bind, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", PORT))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return s


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    mode = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    work = tempfile.mkdtemp()
    server = subprocess.Popen([BIN, "--bind", f"127.0.0.1:{PORT}", "--log", "warn",
                               "--database", f"{work}/r.sqlite3"])
    try:
        for _ in range(100):
            try:
                request("GET", "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        body = b"\n" * 65536
        if mode == "replay":
            keep = open_stream("/v2/sse?username=victim")
            before = rss_kib(server.pid)
            status, answer = request("POST", "/v2/message?username=victim", body)
            first = json.loads(answer)["id"]
            for _ in range(99):
                request("POST", "/v2/message?username=victim", body)
            stalled = [open_stream(f"/v2/sse?username=victim&lastEventId={first}") for _ in range(40)]
            time.sleep(2)
            after = rss_kib(server.pid)
            print(json.dumps({"mode": "replay", "rss_before_kib": before, "rss_after_kib": after,
                              "growth_mib": round((after - before) / 1024, 1)}))
            del stalled, keep
        elif mode == "flood":
            n = int(sys.argv[2]) if len(sys.argv) > 2 else 19500
            health, stop = [], threading.Event()

            def probe():
                while not stop.is_set():
                    t = time.perf_counter()
                    status, _ = request("GET", "/healthz")
                    assert status == 200, status
                    health.append((time.perf_counter() - t) * 1000)
                    time.sleep(0.005)

            p = threading.Thread(target=probe); p.start()
            held, refused, other = [], 0, 0
            for i in range(n):
                s = open_stream(f"/v2/sse?username=f{i}", f"127.0.0.{2 + i % 8}")
                s.settimeout(10)
                head = s.recv(12)
                if head == b"HTTP/1.1 200":
                    held.append(s)
                elif head == b"HTTP/1.1 503":
                    refused += 1
                    s.close()
                else:
                    other += 1
                    s.close()
            time.sleep(1)
            stop.set(); p.join()
            print(json.dumps({"mode": "flood", "attempted": n, "held": len(held), "refused_503": refused,
                              "other": other, "healthz_n": len(health),
                              "healthz_p50_ms": round(pct(health, 0.5), 2),
                              "healthz_p99_ms": round(pct(health, 0.99), 2),
                              "healthz_max_ms": round(max(health), 2),
                              "rss_kib": rss_kib(server.pid)}))
            del held
        else:
            streams = [open_stream(f"/v2/sse?username=b{i}", f"127.0.0.{2 + i % 8}") for i in range(n)]
            other = socket.create_connection(("127.0.0.1", PORT))
            other.sendall(b"GET /v3/sse?username=watcher HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            other.recv(4096)
            time.sleep(1)
            before = rss_kib(server.pid)
            health, deliveries, starts = [], [], []
            stop = threading.Event()

            def probe():
                while not stop.is_set():
                    t = time.perf_counter()
                    request("GET", "/healthz")
                    health.append((time.perf_counter() - t) * 1000)
                    starts.append(t)
                    time.sleep(0.005)

            def watch():
                other.settimeout(10)
                for i in range(40):
                    t = time.perf_counter()
                    request("POST", "/v3/message?username=watcher", f"w{i}".encode())
                    got = b""
                    while f"w{i}".encode() not in got:
                        got += other.recv(65536)
                    deliveries.append((time.perf_counter() - t) * 1000)
                    time.sleep(0.02)

            p = threading.Thread(target=probe); p.start()
            time.sleep(0.2)
            w = threading.Thread(target=watch); w.start()
            t = time.perf_counter()
            status, answer = request("POST", "/v2/broadcast", body, timeout=120)
            took = (time.perf_counter() - t) * 1000
            w.join(); time.sleep(0.3); stop.set(); p.join()
            peak = rss_kib(server.pid, "VmHWM")
            if os.environ.get("ATTACK_TRACE"):
                for at, ms in zip(starts, health):
                    if ms > 20:
                        print(f"healthz at {(at - t) * 1000:+.0f} ms took {ms:.0f} ms", file=sys.stderr)
            print(json.dumps({"mode": "broadcast", "streams": n, "status": status,
                              "answer": json.loads(answer), "broadcast_ms": round(took, 1),
                              "healthz_p50_ms": round(pct(health, 0.5), 2),
                              "healthz_p99_ms": round(pct(health, 0.99), 2),
                              "healthz_max_ms": round(max(health), 2), "healthz_n": len(health),
                              "other_user_p50_ms": round(pct(deliveries, 0.5), 2),
                              "other_user_p99_ms": round(pct(deliveries, 0.99), 2),
                              "rss_before_kib": before, "peak_rss_kib": peak}))
            del streams
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
