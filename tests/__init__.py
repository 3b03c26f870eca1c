"""The cachingproxy test suite (trial TestCases; pytest collects them too)."""
