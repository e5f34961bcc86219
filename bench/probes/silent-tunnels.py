#!/usr/bin/env python3
"""RSS growth of egressd per idle CONNECT tunnel whose client has not spoken yet.

The harness's idle-tunnel scenario sends one byte through each tunnel, so its tunnels sit in
the relay. A tunnel whose client is silent (a server-speaks-first protocol, or the moment
before a ClientHello) waits in the first-flight check instead; this probe measures that state,
from a fresh start, step by step, so a cost paid by the first tunnels shows too.

    python3 bench/probes/silent-tunnels.py target/release/egressd [2000 4000 ...]

Tunnels open 64 at a time, like the harness's; PROBE_CONCURRENCY=1 opens them one by one,
which separates what each tunnel holds from the high-water of many opening at once. Needs
only Python 3 and the binary; loopback only. RUST_LOG is passed through (default info).
"""
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

held_upstream = []


async def hold(_reader, writer):
    held_upstream.append(writer)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(dir, port, admin, upstream):
    return f"""[proxy]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
state_dir = "{dir}/state"
connect_ports = [{upstream}]
allow_private_cidrs = ["127.0.0.0/8"]
idle_timeout = "5m"
max_connections = 30000

[dns]
overrides = {{ "up.probe" = "127.0.0.1" }}

[allowlist]
domains = ["up.probe"]
"""


async def main(binary, steps, concurrency):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=4096)
    upstream = server.sockets[0].getsockname()[1]
    dir = tempfile.mkdtemp(prefix="silent-tunnels-")
    port, admin = free_port(), free_port()
    with open(f"{dir}/egressd.toml", "w") as f:
        f.write(config(dir, port, admin, upstream))
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    with open(f"{dir}/stderr.log", "w") as log:
        proxy = subprocess.Popen([binary, "run", "--config", f"{dir}/egressd.toml"], stderr=log, env=env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        tunnels = []

        async def open_one():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT up.probe:{upstream} HTTP/1.1\r\nHost: up.probe:{upstream}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n")[0] + b" ":
                raise RuntimeError(f"CONNECT answered {head!r}")
            tunnels.append(writer)

        await asyncio.sleep(0.3)
        start = rss_kib(proxy.pid)
        print(f"RSS at start: {start} KiB")
        print(f"{'tunnels':>8} {'RSS KiB':>9} {'KiB/tunnel since start':>24} {'KiB/tunnel this step':>22}")
        last_n, last = 0, start
        for n in steps:
            while len(tunnels) < n:
                await asyncio.gather(*[open_one() for _ in range(min(concurrency, n - len(tunnels)))])
            await asyncio.sleep(0.5)
            now = rss_kib(proxy.pid)
            print(f"{n:>8} {now:>9} {(now - start) / n:>24.2f} {(now - last) / (n - last_n):>22.2f}")
            last_n, last = n, now
    finally:
        proxy.terminate()
        proxy.wait()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    # The probe holds two descriptors per tunnel (client and upstream ends).
    steps = [int(a) for a in sys.argv[2:]] or [100, 1000, 2000, 4000, 8000]
    concurrency = int(os.environ.get("PROBE_CONCURRENCY", "64"))
    asyncio.run(main(sys.argv[1], steps, concurrency))
