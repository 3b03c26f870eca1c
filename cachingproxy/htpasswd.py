# -*- test-case-name: tests.test_access -*-
"""
Password hashes of an htpasswd file, checked without the C{crypt} module
(deprecated, and gone from Python 3.13): bcrypt (C{htpasswd -B}:
C{$2y$}, C{$2b$}, C{$2a$}) through the C{bcrypt} package, SHA-256 and
SHA-512 crypt (C{$5$}, C{$6$}: C{mkpasswd -m sha-512}) in pure Python.

Usage::

    users = readPasswordFile("/etc/cachingproxy/htpasswd")   # {user: hash}
    checkPassword(password, users[user])                     # slow: see below

A check is deliberately slow: a bcrypt check takes from a few milliseconds
(cost 5) to a few hundred (cost 12 and up), a SHA crypt check about half a
microsecond a round (hashes of more than L{MAX_SHA_ROUNDS} rounds are
refused). L{cachingproxy.access} runs them off the reactor thread and
remembers the successful ones.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import re
import secrets
from typing import Dict, Optional, Tuple

from twisted.logger import Logger

__all__ = [
    "MAX_SHA_ROUNDS",
    "checkPassword",
    "hashProblem",
    "readPasswordFile",
    "shaCrypt",
    "unmatchableHash",
]

_log = Logger(namespace="cachingproxy.htpasswd")

_CRYPT64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_SHA256_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
    (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
    (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
    (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
    (62, 20, 41),
)

#: most SHA crypt rounds a hash in the password file may ask for: the check
#: runs in pure Python
MAX_SHA_ROUNDS = 500_000

_SHA_CRYPT = re.compile(
    rb"^\$(?P<kind>[56])\$(?:rounds=(?P<rounds>[0-9]{1,9})\$)?(?P<salt>[^$:\n]{0,16})\$"
    rb"(?P<hash>[./0-9A-Za-z]+)$"
)
_BCRYPT = re.compile(rb"^\$2[aby]\$(?P<cost>[0-9]{2})\$[./0-9A-Za-z]{53}$")


def _crypt64(data: bytes, order: Tuple[Tuple[int, int, int], ...], tail: Tuple[int, ...]) -> bytes:
    out = bytearray()

    def emit(b2: int, b1: int, b0: int, n: int) -> None:
        w = (b2 << 16) | (b1 << 8) | b0
        for _ in range(n):
            out.append(_CRYPT64[w & 0x3F])
            w >>= 6

    for a, b, c in order:
        emit(data[a], data[b], data[c], 4)
    if len(tail) == 2:  # SHA-256: bytes 31, 30
        emit(0, data[tail[0]], data[tail[1]], 3)
    else:  # SHA-512: byte 63
        emit(0, 0, data[tail[0]], 2)
    return bytes(out)


def shaCrypt(password: bytes, setting: bytes) -> bytes:
    """
    SHA-256 or SHA-512 crypt (Ulrich Drepper's specification, glibc's
    C{$5$} and C{$6$}), in pure Python: the C{crypt} module is deprecated
    and gone from Python 3.13.

    @param setting: C{$5$salt}, C{$6$rounds=N$salt} or a whole hash (its
        salt and rounds are used).
    @return: the whole hash string.
    @raise ValueError: when C{setting} is not a SHA crypt setting.
    """
    match = re.match(rb"^\$([56])\$(?:rounds=([0-9]{1,9})\$)?([^$]*)", setting)
    if match is None:
        raise ValueError("not a SHA crypt setting")
    kind, roundsText, salt = match.groups()
    salt = salt[:16]
    rounds = 5000
    if roundsText is not None:
        rounds = min(max(int(roundsText), 1000), 999_999_999)
    if kind == b"5":
        new, size, order, tail = hashlib.sha256, 32, _SHA256_ORDER, (31, 30)
    else:
        new, size, order, tail = hashlib.sha512, 64, _SHA512_ORDER, (63,)
    p = password
    b = new(p + salt + p).digest()
    a = new(p + salt)
    a.update(b * (len(p) // size) + b[: len(p) % size])
    i = len(p)
    while i:
        a.update(b if i & 1 else p)
        i >>= 1
    c = a.digest()
    dp = new(p * len(p)).digest()
    pBytes = dp * (len(p) // size) + dp[: len(p) % size]
    ds = new(salt * (16 + c[0])).digest()
    sBytes = ds * (len(salt) // size) + ds[: len(salt) % size]
    for r in range(rounds):
        h = new(pBytes if r & 1 else c)
        if r % 3:
            h.update(sBytes)
        if r % 7:
            h.update(pBytes)
        h.update(c if r & 1 else pBytes)
        c = h.digest()
    prefix = b"$" + kind + b"$"
    if roundsText is not None:
        prefix += b"rounds=%d$" % rounds
    return prefix + salt + b"$" + _crypt64(c, order, tail)


def hashProblem(stored: bytes) -> Optional[str]:
    """
    @return: why C{stored} cannot be used to check a password, or C{None}.
    """
    if _BCRYPT.match(stored):
        if importlib.util.find_spec("bcrypt") is None:
            return "a bcrypt hash needs the bcrypt package (pip install bcrypt)"
        return None
    match = _SHA_CRYPT.match(stored)
    if match:
        expected = 43 if match.group("kind") == b"5" else 86
        if len(match.group("hash")) != expected:
            return "malformed SHA crypt hash"
        rounds = match.group("rounds")
        if rounds is not None and int(rounds) > MAX_SHA_ROUNDS:
            return f"SHA crypt hash of more than {MAX_SHA_ROUNDS} rounds (too slow to check)"
        return None
    scheme = stored.split(b"$")[1].decode("ascii", "replace") if stored.startswith(b"$") else ""
    what = f"the ${scheme}$ hash scheme" if scheme else "this hash scheme (or plain text)"
    return (
        f"{what} is not supported: use bcrypt (htpasswd -B) or SHA-256/512 "
        f"crypt (mkpasswd -m sha-512)"
    )


def checkPassword(password: bytes, stored: bytes) -> bool:
    """
    @return: whether C{password} matches C{stored}, a bcrypt or SHA crypt
        hash (anything else never matches). Synchronous and slow: a bcrypt
        check costs milliseconds to hundreds of milliseconds.
    """
    if _BCRYPT.match(stored):
        import bcrypt

        if stored.startswith(b"$2y$"):
            # $2y$ (PHP, htpasswd) is the same algorithm as $2b$.
            stored = b"$2b$" + stored[4:]
        try:
            # bcrypt uses the first 72 bytes; the bcrypt package refuses
            # longer passwords since 5.0 instead of cutting them.
            return bcrypt.checkpw(password[:72], stored)
        except ValueError:
            return False
    if _SHA_CRYPT.match(stored) and hashProblem(stored) is None:
        try:
            computed = shaCrypt(password, stored)
        except ValueError:
            return False
        return hmac.compare_digest(computed.rpartition(b"$")[2], stored.rpartition(b"$")[2])
    return False


def readPasswordFile(path: str, strict: bool = True) -> Dict[bytes, bytes]:
    """
    Read an htpasswd file: C{user:hash} lines; blank lines and C{#}
    comments are skipped; the first line for a user counts.

    @param strict: raise for a bad line (at start-up) rather than log it
        and skip it (on a reload).
    @return: C{{user: hash}}.
    @raise OSError: when the file cannot be read.
    @raise ValueError: C{"PATH:LINE: problem"}, when C{strict}.
    """
    with open(path, "rb") as f:
        data = f.read()
    users: Dict[bytes, bytes] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, stored = line.partition(b":")
        problem = None
        if not sep or not user:
            problem = "expected user:hash"
        else:
            problem = hashProblem(stored.strip())
        if problem is not None:
            if strict:
                raise ValueError(f"{path}:{number}: {problem}")
            _log.error("{path}:{line}: {problem}; line skipped", path=path, line=number, problem=problem)
            continue
        users.setdefault(user, stored.strip())
    if strict and not users:
        raise ValueError(f"{path}: no user:hash line")
    return users


def unmatchableHash(like: bytes) -> bytes:
    """
    @return: a hash no password matches (of an unguessable password), as
        costly to check as C{like}: checking it for an unknown user takes
        as long as for a known one. C{b""} when C{like} is neither bcrypt
        nor SHA crypt.
    """
    match = _BCRYPT.match(like)
    if match:
        import bcrypt

        cost = max(4, min(int(match.group("cost")), 31))
        return bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(cost))
    if like:
        # A SHA crypt hash of the same rounds.
        return shaCrypt(secrets.token_bytes(32), like)
    return b""
