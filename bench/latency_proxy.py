"""A TCP proxy that holds every chunk for a fixed one-way delay in each direction: partman's
connections to a throwaway server as if across a network (an ECS task and its RDS instance in
another availability zone: ~1 ms round trip). For bench/swap_bench.py.

    python bench/latency_proxy.py --target 127.0.0.1:5432 --rtt-ms 1.0

Prints the port it listens on (127.0.0.1, chosen by the kernel) as its first line, then serves
until killed. Each connection gets two threads per direction: one reads and stamps each chunk
with the time it is due, the other sleeps until then and sends it, so the delay adds latency
without limiting throughput. (Threads, not asyncio: its event loop sleeps in whole milliseconds.)"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time


def _forward(src: socket.socket, dst: socket.socket, delay: float) -> None:
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def send() -> None:
        try:
            while True:
                due, data = chunks.get()
                if not data:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threading.Thread(target=send, daemon=True).start()
    try:
        while data := src.recv(1 << 16):
            chunks.put((time.perf_counter() + delay, data))
    except OSError:
        pass
    chunks.put((0.0, b""))


def serve(target: tuple[str, int], rtt_ms: float) -> None:
    delay = rtt_ms / 2000
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(target)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_forward, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_forward, args=(upstream, client, delay), daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="host:port of the server")
    ap.add_argument("--rtt-ms", type=float, required=True, help="round trip added (half each way)")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        serve((host, int(port)), args.rtt_ms)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
