"""
pytest configuration. Importing trial here, before pytest configures
itself, lets pytest report trial's C{todo} (expected failures) as xfail.
"""

import importlib

importlib.import_module("twisted.trial.unittest")
