"""
One in-memory loop of N requests, for counting instructions with valgrind
(bench/run_instructions.sh runs it twice and divides the difference):

    hit          a cache hit from the disk store (micro_hit.py's loop)
    hit-log      the same, logging each one in the combined format to a file
    hit-browser  a hit for a browser-like head of ten fields
    hit-cli      a hit with the factory the command line builds (access policy,
                 the proxy's own pages, metrics), no access log
    hit-cli-log  the same, logging in the combined format to a file
    hit-cli-json the same, logging JSON lines to a file
    hit-cli-twistd the same, logging in the combined format to the twistd log
                 (the default)
    hit-forward  hit-cli as a forward proxy (an absolute-form target, as curl -x sends)
    floor        bench/bare_protocol.py's Parsed protocol (strict parse, fixed answer)
    pass         a pass-through of a no-store response, disk cache on
    pass-nocache the same without a cache

    .venv/bin/python bench/instructions.py CASE N
"""

import shutil
import sys
import tempfile

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])

import micro_hit  # noqa: E402
import micro_passthrough  # noqa: E402

from cachingproxy.cache.disk import DiskStore  # noqa: E402

BROWSER = (
    b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Site: none\r\n\r\n"
)


def main() -> None:
    runCase(sys.argv[1], int(sys.argv[2]))


def runCase(case: str, n: int) -> None:
    """
    Run C{case}'s loop of C{n} requests in a fresh temporary folder.
    """
    folder = tempfile.mkdtemp(prefix="cachingproxy-instructions-")
    try:
        store = DiskStore(folder + "/d", maxSize=1 << 30, maxObjectSize=1 << 26)
        if case == "hit":
            micro_hit.run(store, n)
        elif case == "hit-log":
            micro_hit.run(store, n, "combined")
        elif case == "hit-browser":
            usual, micro_hit.REQUEST = micro_hit.REQUEST, BROWSER
            try:
                micro_hit.run(store, n)
            finally:
                micro_hit.REQUEST = usual
        elif case == "hit-cli":
            micro_hit.runAsBuilt(folder, n)
        elif case == "hit-cli-log":
            micro_hit.runAsBuilt(folder, n, "combined")
        elif case == "hit-cli-json":
            micro_hit.runAsBuilt(folder, n, "json")
        elif case == "hit-cli-twistd":
            micro_hit.runAsBuilt(folder, n, "twistd")
        elif case == "hit-forward":
            micro_hit.runAsBuilt(folder, n, forward=True)
        elif case == "floor":
            micro_hit.runFloor(n)
        elif case == "pass":
            micro_passthrough.run(n, store)
        elif case == "pass-nocache":
            micro_passthrough.run(n)
        else:
            raise SystemExit(f"unknown case {case!r}: {__doc__}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
