"""
cachingproxy: a caching HTTP proxy built on Twisted, run as a twistd plugin.

Start it with C{twistd -n cachingproxy --port 20000}; see README.rst.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
