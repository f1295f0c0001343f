"""Part secrets: generating them, hashing them for storage, and checking HTTP Basic credentials.

Secrets are stored only as scrypt hashes with a per-part salt (`hash_secret`). Checking one
costs tens of milliseconds on purpose, so `CredentialCache` remembers recent successful checks
for a short while: an upload of many chunks runs scrypt once, not once per chunk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

#: Part ids: what robot configs use (UUIDs, names); nothing that could escape a path.
PART_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1


def new_secret() -> str:
    """A fresh random part secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, n: int = _SCRYPT_N) -> str:
    """The storable hash of `secret`: ``scrypt$n$r$p$salt$hash`` with a random 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches a hash made by `hash_secret` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


@dataclass(frozen=True)
class Credentials:
    """A part id and secret taken from an `Authorization: Basic` header."""

    part_id: str
    secret: str


def parse_basic(header: str | None) -> Credentials | None:
    """The credentials in an Authorization header value, or None if it is missing or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    part_id, sep, secret = decoded.partition(":")
    if not sep or not PART_ID_RE.match(part_id) or not secret:
        return None
    return Credentials(part_id, secret)


class CredentialCache:
    """Remembers successful (part, secret) checks for `ttl_s` seconds so scrypt runs rarely.

    Only successes are cached, keyed by a keyed hash of the secret (the secret itself is not
    kept). A rotated secret therefore stops the old one from working within `ttl_s`.
    """

    def __init__(self, verify: Callable[[str, str], Awaitable[bool]], *, ttl_s: float = 30.0, max_entries: int = 10_000):
        self._verify = verify
        self._ttl_s = ttl_s
        self._max = max_entries
        self._key = os.urandom(32)
        self._ok: dict[tuple[str, bytes], float] = {}
        self.hits = 0
        self.misses = 0

    def _fingerprint(self, creds: Credentials) -> tuple[str, bytes]:
        return creds.part_id, hmac.new(self._key, creds.secret.encode(), hashlib.sha256).digest()

    async def check(self, creds: Credentials) -> bool:
        """Whether `creds` are valid, from the cache when a recent check succeeded."""
        key = self._fingerprint(creds)
        now = time.monotonic()
        expires = self._ok.get(key)
        if expires is not None and expires > now:
            self.hits += 1
            return True
        self.misses += 1
        ok = await self._verify(creds.part_id, creds.secret)
        if ok:
            if len(self._ok) >= self._max:
                self._ok = {k: t for k, t in self._ok.items() if t > now}
                if len(self._ok) >= self._max:
                    self._ok.clear()
            self._ok[key] = now + self._ttl_s
        else:
            self._ok.pop(key, None)
        return ok

    def forget(self, part_id: str) -> None:
        """Drop every cached success of `part_id` (after its secret was rotated in this process)."""
        self._ok = {k: t for k, t in self._ok.items() if k[0] != part_id}
