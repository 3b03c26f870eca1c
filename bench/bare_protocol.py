"""
The ceiling of this stack: a bare Twisted Protocol on the epoll reactor that
answers every GET (keep-alive, pipelined or not) with the same 1 KiB
response, parsing nothing but the blank line that ends each request head.
bench/run_defaults.sh measures the hit path as a fraction of it.

    .venv/bin/python bench/bare_protocol.py PORT BODY_FILE
"""

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402


class Bare(protocol.Protocol):
    buffer = b""

    def dataReceived(self, data: bytes) -> None:
        data = self.buffer + data
        count = data.count(b"\r\n\r\n")
        self.buffer = data[data.rindex(b"\r\n\r\n") + 4:] if count else data
        if count:
            self.transport.write(self.factory.response * count)


factory = protocol.Factory.forProtocol(Bare)
body = open(sys.argv[2], "rb").read()
factory.response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\nX-Cache: HIT\r\n\r\n%s" % (len(body), body))
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
reactor.run()
