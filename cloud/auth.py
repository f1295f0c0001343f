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
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

#: Part ids: what robot configs use (UUIDs, names); nothing that could escape a path.
PART_ID_RE = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\Z")  # \Z, not $ (no trailing newline)

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


class SignInThrottled(Exception):
    """Too many failed sign-ins from this address or for this part: retry after `retry_after_s`."""

    def __init__(self, retry_after_s: float, who: str) -> None:
        super().__init__(f"too many failed sign-ins {who}; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
        self.who = who


class FailureBuckets:
    """Token buckets of failed sign-ins per key: `burst` failures at once, then `per_s` per second.

    Keys whose bucket is full again are dropped, and at most `max_keys` are kept (the fullest
    are forgotten first), so a flood of made-up addresses or part ids cannot grow memory.
    """

    def __init__(self, burst: float, per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.burst, self.per_s, self._clock, self._max = burst, per_s, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_s)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may fail once more (0 when it may now)."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.per_s

    def failed(self, key: str) -> None:
        """Count one failure of `key`."""
        now = self._clock()
        self._buckets[key] = (self._tokens(key, now) - 1, now)
        if len(self._buckets) > self._max:
            self._buckets = {k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.burst}
            while len(self._buckets) > self._max:
                self._buckets.pop(max(self._buckets, key=lambda k: self._tokens(k, now)))

    def __len__(self) -> int:
        return len(self._buckets)


#: Failed sign-ins allowed per source address: a burst, then one per second.
ADDRESS_BURST, ADDRESS_PER_S = 20, 1.0
#: Failed sign-ins allowed per part id: a burst, then one every 10 seconds.
PART_BURST, PART_PER_S = 10, 0.1
#: A (part, address) pair that signed in has a failure budget of its own for this long (seconds).
KNOWN_ADDRESS_S = 3600.0
#: At most this many scrypt checks run at once (each holds 16 MiB and ~40 ms of a core).
MAX_CONCURRENT_SCRYPT = 2


class CredentialCache:
    """Checks part credentials: remembers recent successes, throttles failures, bounds scrypt work.

    - Successful (part, secret) checks are remembered for `ttl_s` seconds, keyed by an HMAC of the
      secret under a random per-process key (the secret itself is not kept), at most `max_entries`.
      A good part therefore pays scrypt once per `ttl_s`, and a rotated secret stops the old one
      within `ttl_s` (at once in this process through `forget`).
    - Failed checks are counted per source address and per part id (`FailureBuckets`); past the
      budget, `check` raises `SignInThrottled` before any scrypt runs. A remembered success still
      passes. A (part, address) pair that signed in within KNOWN_ADDRESS_S has a budget of its own
      instead of the address's and the part's, so a flood of wrong secrets, for this part from
      elsewhere or for anything from the same address (robots behind one NAT), cannot lock a good
      part out, while failures through that pair stay bounded too.
    - At most `max_concurrent_scrypt` verifications run at once; the rest wait their turn.
    """

    def __init__(self, verify: Callable[[str, str], Awaitable[bool]], *, ttl_s: float = 30.0, max_entries: int = 10_000,
                 max_concurrent_scrypt: int = MAX_CONCURRENT_SCRYPT, clock: Callable[[], float] = time.monotonic):
        self._verify = verify
        self._ttl_s = ttl_s
        self._max = max_entries
        self._key = os.urandom(32)
        self._ok: dict[tuple[str, bytes], float] = {}
        self._known: dict[tuple[str, str], float] = {}  # (part, address) -> until when it counts as known
        self._clock = clock
        self._max_scrypt = max_concurrent_scrypt
        self._scrypt: trio.CapacityLimiter | None = None
        self.by_address = FailureBuckets(ADDRESS_BURST, ADDRESS_PER_S, clock=clock)
        self.by_part = FailureBuckets(PART_BURST, PART_PER_S, clock=clock)
        self.by_known_pair = FailureBuckets(PART_BURST, PART_PER_S, clock=clock)
        self.hits = 0
        self.misses = 0
        self.throttled = 0
        self.failures = 0

    def _fingerprint(self, creds: Credentials, version: str) -> tuple[str, bytes]:
        return creds.part_id, hmac.new(self._key, f"{version}\0{creds.secret}".encode(), hashlib.sha256).digest()

    async def check(self, creds: Credentials, address: str = "", version: str = "") -> bool:
        """Whether `creds` are valid, from the cache when a recent check succeeded.

        `version` names the part's stored secrets (PartRecord.version): when a rotation changes
        it, remembered successes of the old secret no longer match. Raises SignInThrottled when
        `address` or the part had too many failures lately.
        """
        key = self._fingerprint(creds, version)
        now = self._clock()
        expires = self._ok.get(key)
        if expires is not None and expires > now:
            self.hits += 1
            return True
        pair = f"{creds.part_id}\0{address}"
        if self._known.get((creds.part_id, address), 0.0) > now:
            wait, who = self.by_known_pair.retry_after(pair), "for this part from this address"
        else:
            by_address, by_part = self.by_address.retry_after(address), self.by_part.retry_after(creds.part_id)
            wait, who = max(by_address, by_part), "from this address" if by_address > 0 else "for this part"
        if wait > 0:
            self.throttled += 1
            raise SignInThrottled(wait, who)
        self.misses += 1
        if self._scrypt is None:  # made inside Trio: the cache itself may be built outside it
            self._scrypt = trio.CapacityLimiter(self._max_scrypt)
        async with self._scrypt:
            ok = await self._verify(creds.part_id, creds.secret)
        now = self._clock()
        if ok:
            if len(self._ok) >= self._max:
                self._ok = {k: t for k, t in self._ok.items() if t > now}
                if len(self._ok) >= self._max:
                    self._ok.clear()
            self._ok[key] = now + self._ttl_s
            if len(self._known) >= self._max:
                self._known = {k: t for k, t in self._known.items() if t > now}
                if len(self._known) >= self._max:
                    self._known.clear()
            self._known[(creds.part_id, address)] = now + KNOWN_ADDRESS_S
        else:
            self.failures += 1
            self._ok.pop(key, None)
            if self._known.get((creds.part_id, address), 0.0) > now:
                self.by_known_pair.failed(pair)
            else:
                self.by_address.failed(address)
                self.by_part.failed(creds.part_id)
        return ok

    def forget(self, part_id: str) -> None:
        """Drop every cached success of `part_id` (after its secret was rotated in this process)."""
        self._ok = {k: t for k, t in self._ok.items() if k[0] != part_id}


class RejectionLog:
    """Logs rejected sign-ins loudly but at most once per `every_s` seconds, with the count since.

    A flood of wrong secrets is one warning every `every_s` naming the last part, address and
    reason and how many rejections it stands for, not one line per request.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._every_s, self._clock = logger, every_s, clock
        self._last: float | None = None
        self._pending = 0
        self.logged = 0

    def rejected(self, reason: str, part_id: str, client: str) -> None:
        """Count one rejected sign-in; log it when the last log line is old enough."""
        self._pending += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            return
        self._logger.warning("sign-in rejected", extra={
            "reason": reason, "part": part_id, "client": client, "rejected_since_last_log": self._pending})
        self._last, self._pending = now, 0
        self.logged += 1
