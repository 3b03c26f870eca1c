"""
The ceiling of this stack: a bare Twisted Protocol on the epoll reactor that
answers every GET (keep-alive, pipelined or not) with the same 1 KiB
response, parsing nothing but the blank line that ends each request head.
bench/run_defaults.sh measures the hit path as a fraction of it.

With --parse, the floor of a strict proxy on this stack instead: every
request is parsed by httptools (llhttp) with the same callbacks the proxy's
client connection uses (the target, each field with its name lowered and
its value stripped, the version and keep-alive asked for), and the answer
is sent as the proxy sends a hit: at once (cachingproxy._twistedinternals
sendNow, on the reactor's direct poll step). Nothing is looked up, logged
or checked beyond what the parser does.

    .venv/bin/python bench/bare_protocol.py PORT BODY_FILE [--parse]
"""

import sys

from twisted.internet import protocol


class Bare(protocol.Protocol):
    buffer = b""

    def dataReceived(self, data: bytes) -> None:
        data = self.buffer + data
        count = data.count(b"\r\n\r\n")
        self.buffer = data[data.rindex(b"\r\n\r\n") + 4:] if count else data
        if count:
            self.transport.write(self.factory.response * count)


class Parsed(protocol.Protocol):
    def connectionMade(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.fields = []

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.loseConnection()

    def on_message_begin(self) -> None:
        self.url = b""
        self.fields = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.head = (parser.get_method(), self.url, parser.get_http_version(),
                     parser.should_keep_alive(), self.fields)

    def on_message_complete(self) -> None:
        from cachingproxy._twistedinternals import writeNow

        writeNow(self.transport, self.factory.response)


if __name__ == "__main__":
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    parse = "--parse" in sys.argv[3:]
    if parse:
        sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
        from cachingproxy._twistedinternals import streamline

        streamline(reactor)
    factory = protocol.Factory.forProtocol(Parsed if parse else Bare)
    body = open(sys.argv[2], "rb").read()
    factory.response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\nX-Cache: HIT\r\n\r\n%s" % (len(body), body))
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    reactor.run()
