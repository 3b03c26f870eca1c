"""
The status page in a real headless browser: a caching proxy that served a
few hits and misses, and Chromium loading C{/_cachingproxy/} from it while
the reactor keeps serving (the page draws itself from C{status.json}).

Chromium comes from Debian's C{chromium} package. If it is missing, the
test installs it when running as root with C{CI} set or
C{CACHINGPROXY_INSTALL_BROWSER=1}, and is skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from typing import Dict, List, Optional

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import Site

from cachingproxy.ops.admin import AdminPages
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.ops import metrics as metricsModule
from cachingproxy.ops.metrics import ENVIRONMENT, Metrics
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.proxy.settings import ProxySettings

from .helpers import _trackServerConnections, connectClient, exchange, startProxy
from .test_cache_end_to_end import CountingOrigin
from .test_metrics import samples, total

#: How long installing the browser may take.
INSTALL_TIMEOUT = 900
#: How long one browser run may take.
BROWSER_TIMEOUT = 120

_browser: Dict[str, Optional[str]] = {}


def findBrowser() -> str:
    """
    @return: the path of Chromium, installing Debian's package if allowed.
    @raise SkipTest: if there is none and it may not be installed.
    """
    if "path" in _browser:
        if _browser["path"] is None:
            raise SkipTest(_browser["why"])
        return _browser["path"]
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    why = None
    if path is None:
        allowed = os.environ.get("CI") or os.environ.get("CACHINGPROXY_INSTALL_BROWSER") == "1"
        if not allowed:
            why = ("chromium is not installed (apt-get install chromium; or set "
                   "CACHINGPROXY_INSTALL_BROWSER=1, as root, to let this test install it)")
        elif os.geteuid() != 0:
            why = "chromium is not installed and installing it needs root"
        elif shutil.which("apt-get") is None:
            why = "chromium is not installed and there is no apt-get to install it"
        else:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            try:
                done = subprocess.run(
                    ["sh", "-c", "apt-get update && apt-get install -y --no-install-recommends chromium"],
                    env=env, capture_output=True, timeout=INSTALL_TIMEOUT, check=False,
                )
            except subprocess.TimeoutExpired:
                why = f"installing chromium took more than {INSTALL_TIMEOUT}s"
            else:
                path = shutil.which("chromium")
                if path is None:
                    why = "installing chromium failed: " + done.stderr.decode(errors="replace")[-500:]
    _browser["path"] = path
    _browser["why"] = why
    if path is None:
        raise SkipTest(why)
    return path


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


async def runBrowser(testCase, browser: str, arguments: List[str], home: str):
    """
    Run the browser with C{reactor.spawnProcess}, so that the reactor goes
    on serving the page it loads.

    @return: its exit code, standard output and standard error.
    """
    protocol = _Collect()
    env = dict(os.environ, HOME=home)
    process = reactor.spawnProcess(protocol, browser, [browser] + arguments, env=env)

    def kill():
        if process.pid is not None:
            process.signalProcess("KILL")

    timer = reactor.callLater(BROWSER_TIMEOUT, kill)

    def cleanup():
        if timer.active():
            timer.cancel()
        if not protocol.ended.called:
            kill()
            return protocol.ended

    testCase.addCleanup(cleanup)
    code = await protocol.ended
    if timer.active():
        timer.cancel()
    return code, b"".join(protocol.out), b"".join(protocol.err)


class _Texts(HTMLParser):
    """
    The text of each element with an id, and the tags seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.texts: Dict[str, str] = {}
        self._open: List[Optional[str]] = []
        self.tags: Dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag in ("br", "meta", "link", "input", "img"):
            return
        ident = dict(attrs).get("id")
        self._open.append(ident)
        if ident is not None:
            self.texts.setdefault(ident, "")

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for ident in self._open:
            if ident is not None:
                self.texts[ident] += data


def pngSize(path: str):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


class StatusProxyCase(TestCase):
    """
    A caching proxy with metrics and the admin endpoints, in front of a
    L{CountingOrigin}.
    """

    #: keep the output folder (the screenshot) after the test
    keepOutput = False

    def setUp(self):
        self.output = tempfile.mkdtemp(prefix="cachingproxy-status-page-")
        if not self.keepOutput:
            self.addCleanup(shutil.rmtree, self.output, True)
        self.startProxy()

    def startProxy(self):
        old = os.environ.get(ENVIRONMENT)

        def restore():
            if old is None:
                os.environ.pop(ENVIRONMENT, None)
            else:
                os.environ[ENVIRONMENT] = old

        self.addCleanup(restore)
        # The origin, a memory store and a caching proxy, as in
        # tests/test_cache_end_to_end.py.
        self.clock = Clock()
        self.clock.advance(time.time())
        self.origin = CountingOrigin(self.clock)
        site = Site(self.origin)
        site.log = lambda request: None
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        _trackServerConnections(self, site)
        self.originPort = port.getHost().port
        self.store = MemoryStore(4 * 1024 * 1024, 1024 * 1024)
        self.factory, self.port, self.accessLines = startProxy(
            self, ProxySettings(viaName=b"test-proxy"))
        self.factory.cache = CacheLayer(self.store, self.clock, self.factory.pool, CacheSettings())
        metricsFolder = os.path.join(self.output, "metrics")
        os.mkdir(metricsFolder)
        self.addCleanup(shutil.rmtree, metricsFolder, True)
        self.addCleanup(metricsModule._families.pop, os.path.abspath(metricsFolder), None)
        self.factory.metrics = Metrics(reactor, self.factory, directory=metricsFolder)
        self.factory.metrics.start()
        self.addCleanup(self.factory.metrics.stop)
        self.factory.admin = AdminPages(self.factory, "w1")
        self.fetched: List[bytes] = []
        handle = self.factory.admin.handle

        def recording(exchange, path):
            self.fetched.append(path)
            return handle(exchange, path)

        self.factory.admin.handle = recording

    async def get(self, path: bytes):
        _, [response] = await exchange(
            self.port, self,
            b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (self.originPort, path, self.originPort),
        )
        return response

    async def traffic(self):
        """
        Misses, then hits: 3 distinct paths fetched 4 times each.
        """
        results = []
        for path in (b"/max-age/60/a", b"/big/200000", b"/max-age/60/b"):
            for _ in range(4):
                response = await self.get(path)
                self.assertEqual(response.status, 200)
                results.append(response.header(b"x-cache"))
        await self.get(b"/private/c")
        return results

    async def nearlyAllHits(self, n: int = 2000):
        """
        C{n} requests for one cacheable object on one connection: one miss,
        then C{n - 1} hits.
        """
        client = await connectClient(self.port, self)
        request = (b"GET http://127.0.0.1:%d/max-age/600/all HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                   % (self.originPort, self.originPort))
        client.transport.write(request)
        await client.waitFor(1)
        done = 1
        while done < n:
            batch = min(16, n - done)
            client.transport.write(request * batch)
            done += batch
            await client.waitFor(done)
        responses = client.finalResponses()
        self.assertEqual([r.status for r in responses], [200] * n)
        self.assertEqual([r.header(b"x-cache") for r in responses].count(b"HIT"), n - 1)


class StatusEndpointTests(StatusProxyCase):
    """
    C{status.json} and the page itself, without a browser.
    """

    async def admin(self, name: bytes):
        _, [response] = await exchange(
            self.port, self, b"GET /_cachingproxy/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name
        )
        return response

    async def test_statusJSON(self):
        """
        C{status.json} has the figures the page draws.
        """
        import json

        await self.traffic()
        response = await self.admin(b"status.json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        report = json.loads(response.body)
        self.assertEqual(report["totals"]["requests"], 13)
        self.assertEqual(report["totals"]["hits"], 9)
        self.assertAlmostEqual(report["hitRatio"], 9 / 13)
        self.assertGreater(report["totals"]["bytesSaved"], 3 * 200000)
        self.assertEqual(report["topHosts"], [{"host": "127.0.0.1", "requests": 13}])
        self.assertEqual([(w["pid"], w["worker"]) for w in report["workers"]], [(os.getpid(), "w1")])
        self.assertEqual(report["servedBy"], {"worker": "w1", "pid": os.getpid()})
        self.assertEqual(report["cache"]["entries"], 3)
        self.assertEqual(report["cache"]["limit"], 4 * 1024 * 1024)
        self.assertEqual(report["restarts"], 0)
        self.assertEqual(sum(b["requests"] for b in report["series"]), 13)
        self.assertGreater(report["requestsPerSecond"], 0)

    async def test_statusJSONWithoutMetrics(self):
        """
        Without metrics, C{status.json} still tells the process, its uptime
        and its cache.
        """
        import json

        self.factory.metrics = None
        report = json.loads((await self.admin(b"status.json")).body)
        self.assertEqual(report["pid"], os.getpid())
        self.assertEqual(report["totals"], None)
        self.assertEqual(report["cache"]["entries"], 0)
        self.assertEqual(len(report["workers"]), 1)

    async def test_singleProcessServedBy(self):
        """
        A proxy that is not one of several workers says so: C{servedBy}
        has its pid and no worker id.
        """
        import json

        self.factory.admin = AdminPages(self.factory)
        report = json.loads((await self.admin(b"status.json")).body)
        self.assertEqual(report["servedBy"], {"worker": None, "pid": os.getpid()})

    async def test_bytesAgreeWithMetrics(self):
        """
        After requests through the proxy (misses, hits, an uncacheable
        one, an origin error, a request with a body, a refused request) and
        looks at the proxy's own endpoints in between, C{status.json}'s
        totals of bytes sent, bytes from the cache and bytes received are
        the metrics endpoint's counters, and the requests it counts are
        the metrics' requests but those for the proxy's own endpoints.
        """
        import json

        await self.traffic()
        await self.admin(b"")
        await self.admin(b"status.json")
        await self.get(b"/status/404")
        _, [posted] = await exchange(
            self.port, self,
            b"POST http://127.0.0.1:%d/max-age/60/post HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5\r\n\r\nhello" % self.originPort)
        self.assertEqual(posted.status, 200)
        _, [refused] = await exchange(self.port, self, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(refused.status, 400)
        await self.admin(b"metrics")

        report = json.loads((await self.admin(b"status.json")).body)
        found = samples((await self.admin(b"metrics")).body)
        totals = report["totals"]
        self.assertGreater(totals["bytesOut"], 4 * 200000)
        self.assertEqual(totals["bytesOut"], total(found, "cachingproxy_response_bytes_total"))
        self.assertEqual(totals["bytesSaved"], total(found, "cachingproxy_cache_served_bytes_total"))
        self.assertEqual(totals["bytesIn"], 5)
        self.assertEqual(totals["bytesIn"], total(found, "cachingproxy_request_bytes_total"))
        self.assertEqual(totals["requests"], 16)
        # The metrics also count the 4 earlier looks at the proxy's own
        # endpoints (this scrape is counted after it).
        self.assertEqual(total(found, "cachingproxy_requests_total"), 16 + 4)

    async def test_page(self):
        """
        The page is one self-contained HTML document at C{/_cachingproxy/}
        and C{/_cachingproxy/status}: no outside scripts or styles.
        """
        first = await self.admin(b"")
        second = await self.admin(b"status")
        self.assertEqual(first.status, 200)
        self.assertEqual(first.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(first.body, second.body)
        self.assertIn(b'id="requests"', first.body)
        self.assertIn(b"status.json", first.body)
        self.assertNotRegex(first.body, rb"(src|href)=\"(https?:)?//")


class StatusPageTests(StatusProxyCase):
    """
    C{/_cachingproxy/} drawn by Chromium.
    """

    timeout = INSTALL_TIMEOUT + 4 * BROWSER_TIMEOUT
    keepOutput = True

    def setUp(self):
        self.browser = findBrowser()
        super().setUp()
        print(f"\nstatus page screenshot and DOM in {self.output}")

    async def test_statusPage(self):
        """
        Chromium draws the status page from C{status.json}: the request
        count, hit ratio, charts, cache bar, workers and top hosts show up
        in the rendered DOM, and the screenshot is a real picture.
        """
        results = await self.traffic()
        self.assertEqual(results.count(b"HIT"), 9)
        self.factory.metrics.flush()
        url = "http://127.0.0.1:%d/_cachingproxy/" % self.port
        common = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--hide-scrollbars", "--window-size=1200,900", "--virtual-time-budget=5000",
        ]
        screenshot = os.path.join(self.output, "status.png")
        code, out, err = await runBrowser(
            self, self.browser,
            common + ["--user-data-dir=" + os.path.join(self.output, "profile-1"),
                      "--screenshot=" + screenshot, url],
            os.path.join(self.output, "home"),
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        code, dom, err = await runBrowser(
            self, self.browser,
            common + ["--user-data-dir=" + os.path.join(self.output, "profile-2"), "--dump-dom", url],
            os.path.join(self.output, "home"),
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        for scratch in ("profile-1", "profile-2", "home"):
            shutil.rmtree(os.path.join(self.output, scratch), True)
        with open(os.path.join(self.output, "status.html"), "wb") as f:
            f.write(dom)
        print(f"screenshot: {screenshot}")

        # The page asked for its figures.
        self.assertIn(b"/_cachingproxy/", self.fetched)
        self.assertIn(b"/_cachingproxy/status.json", self.fetched)

        page = _Texts()
        page.feed(dom.decode("utf-8"))
        texts = page.texts
        self.assertEqual(texts["requests"].strip(), "13")
        self.assertGreater(int(texts["requests"]), 0)
        ratio = texts["hit-ratio"].strip()
        self.assertRegex(ratio, r"^\d+(\.\d)?%$")
        self.assertAlmostEqual(float(ratio[:-1]), 100 * 9 / 13, places=1)
        self.assertRegex(texts["bytes-saved"], r"^\d+(\.\d+)? (B|KiB|MiB)$")
        self.assertNotEqual(texts["bytes-saved"].strip(), "0 B")
        self.assertEqual(texts["workers-count"].strip(), "1")
        self.assertIn(str(os.getpid()), texts["workers"])
        self.assertIn("w1", texts["workers"])
        self.assertIn("127.0.0.1", texts["hosts"])
        self.assertRegex(texts["cache-text"], r" of 4\.0 MiB")
        self.assertNotIn("error", re.findall(r'id="state" class="([^"]*)"', dom.decode()) or [""])
        self.assertTrue(texts["state"].startswith("updated"), texts["state"])
        rects = re.findall(r'<svg[^>]*id="chart-requests".*?</svg>', dom.decode(), re.S)
        self.assertEqual(len(rects), 1)
        self.assertGreaterEqual(rects[0].count("<rect"), 2)
        self.assertRegex(dom.decode(), r'id="cache-fill"[^>]*style="width: [1-9][0-9.]*%')

        size = os.path.getsize(screenshot)
        self.assertGreater(size, 20000)
        self.assertEqual(pngSize(screenshot), (1200, 900))

    async def dumpDOM(self, name: str, url: str, *arguments: str) -> bytes:
        """
        Load C{url} in Chromium and return the page as drawn (kept in the
        output folder as C{name}.html).
        """
        code, dom, err = await runBrowser(
            self, self.browser,
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1200,900", "--virtual-time-budget=5000", *arguments,
             "--user-data-dir=" + os.path.join(self.output, "profile-" + name), "--dump-dom", url],
            os.path.join(self.output, "home"),
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        for scratch in ("profile-" + name, "home"):
            shutil.rmtree(os.path.join(self.output, scratch), True)
        with open(os.path.join(self.output, name + ".html"), "wb") as f:
            f.write(dom)
        page = _Texts()
        page.feed(dom.decode("utf-8"))
        self.assertTrue(page.texts["state"].startswith("updated"), page.texts["state"])
        return page.texts

    async def test_nearlyAllHits(self):
        """
        After 1999 hits of 2000 lookups of one object the page shows 99.95%
        for the hit ratio and the byte hit ratio, not 100%; the bytes sent;
        and which worker and process served it.
        """
        await self.nearlyAllHits(2000)
        texts = await self.dumpDOM("nearly-all", "http://127.0.0.1:%d/_cachingproxy/" % self.port)
        self.assertEqual(texts["requests"].strip(), "2000")
        self.assertEqual(texts["hit-ratio"].strip(), "99.95%")
        self.assertEqual(texts["hits-note"].strip(), "1999 of 2000 lookups")
        self.assertEqual(texts["saved-note"].strip(), "99.95% of bytes sent")
        self.assertRegex(texts["rps-note"].strip(), r"^\d+(\.\d)? (B|KiB|MiB) sent$")
        self.assertEqual(texts["served-by"].strip(), "served by worker w1, pid %d" % os.getpid())

    async def test_throughTheProxy(self):
        """
        A browser that sends even loopback traffic through the proxy
        (C{--proxy-server} with loopback not bypassed) loads the status page
        from the proxy itself, in absolute form, and the page draws itself.
        """
        await self.traffic()
        url = "http://127.0.0.1:%d/_cachingproxy/" % self.port
        texts = await self.dumpDOM(
            "proxied", url,
            "--proxy-server=http://127.0.0.1:%d" % self.port, "--proxy-bypass-list=<-loopback>")
        # The browser asked the proxy for its own pages in absolute form.
        asked = "".join(self.accessLines)
        self.assertIn('"GET %s HTTP/1.1" 200' % url, asked)
        self.assertIn('"GET %sstatus.json HTTP/1.1" 200' % url, asked)
        self.assertIn(b"/_cachingproxy/status.json", self.fetched)
        # Chromium's own background requests may go through the proxy too
        # (and fail: no cache lookup), so there may be more requests.
        self.assertGreaterEqual(int(texts["requests"]), 13)
        self.assertEqual(texts["hits-note"].strip(), "9 of 13 lookups")
        self.assertEqual(texts["hit-ratio"].strip(), "69.2%")
        self.assertEqual(texts["served-by"].strip(), "served by worker w1, pid %d" % os.getpid())
