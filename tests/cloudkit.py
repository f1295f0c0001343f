"""Test helpers around the real cloud app: an in-process cloud, and reading back what it committed."""

from __future__ import annotations

from pathlib import Path

import httpx

from capsync.cloud.app import create_app
from capsync.cloud.auth import new_secret


class InProcessCloud:
    """The real cloud app served over httpx's ASGI transport (no socket), with one registered part."""

    def __init__(self, data_dir: Path) -> None:
        self.app = create_app(data_dir)
        self.transport = httpx.ASGITransport(app=self.app)
        self.url = "http://cloud.test"

    async def add_part(self, part_id: str) -> str:
        """Register `part_id`; returns its secret."""
        secret = new_secret()
        await self.app.state.cloud.store.add_part(part_id, secret)
        return secret

    def client(self, part_id: str, secret: str) -> httpx.AsyncClient:
        """An httpx client authenticated as the part."""
        return httpx.AsyncClient(transport=self.transport, base_url=self.url, auth=(part_id, secret))


async def all_pages(client: httpx.AsyncClient, url: str, **params) -> list[dict]:
    """Every item of a paginated query endpoint."""
    items: list[dict] = []
    cursor = None
    while True:
        q = dict(params, limit=1000, **({"cursor": cursor} if cursor else {}))
        resp = await client.get(url, params=q)
        resp.raise_for_status()
        body = resp.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return items


async def committed_records(client: httpx.AsyncClient) -> set[tuple[str, int]]:
    """(file_id, record_index) of every tabular row and binary item the cloud holds for the part."""
    rows = await all_pages(client, "/v1/tabular")
    items = await all_pages(client, "/v1/binary")
    keys = [(r["file_id"], r["record_index"]) for r in rows + items]
    assert len(keys) == len(set(keys)), "the cloud holds a record twice"
    return set(keys)
