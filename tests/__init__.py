"""The cachingproxy test suite (trial TestCases; pytest collects them too)."""

from cachingproxy.proxy import states

# An illegal move of a state machine fails the test that makes it, instead
# of being logged and answered by closing the connection as in production.
states.strict = True
