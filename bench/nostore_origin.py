"""
A small origin for the miss-path benchmark: every GET (keep-alive,
pipelined or not) is answered with 1 KiB and C{Cache-Control: no-store},
so a cache in front of it stores nothing and looks up again each time.

    .venv/bin/python bench/nostore_origin.py --port P [--size 1024]
        [--cache-control no-store]
"""

import argparse

from twisted.internet import protocol, reactor


class Origin(protocol.Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data
        count = buffer.count(b"\r\n\r\n")
        if count:
            # Requests without bodies: each one ends at its blank line.
            self.buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4:]
            self.transport.write(self.factory.response * count)
        else:
            self.buffer = buffer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cache-control", default="no-store")
    args = parser.parse_args()
    factory = protocol.Factory.forProtocol(Origin)
    factory.response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Cache-Control: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (args.cache_control.encode("ascii"), args.size, b"x" * args.size)
    )
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
