"""Old agents keep syncing with a new cloud: answers carry only the fields the agent's revision knows."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from capsync.runtime.cloud_client import CloudClient, CloudUnavailable
from capsync.runtime.sync_protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, FileStatus, protocol_version
from tests.cloudkit import InProcessCloud


class FileStatusOf010(BaseModel):
    """FileStatus exactly as capsync 0.1.0 parsed it: strict, no sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file_id: str
    state: str
    offset: int = 0
    size: int | None = None
    records: int | None = None


async def _upload(http: httpx.AsyncClient, file_id: str, data: bytes, headers: dict) -> list[dict]:
    route = f"/v1/files/{file_id}"
    answers = [await http.post(route, json={"kind": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                            "name": "notes.txt"}, headers=headers)]
    answers.append(await http.put(route + "/data", params={"offset": 0}, content=data,
                                  headers={**headers, "Content-Type": "application/octet-stream"}))
    answers.append(await http.post(route + "/commit", headers=headers))
    answers.append(await http.get(route, headers=headers))
    for r in answers:
        assert r.status_code == 200, r.text
    return [r.json() for r in answers]


async def test_an_agent_without_the_header_gets_answers_its_strict_model_accepts(tmp_path):
    cloud = InProcessCloud(tmp_path)
    secret = await cloud.add_part("part-a")
    async with cloud.client("part-a", secret) as http:
        old = await _upload(http, "OLDAGENTFILE0001", b"hello", {})
        new = await _upload(http, "NEWAGENTFILE0001", b"hello", {PROTOCOL_HEADER: str(PROTOCOL_VERSION)})
    for answer in old:
        FileStatusOf010.model_validate(answer)  # would raise on an unknown field
    assert old[2]["state"] == "committed" and "sha256" not in old[2]
    assert new[2]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(ValueError):
        FileStatusOf010.model_validate(new[2])  # why the field must be negotiated


def test_protocol_version_reads_what_it_is_given():
    assert protocol_version(None) == 1 and protocol_version("") == 1 and protocol_version("x") == 1
    assert protocol_version("2") == 2 and protocol_version("-5") == 1
    status = FileStatus(file_id="F" * 16, state="committed", size=1, sha256="0" * 64)
    assert "sha256" not in status.for_revision(1) and status.for_revision(2)["sha256"] == "0" * 64


async def test_the_client_states_its_revision_and_an_unparsable_answer_is_an_outage():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get(PROTOCOL_HEADER))
        return httpx.Response(200, content=b'{"not": "a status"}')

    client = CloudClient("http://cloud.test", "part-a", "s", transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(CloudUnavailable, match="not a file status"):
            await client.status("F" * 16)
    finally:
        await client.aclose()
    assert seen == [str(PROTOCOL_VERSION)]
