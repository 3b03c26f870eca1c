"""
C{python -m cachingproxy [options]} is C{twistd -n cachingproxy [options]}.
"""

import sys


def missing(error: ImportError) -> str:
    """
    @return: one line saying what to do when what the proxy runs on cannot
        be imported.
    """
    try:
        import twisted
    except ImportError:
        twisted = None
    if getattr(twisted, "__file__", None) is None:
        # No Twisted in this Python. From the checkout's root "twisted" is
        # then its twisted/plugins folder seen as a namespace package,
        # hence "No module named 'twisted.scripts'".
        problem = f"Twisted is not installed for {sys.executable}"
    else:
        problem = f"{error} (for {sys.executable})"
    return (f"cachingproxy: {problem}: run ./run-proxy, which installs the project into "
            f".venv, or use .venv/bin/python -m cachingproxy")


def main() -> None:
    try:
        from twisted.scripts.twistd import run
    except ImportError as error:
        print(missing(error), file=sys.stderr)
        raise SystemExit(1)
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "cachingproxy"] + sys.argv[1:]
    run()


if __name__ == "__main__":
    main()
