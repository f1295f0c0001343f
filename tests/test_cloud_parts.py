"""Part management through the real CLI against a live cloud app on both stores: list, disable/enable,
rotate a secret (at once, or with a grace period), remove with or without the part's data."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import pytest
import trio

from capsync.cloud.cli import main as cli_main
from tests.s3_standin import shared
from tests.test_cloud_support import (
    BACKENDS, PART_A, PART_B, SECRET_A, SECRET_B, CloudEnv, committed_bytes, open_env, tabular_capture, upload,
)


@pytest.fixture(params=BACKENDS)
def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The cloud on every backend (SQLite, the MongoDB stand-in, files on the S3 stand-in), with parts A and B."""
    with open_env(request.param, tmp_path) as e:
        yield e


def _cli(env: CloudEnv, capsys, *args: str) -> tuple[int, str, str]:
    """Run `capsync cloud ARGS` (its own store connection, as another process would have) on the env's store."""
    extra = ["--data-dir", str(env.data_dir)]
    uri = getattr(env.store, "uri", None)
    if env.backend == "postgresql":
        extra += ["--store", f"{env.store.url}?schema={env.store.schema}"]
    elif uri:
        base, _, query = uri.partition("?")
        extra += ["--mongodb-uri", f"{base.rstrip('/')}/{env.store.db.name}" + (f"?{query}" if query else "")]
    aws = contextlib.nullcontext()
    if env.backend == "s3" and args[0] == "remove-part":  # it finds the object store as `serve` does: --blobs, AWS_*
        extra += ["--blobs", env.blobs_uri]  # type: ignore[attr-defined]
        aws = shared().environ()
    capsys.readouterr()
    with aws:
        code = cli_main(["cloud", args[0], *extra, *args[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_parts_lists_and_a_disabled_part_is_refused_with_403_at_once(any_env: CloudEnv, tmp_path: Path,
                                                                          capsys) -> None:
    fid, data = tabular_capture(tmp_path / "a", n=4)
    async with any_env.client(PART_A) as a, any_env.client(PART_B) as b:
        assert (await upload(a, fid, data)).status_code == 200
        code, out, _ = _cli(any_env, capsys, "parts")
        listed = {p["part_id"]: p for p in map(json.loads, out.splitlines())}
        assert code == 0 and set(listed) == {PART_A, PART_B}
        assert (listed[PART_A]["enabled"], listed[PART_A]["files"], listed[PART_A]["bytes"]) == (True, 1, len(data))
        assert listed[PART_A]["last_upload"].endswith("Z") and listed[PART_B]["files"] == 0
        assert listed[PART_B]["last_upload"] is None

        assert _cli(any_env, capsys, "disable-part", PART_A, "--reason", "robot stolen")[0] == 0
        r = await a.get("/v1/files")  # A signed in a moment ago: the cached sign-in does not outlive the disable
        assert r.status_code == 403 and "robot stolen" in r.json()["detail"], r.text
        assert (await a.post(f"/v1/files/{fid}x", json={"kind": "file", "size": 1, "sha256": "0" * 64})).status_code == 403
        assert (await b.get("/v1/files")).status_code == 200
        code, out, _ = _cli(any_env, capsys, "parts")
        row = next(p for p in map(json.loads, out.splitlines()) if p["part_id"] == PART_A)
        assert (row["enabled"], row["disabled_reason"]) == (False, "robot stolen")

        assert _cli(any_env, capsys, "enable-part", PART_A)[0] == 0
        assert (await a.get("/v1/files")).status_code == 200
    code, _, err = _cli(any_env, capsys, "disable-part", "nobody")
    assert code == 2 and "no part 'nobody'" in err


async def test_rotate_secret_stops_the_old_one_at_once(any_env: CloudEnv, capsys) -> None:
    async with any_env.client(PART_A) as old:
        assert (await old.get("/v1/files")).status_code == 200  # remembered by the sign-in cache
        code, out, _ = _cli(any_env, capsys, "rotate-secret", PART_A)
        new_secret = out.strip()
        assert code == 0 and len(new_secret) > 20 and new_secret != SECRET_A
        assert (await old.get("/v1/files")).status_code == 401
    async with any_env.client(PART_A, new_secret) as new:
        assert (await new.get("/v1/files")).status_code == 200


async def test_rotate_secret_with_grace_keeps_the_old_one_until_it_ends(any_env: CloudEnv, capsys) -> None:
    code, out, _ = _cli(any_env, capsys, "rotate-secret", PART_B, "--grace", "1.5")
    assert code == 0
    async with any_env.client(PART_B, SECRET_B) as old, any_env.client(PART_B, out.strip()) as new:
        assert (await old.get("/v1/files")).status_code == 200
        assert (await new.get("/v1/files")).status_code == 200
        await trio.sleep(1.7)
        assert (await old.get("/v1/files")).status_code == 401  # even though it was just remembered
        assert (await new.get("/v1/files")).status_code == 200
    assert _cli(any_env, capsys, "rotate-secret", PART_B, "--grace", "-1")[0] == 2


async def test_remove_part_needs_a_choice_and_does_what_was_chosen(any_env: CloudEnv, tmp_path: Path, capsys) -> None:
    fa, da = tabular_capture(tmp_path / "a", n=3)
    fb, db = tabular_capture(tmp_path / "b", part=PART_B, n=3)
    async with any_env.client(PART_A) as a, any_env.client(PART_B) as b:
        assert (await upload(a, fa, da)).status_code == 200
        assert (await upload(b, fb, db)).status_code == 200
        with pytest.raises(SystemExit) as exc:
            _cli(any_env, capsys, "remove-part", PART_A)  # neither --delete-data nor --keep-data
        assert exc.value.code == 2
        assert (await a.get("/v1/files")).status_code == 200

        assert _cli(any_env, capsys, "remove-part", PART_A, "--delete-data")[0] == 0
        assert (await a.get("/v1/files")).status_code == 401
        assert committed_bytes(any_env, PART_A, fa) is None
        assert _cli(any_env, capsys, "remove-part", PART_B, "--keep-data")[0] == 0
        assert (await b.get("/v1/files")).status_code == 401
        assert committed_bytes(any_env, PART_B, fb) == db
    code, out, _ = _cli(any_env, capsys, "parts")
    assert code == 0 and out == ""
    for part in (PART_A, PART_B):  # added again: B finds its kept data, A starts empty
        code, out, _ = _cli(any_env, capsys, "add-part", part)
        async with any_env.client(part, out.strip()) as c:
            items = (await c.get("/v1/files")).json()["items"]
            rows = (await c.get("/v1/tabular")).json()["items"]
        assert (len(items), len(rows)) == ((1, 3) if part == PART_B else (0, 0)), part
    assert _cli(any_env, capsys, "remove-part", "nobody", "--keep-data")[0] == 2
