"""
C{python -m cachingproxy [options]} is C{twistd -n cachingproxy [options]}.
"""

import sys

from twisted.scripts.twistd import run


def main() -> None:
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "cachingproxy"] + sys.argv[1:]
    run()


if __name__ == "__main__":
    main()
