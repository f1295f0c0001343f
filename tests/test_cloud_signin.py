"""Sign-in under a flood of wrong secrets: throttled per address and per part (429 + Retry-After),
scrypt work bounded, successes remembered, rejections logged without flooding the log."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

from capsync.cloud.auth import ADDRESS_BURST, CredentialCache, Credentials
from tests.test_cloud_support import PART_A, PART_B, SECRET_A, CloudEnv, env  # noqa: F401


def _client(env: CloudEnv, part: str, secret: str, address: str = "127.0.0.9") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=env.app, raise_app_exceptions=False, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://cloud.test", auth=(part, secret))


async def test_a_flood_from_one_address_is_throttled_and_a_good_part_keeps_working(env: CloudEnv, caplog) -> None:
    creds = env.app.state.cloud.credentials
    caplog.set_level(logging.WARNING, logger="capsync.cloud")
    async with _client(env, PART_A, SECRET_A, "127.0.0.2") as good:
        assert (await good.get("/v1/files")).status_code == 200
        statuses = []
        for i in range(40):
            async with _client(env, f"made-up-{i}", "wrong") as bad:
                r = await bad.get("/v1/files")
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1 and "address" in r.json()["detail"], r.text
            assert (await good.get("/v1/files")).status_code == 200  # remembered: no scrypt, no throttle
    assert statuses.count(401) == 20 and statuses.count(429) == 20, statuses
    assert creds.misses == 1 + 20  # the good part's one check, then only the failures the budget allows
    rejected = [r for r in caplog.records if r.getMessage() == "sign-in rejected"]
    assert 1 <= len(rejected) <= 2, len(rejected)


async def test_one_part_is_throttled_whatever_address_tries_it(env: CloudEnv) -> None:
    statuses = []
    for i in range(15):
        async with _client(env, PART_B, "wrong", f"127.0.1.{i + 1}") as bad:
            r = await bad.get("/v1/summary")
            statuses.append(r.status_code)
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
    async with _client(env, PART_B, "wrong", "127.0.2.1") as bad:
        r = await bad.get("/v1/summary")
    assert r.status_code == 429 and "for this part" in r.json()["detail"]
    async with _client(env, PART_A, SECRET_A, "127.0.2.1") as good:  # another part is not affected
        assert (await good.get("/v1/summary")).status_code == 200


async def test_a_part_throttled_by_strangers_still_signs_in_from_its_own_address(env: CloudEnv) -> None:
    from tests.test_cloud_support import SECRET_B

    async with _client(env, PART_B, SECRET_B, "127.0.4.1") as own:
        assert (await own.get("/v1/summary")).status_code == 200
    env.app.state.cloud.credentials.forget(PART_B)  # its remembered success is gone (as after a restart)
    for i in range(12):
        async with _client(env, PART_B, "wrong", f"127.0.5.{i + 1}") as bad:
            await bad.get("/v1/summary")
    async with _client(env, PART_B, SECRET_B, "127.0.6.1") as elsewhere:
        assert (await elsewhere.get("/v1/summary")).status_code == 429
    async with _client(env, PART_B, SECRET_B, "127.0.4.1") as own:
        assert (await own.get("/v1/summary")).status_code == 200


async def test_scrypt_work_is_bounded_and_a_good_secret_pays_it_once(env: CloudEnv) -> None:
    running = peak = 0

    async def verify(part_id: str, secret: str) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await env.store.verify_part(part_id, secret)
        finally:
            running -= 1

    cache = CredentialCache(verify, max_concurrent_scrypt=2)
    results: list[bool] = []

    async def attempt(i: int) -> None:
        results.append(await cache.check(Credentials(f"p{i}", "wrong"), f"127.0.3.{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(attempt, i)
    assert results == [False] * 12 and peak == 2
    for _ in range(10):
        assert await cache.check(Credentials(PART_A, SECRET_A), "127.0.3.99")
    assert cache.misses == 12 + 1 and cache.hits == 9


async def test_a_part_behind_the_same_address_as_a_flood_still_signs_in(env: CloudEnv) -> None:
    """Robots behind one NAT share an address: a flood of wrong secrets from it throttles strangers
    there, but not a part that signed in from it, and that part's own failures stay bounded."""
    from tests.test_cloud_support import SECRET_B

    nat = "127.0.7.1"
    async with _client(env, PART_B, SECRET_B, nat) as own:
        assert (await own.get("/v1/summary")).status_code == 200
    for i in range(30):
        async with _client(env, f"made-up-{i}", "wrong", nat) as bad:
            await bad.get("/v1/summary")
    async with _client(env, PART_A, SECRET_A, nat) as stranger:  # never signed in from here: throttled
        r = await stranger.get("/v1/summary")
        assert r.status_code == 429 and "from this address" in r.json()["detail"]
    env.app.state.cloud.credentials.forget(PART_B)  # its remembered success is gone (as after a restart)
    async with _client(env, PART_B, SECRET_B, nat) as own:
        assert (await own.get("/v1/summary")).status_code == 200
    statuses = []
    for _ in range(12):
        async with _client(env, PART_B, "wrong", nat) as guess:
            statuses.append((await guess.get("/v1/summary")).status_code)
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses


@pytest.mark.parametrize("trusted", [True, False], ids=["behind a trusted proxy", "proxy not trusted"])
async def test_behind_a_proxy_each_robot_keeps_its_own_sign_in_budget(env: CloudEnv, trusted: bool) -> None:
    """Every request through nginx comes from nginx's address: unless the cloud believes the proxy's
    X-Forwarded-For (`serve --trusted-proxy`), one stranger's flood of made-up part ids spends the
    budget of every robot behind it, and a robot that never signed in before gets 429."""
    proxy = "10.1.1.1"
    env.app.state.cloud.trusted_proxies = frozenset({proxy} if trusted else set())

    async def through_proxy(part: str, secret: str, origin: str) -> int:
        async with _client(env, part, secret, proxy) as c:
            return (await c.get("/v1/files", headers={"X-Forwarded-For": origin})).status_code

    flood = [await through_proxy(f"made-up-{i}", "wrong", "203.0.113.66") for i in range(ADDRESS_BURST + 5)]
    assert flood.count(429) == 5  # the stranger is throttled either way
    robot = await through_proxy(PART_A, SECRET_A, "198.51.100.7")
    assert robot == (200 if trusted else 429)


async def test_a_peer_that_is_not_a_trusted_proxy_cannot_choose_its_address(env: CloudEnv) -> None:
    env.app.state.cloud.trusted_proxies = frozenset({"10.1.1.1"})
    statuses = []
    for i in range(ADDRESS_BURST + 5):  # a new made-up origin every time: ignored, the peer is the address
        async with _client(env, f"made-up-{i}", "wrong", "127.0.0.66") as c:
            statuses.append((await c.get("/v1/files", headers={"X-Forwarded-For": f"192.0.2.{i}"})).status_code)
    assert statuses.count(429) == 5
