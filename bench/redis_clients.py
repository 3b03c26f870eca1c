"""
GET of a 1 KiB value from a local Redis, K commands in flight, for three
clients: cachingproxy.fleet.redis (Twisted, hiredis parser), txredisapi
(Twisted) and redis-py's asyncio client (on its own asyncio loop).

Each measurement runs in a fresh process (so each client has its own event
loop and nothing warms up for the next one):

    python bench/redis_clients.py one --port P --client ours --inflight 10

The driver interleaves the clients over several rounds and prints medians,
as ratios to cachingproxy's client:

    python bench/redis_clients.py all --port P [--rounds 3] [--duration 3]

Every client uses one connection (ours and txredisapi pipeline on it);
redis-py's asyncio client cannot pipeline independent commands on one
connection, so it gets a pool of K connections (its normal use).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

KEY = b"bench:1k"
VALUE = b"x" * 1024
CLIENTS = ("ours", "txredisapi", "redis-py")


def _twisted(port: int, inflight: int, duration: float, warmup: float, which: str) -> float:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import inlineCallbacks

    result = {}

    @inlineCallbacks
    def main():
        if which == "ours":
            from cachingproxy.fleet.redis import RedisClient, parseURL

            client = RedisClient(reactor, parseURL(f"redis://127.0.0.1:{port}"), size=1, timeout=5.0)
            yield client.execute(b"SET", KEY, VALUE)

            def get():
                return client.execute(b"GET", KEY)

        else:
            import txredisapi

            client = yield txredisapi.Connection("127.0.0.1", port, reconnect=False)
            yield client.set(KEY, VALUE)

            def get():
                return client.get(KEY)

        count = [0]
        state = {"measuring": False, "stop": False}

        def loop(_=None):
            if state["stop"]:
                return
            if state["measuring"]:
                count[0] += 1
            get().addCallbacks(loop, lambda f: None if state["stop"] else f)

        for _ in range(inflight):
            loop()
        yield _sleep(reactor, warmup)
        state["measuring"] = True
        start = time.perf_counter()
        yield _sleep(reactor, duration)
        state["measuring"] = False
        elapsed = time.perf_counter() - start
        state["stop"] = True
        result["rate"] = count[0] / elapsed
        reactor.stop()

    def _sleep(reactor, t):
        from twisted.internet.task import deferLater

        return deferLater(reactor, t, lambda: None)

    reactor.callWhenRunning(lambda: main().addErrback(lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
    return result["rate"]


def _redispy(port: int, inflight: int, duration: float, warmup: float) -> float:
    import asyncio

    import redis.asyncio as aioredis

    async def main():
        client = aioredis.Redis(host="127.0.0.1", port=port, max_connections=inflight)
        await client.set(KEY, VALUE)
        count = 0
        measuring = False
        stop = False

        async def worker():
            nonlocal count
            while not stop:
                await client.get(KEY)
                if measuring:
                    count += 1

        tasks = [asyncio.create_task(worker()) for _ in range(inflight)]
        await asyncio.sleep(warmup)
        measuring = True
        start = time.perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - start
        stop = True
        await asyncio.gather(*tasks)
        await client.aclose()
        return count / elapsed

    return asyncio.run(main())


def one(args) -> None:
    if args.client == "redis-py":
        rate = _redispy(args.port, args.inflight, args.duration, args.warmup)
    else:
        rate = _twisted(args.port, args.inflight, args.duration, args.warmup, args.client)
    print(f"{rate:.1f}")


def all_(args) -> None:
    rates = {(c, k): [] for c in CLIENTS for k in args.inflights}
    for r in range(args.rounds):
        for k in args.inflights:
            for c in CLIENTS:
                out = subprocess.run(
                    [sys.executable, __file__, "one", "--port", str(args.port), "--client", c, "--inflight", str(k),
                     "--duration", str(args.duration), "--warmup", str(args.warmup)],
                    check=True, capture_output=True, text=True,
                )
                rate = float(out.stdout.strip().splitlines()[-1])
                rates[(c, k)].append(rate)
                print(f"round {r + 1}: {c:<11} {k:>3} in flight: {rate:>9.0f} req/s", file=sys.stderr)
    print(f"GET 1 KiB, medians of {args.rounds} interleaved rounds of {args.duration}s (req/s, ratio to ours)")
    print(f"{'client':<12}" + "".join(f"{f'{k} in flight':>26}" for k in args.inflights))
    for c in CLIENTS:
        cells = []
        for k in args.inflights:
            med = statistics.median(rates[(c, k)])
            base = statistics.median(rates[("ours", k)])
            cells.append(f"{med:>16.0f} ({med / base:5.2f}x)")
        print(f"{c:<12}" + "".join(f"{cell:>26}" for cell in cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    o = sub.add_parser("one")
    o.add_argument("--client", choices=CLIENTS, required=True)
    o.add_argument("--inflight", type=int, required=True)
    a = sub.add_parser("all")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--inflights", type=int, nargs="+", default=[10, 100])
    for s in (o, a):
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--duration", type=float, default=3.0)
        s.add_argument("--warmup", type=float, default=0.5)
    args = p.parse_args()
    one(args) if args.mode == "one" else all_(args)


if __name__ == "__main__":
    main()
