"""
The origin and the clients of bench/run_fleet.sh (the fleet tier).

    python bench/fleet_bench.py origin --port P [--delay 0.2]
    python bench/fleet_bench.py burst --proxies P1,P2 --origin-port O
        [--bursts 20] [--clients 30] [--label up]
    python bench/fleet_bench.py fetch --port P --prefix /obj/1024/r1- --count N
        [--connections 16] --expect fleet|hit|miss

The origin answers, with keep-alive:

  - C{/obj/SIZE/NAME}: SIZE bytes, C{Cache-Control: public, max-age=3600};
  - C{/slow/NAME}: the same after C{--delay} seconds (the burst URLs);
  - C{/_count/PATH}: how many requests for C{/PATH} it has answered.

Every body is C{(PATH + "\\n")} repeated and cut to its size, so that a
client can check it knows which URL it got.

C{burst}: for each burst, a new URL C{/slow/LABEL-RUN-I} and C{--clients}
concurrent requests for it, each on its own connection, spread round-robin
over the proxies; every body is checked; then the origin says how many
requests for it reached it.  Prints one line per burst and a summary
(median and max origin requests per burst).

C{fetch}: C{--count} URLs C{PREFIX0} ... C{PREFIX(count-1)}, each fetched
once, over C{--connections} keep-alive connections (each walks its share of
the URLs in turn); every body is checked, and its C{Cache-Status} compared
with C{--expect}: C{fleet} (a hit copied from Redis, C{detail=fleet}),
C{hit} (a hit from the local tiers), C{miss} (not a hit).  Prints one line:
C{REQUESTS SECONDS UNEXPECTED} (the responses whose C{Cache-Status} was not
the one expected).  A wrong status, length or body is fatal.
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter


def body(path: bytes, size: int) -> bytes:
    line = path + b"\n"
    return (line * (size // len(line) + 1))[:size]


class Origin(asyncio.Protocol):
    """
    The counting origin; requests without bodies, answered in order.
    """

    counts: Counter = Counter()
    delay = 0.2

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""
        # answers go out in request order even when one is delayed
        self.queue = []

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            path = head.split(b" ", 2)[1]
            slot = [None]
            self.queue.append(slot)
            if path.startswith(b"/slow/"):
                self.counts[path] += 1
                asyncio.get_running_loop().call_later(
                    self.delay, self.answer, slot, self.response(path, 512))
            elif path.startswith(b"/obj/"):
                self.counts[path] += 1
                self.answer(slot, self.response(path, int(path.split(b"/")[2])))
            elif path.startswith(b"/_count/"):
                count = b"%d" % self.counts[path[len(b"/_count"):]]
                self.answer(slot, b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(count), count))
            else:
                self.answer(slot, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    @staticmethod
    def response(path: bytes, size: int) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Cache-Control: public, max-age=3600\r\nContent-Length: %d\r\n\r\n%s"
                % (size, body(path, size)))

    def answer(self, slot, data: bytes) -> None:
        slot[0] = data
        while self.queue and self.queue[0][0] is not None:
            self.transport.write(self.queue.pop(0)[0])


async def serve(args) -> None:
    Origin.delay = args.delay
    server = await asyncio.get_running_loop().create_server(Origin, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


async def request(reader, writer, path: bytes, close: bool = False):
    """
    One GET on an open connection.

    @return: C{(status line, headers as a lower-cased dict, body)}.
    """
    writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
                 % (path, b"Connection: close\r\n" if close else b""))
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = headers.get(b"content-length")
    if length is None:
        raise RuntimeError(f"{path!r}: no Content-Length: {head!r}")
    data = await reader.readexactly(int(length))
    return lines[0], headers, data


def check(path: bytes, status: bytes, data: bytes, size: int) -> None:
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path!r}: {status!r}")
    if data != body(path, size):
        raise RuntimeError(f"{path!r}: wrong body ({len(data)} bytes, expected {size})")


async def burst(args) -> None:
    ports = [int(p) for p in args.proxies.split(",")]
    run = int(time.time() * 1000) % 1000000

    async def one(port: int, path: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, _, data = await request(reader, writer, path, close=True)
        finally:
            writer.close()
        check(path, status, data, 512)

    async def count(path: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.origin_port)
        try:
            _, _, data = await request(reader, writer, b"/_count" + path, close=True)
        finally:
            writer.close()
        return int(data)

    perBurst, times = [], []
    for i in range(args.bursts):
        path = b"/slow/%s-%d-%d" % (args.label.encode("ascii"), run, i)
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*[one(ports[j % len(ports)], path) for j in range(args.clients)]), 60)
        times.append(time.monotonic() - started)
        perBurst.append(await count(path))
        print(f"burst {i + 1}: {perBurst[-1]} origin request(s), {times[-1]:.3f}s", file=sys.stderr)
    print(f"{args.label}: origin requests per burst of {args.clients} over {len(ports)} proxies "
          f"({args.bursts} bursts): median {statistics.median(perBurst):g}, max {max(perBurst)}, "
          f"min {min(perBurst)}; bursts with more than one: "
          f"{sum(1 for n in perBurst if n > 1)}; burst time median "
          f"{statistics.median(times):.3f}s")


async def fetch(args) -> None:
    prefix = args.prefix.encode("ascii")
    size = int(prefix.split(b"/")[2])
    want = {"fleet": lambda s: b"hit" in s and b"detail=fleet" in s,
            "hit": lambda s: b"hit" in s and b"fleet" not in s,
            "miss": lambda s: b"hit" not in s}[args.expect]
    unexpected = Counter()

    async def walk(which: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            for i in range(which, args.count, args.connections):
                path = prefix + b"%d" % i
                status, headers, data = await request(reader, writer, path)
                check(path, status, data, size)
                cacheStatus = headers.get(b"cache-status", b"")
                if not want(cacheStatus.split(b";", 1)[-1]):
                    unexpected[cacheStatus] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*[walk(c) for c in range(args.connections)]), 600)
    elapsed = time.monotonic() - started
    for status, n in unexpected.most_common(3):
        print(f"{args.prefix} (expected {args.expect}): {n} x Cache-Status: "
              f"{status.decode('latin-1')}", file=sys.stderr)
    print(f"{args.count} {elapsed:.4f} {sum(unexpected.values())}")


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    o = commands.add_parser("origin")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--delay", type=float, default=0.2)
    b = commands.add_parser("burst")
    b.add_argument("--proxies", required=True)
    b.add_argument("--origin-port", type=int, required=True)
    b.add_argument("--bursts", type=int, default=20)
    b.add_argument("--clients", type=int, default=30)
    b.add_argument("--label", default="burst")
    f = commands.add_parser("fetch")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--prefix", required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--connections", type=int, default=16)
    f.add_argument("--expect", choices=["fleet", "hit", "miss"], required=True)
    args = parser.parse_args()
    asyncio.run({"origin": serve, "burst": burst, "fetch": fetch}[args.command](args))


if __name__ == "__main__":
    main()
