"""
The twistd plugin: C{twistd -n cachingproxy --port 20000}.

Only a declaration; the options and the service live in L{cachingproxy.service.tap}
and are imported when twistd runs the plugin, so discovery stays cheap.
"""

from twisted.application.service import ServiceMaker

CachingProxy = ServiceMaker(
    "cachingproxy",
    "cachingproxy.service.tap",
    "A caching HTTP/1.1 forward and reverse proxy.",
    "cachingproxy",
)
