"""
Packaging glue: metadata lives in setup.cfg. The twisted/plugins/ file is
installed as a module of the C{twisted.plugins} namespace so that
C{twistd --help} lists C{cachingproxy}.
"""

from setuptools import setup

setup(
    py_modules=["twisted.plugins.cachingproxy_plugin"],
)
