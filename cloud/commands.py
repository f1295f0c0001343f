"""The `capsync cloud ...` commands (their parser is cloud/cli.py): run the cloud, register and
manage parts (cloud/part_admin.py), apply retention. Each takes the parsed arguments and returns
the exit code.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from capsync.cloud.app import apply_retention, create_app
from capsync.cloud.auth import PART_ID_RE, new_secret
from capsync.cloud.blobs import BlobsUnavailable, LocalBlobs
from capsync.cloud.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, _limits
from capsync.cloud.part_admin import PartAdmin
from capsync.cloud.server import serve
from capsync.cloud.store import PartExistsError, StoreUnavailable, UnknownPartError
from capsync.cloud.store_url import StoreUrlError, check as check_store_url, open_store as store_url_open, store_url
from capsync.cloud.timefmt import iso_from_ns
from capsync.cloud.workers import LISTENING_PREFIX, become_worker, run_parent, stop_when_parent_dies
from capsync.runtime.blocking import run_blocking
from capsync.runtime.logs import configure_logging
from capsync.runtime.second_signal import EXIT_INTERRUPTED, exit_on_second_signal

log = logging.getLogger("capsync.cloud.cli")


def _with_admin(name: str, args: argparse.Namespace, action: Any) -> int:
    """Run `action(PartAdmin)` on the command's store; errors as `capsync cloud NAME: ...` and an exit code."""
    if getattr(args, "part_id", None) is not None and not PART_ID_RE.match(args.part_id):
        print(f"capsync cloud {name}: invalid part id {args.part_id!r} (letters, digits, . _ -; at most 128)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store = open_store(args.data_dir, store_url(args))
    except StoreUrlError as exc:
        print(f"capsync cloud {name}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        action(PartAdmin(store))
    except UnknownPartError:
        print(f"capsync cloud {name}: no part {args.part_id!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(_unreachable(name, exc), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close_sync()
    return EXIT_OK


def cmd_parts(args: argparse.Namespace) -> int:
    """`capsync cloud parts`: one JSON line per part (id, enabled, reason, files, bytes, last upload)."""
    def show(admin: PartAdmin) -> None:
        for p in admin.list_sync():
            print(json.dumps({
                "part_id": p.part_id, "enabled": p.enabled, "disabled_reason": p.disabled_reason, "files": p.files,
                "bytes": p.bytes, "last_upload": None if p.last_upload_ns is None else iso_from_ns(p.last_upload_ns),
            }), flush=True)

    return _with_admin("parts", args, show)


def cmd_disable_part(args: argparse.Namespace) -> int:
    """`capsync cloud disable-part PART_ID [--reason TEXT]`: its requests get 403 with the reason."""
    if not args.reason.strip() or len(args.reason) > 300:
        print("capsync cloud disable-part: --reason is 1 to 300 characters", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _with_admin("disable-part", args, lambda admin: admin.disable_sync(args.part_id, args.reason.strip()))


def cmd_enable_part(args: argparse.Namespace) -> int:
    """`capsync cloud enable-part PART_ID`: serve a disabled part again."""
    return _with_admin("enable-part", args, lambda admin: admin.enable_sync(args.part_id))


def cmd_remove_part(args: argparse.Namespace) -> int:
    """`capsync cloud remove-part PART_ID --delete-data | --keep-data`."""
    return _with_admin("remove-part", args, lambda admin: admin.remove_sync(
        args.part_id, delete_data=args.delete_data, data_dir=args.data_dir, blobs=open_blobs(args)))


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    """`capsync cloud rotate-secret PART_ID [--grace SECONDS]`: print the part's new secret."""
    if not 0 <= args.grace <= 30 * 86_400:
        print("capsync cloud rotate-secret: --grace is 0 to 2592000 seconds (30 days)", file=sys.stderr)
        return EXIT_BAD_INPUT
    secret = new_secret()
    code = _with_admin("rotate-secret", args, lambda admin: admin.rotate_sync(args.part_id, secret, grace_s=args.grace))
    if code == EXIT_OK:
        print(secret, flush=True)
    return code


def open_store(data_dir: Path, url: str | None) -> Any:
    """The store a cloud command works on: the one `url` (`--store`) names, else SQLite in `data_dir`
    (cloud/store_url.py). Raises StoreUrlError for a bad URL."""
    return store_url_open(url, data_dir)


def _unreachable(name: str, exc: StoreUnavailable) -> str:
    return f"capsync cloud {name}: {exc}; check the --store URL and that the database server is up"


def open_blobs(args: argparse.Namespace) -> Any:
    """The file bytes a cloud command works on: S3Blobs for `--blobs s3://...` (scratch files under
    --data-dir), else None (LocalBlobs in --data-dir). BlobsUnavailable when the S3 client cannot be set up."""
    if not getattr(args, "blobs", None):
        return None
    from capsync.cloud.s3_blobs import S3Blobs  # boto3 only for the commands that use it

    return S3Blobs.from_uri(args.blobs, scratch_dir=Path(args.data_dir) / "scratch")


def _part_from_config(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(part id, secret) of `add-part`: PART_ID and a new secret, or a robot config's `cloud.id` and
    `cloud.secret` with `--from-config` (the robot then syncs as its config is); (None, why) if unusable."""
    if args.from_config is None:
        return (args.part_id, new_secret()) if args.part_id else (None, "give a PART_ID or --from-config ROBOT.json")
    from capsync.runtime.config import ConfigError, load_config  # robot configs: only this command reads one

    try:
        cloud = load_config(args.from_config).cloud
    except ConfigError as exc:
        return None, f"--from-config: {exc}"
    if not cloud.id:
        return None, f"--from-config: {args.from_config} has no cloud.id; add \"cloud\": {{\"id\": ...}}"
    if args.part_id and args.part_id != cloud.id:
        return None, f"PART_ID {args.part_id!r} is not {args.from_config}'s cloud.id {cloud.id!r}"
    return cloud.id, cloud.secret or new_secret()


def cmd_add_part(args: argparse.Namespace) -> int:
    """`capsync cloud add-part --data-dir DIR PART_ID`: print a new secret for the part (stdout).
    With `--from-config ROBOT.json` the part is that config's `cloud.id` with its `cloud.secret`."""
    part_id, secret = _part_from_config(args)
    if part_id is None:
        print(f"capsync cloud add-part: {secret}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.part_id = part_id
    if not PART_ID_RE.match(args.part_id):
        print(f"capsync cloud add-part: invalid part id {args.part_id!r} (letters, digits, . _ -; at most 128)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store = open_store(args.data_dir, store_url(args))
    except StoreUrlError as exc:
        print(f"capsync cloud add-part: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store.add_part_sync(args.part_id, secret, rotate=args.rotate)
    except PartExistsError:
        print(f"capsync cloud add-part: part {args.part_id!r} exists; use --rotate to replace its secret",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnknownPartError:
        print(f"capsync cloud add-part: no part {args.part_id!r} to rotate", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(_unreachable("add-part", exc), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close_sync()
    print(secret, flush=True)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """`capsync cloud serve --data-dir DIR`: print the URL it listens on, serve until SIGINT/SIGTERM."""
    if (args.tls_cert is None) != (args.tls_key is None):
        print("capsync cloud serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(args.log_format, args.log_level)
    os.umask(0o077)  # every file and folder the cloud makes is its owner's only, whatever the shell's umask
    try:
        check_store_url(store_url(args))
    except StoreUrlError as exc:
        print(f"capsync cloud serve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.workers > 1 and args.worker is None:
        return _serve_workers(args)
    if args.worker is not None:
        become_worker(args.worker)
    try:
        trio.run(_serve_until_signal, args)
    except KeyboardInterrupt:  # a second Ctrl-C just as the stop ended (during it: _say_interrupted)
        _say_interrupted()
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _serve_failed(args, _leaf(exc))
    return EXIT_OK


def _serve_workers(args: argparse.Namespace) -> int:
    """`serve --workers N`: the parent of N worker processes (cloud/workers.py)."""
    try:
        return run_parent(args, lambda port: _url(args, port), _say_interrupted)
    except KeyboardInterrupt:
        _say_interrupted()
        return EXIT_INTERRUPTED
    except OSError as exc:
        return _serve_failed(args, exc)


def _url(args: argparse.Namespace, port: int) -> str:
    """The URL `serve` listens on, as it announces it."""
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"{'https' if args.tls_cert else 'http'}://{host}:{port}"


def _leaf(exc: BaseException) -> BaseException:
    """The error inside the nurseries' exception groups (the first one, when there are several)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _serve_failed(args: argparse.Namespace, exc: BaseException) -> int:
    """Say in one line why `serve` could not run, and how to fix it; the exit code."""
    if isinstance(exc, BlobsUnavailable):
        log.error("cannot use the object store; check --blobs and the AWS_* settings", extra={"error": str(exc)})
    elif isinstance(exc, StoreUnavailable):
        log.error("cannot reach the store; check --store and that the database server is up",
                  extra={"error": str(exc)})
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        log.error(f"port {args.port} on {args.host} is in use; stop what holds it or pick another --port",
                  extra={"host": args.host, "port": args.port})
    elif isinstance(exc, OSError) and exc.filename is not None:
        log.error(f"cannot use {exc.filename}: {exc.strerror}; pick a --data-dir (or file) this user can write",
                  extra={"data_dir": str(args.data_dir)})
    elif isinstance(exc, OSError):
        log.error(f"cannot serve: {exc}", extra={"host": args.host, "port": args.port})
    else:
        log.error("cloud failed", exc_info=exc)
    return EXIT_FAILURE


def cmd_retention(args: argparse.Namespace) -> int:
    """`capsync cloud retention --data-dir DIR`: apply retention now; print each deleted file as JSON."""
    try:
        store = open_store(args.data_dir, store_url(args))
    except StoreUrlError as exc:
        print(f"capsync cloud retention: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def run() -> list:
        app = create_app(args.data_dir, store, blobs=open_blobs(args))
        try:
            return await apply_retention(app.state.cloud)
        finally:
            await store.aclose()

    try:
        gone = trio.run(run)
    except StoreUnavailable as exc:
        print(_unreachable("retention", exc), file=sys.stderr)
        return EXIT_FAILURE
    for f in gone:
        print(json.dumps({"part_id": f.part_id, "file_id": f.file_id, "records": f.records, "bytes": f.size,
                          "resource": f"{f.resource_type}/{f.resource_name}/{f.method}"}), flush=True)
    return EXIT_OK


async def _serve_until_signal(args: argparse.Namespace) -> None:
    url = store_url(args)
    store = open_store(args.data_dir, url) if url else None
    try:
        if store is not None:
            await run_blocking(store.prepare_sync)  # fail now, plainly, when the database cannot be reached
        blobs = open_blobs(args)
        if blobs is not None:
            await run_blocking(blobs.check)  # and when the object store cannot be used
        elif args.worker is not None:
            blobs = LocalBlobs(args.data_dir, shared=True)  # other workers write there too
        await _serve(args, store, blobs)
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def _serve(args: argparse.Namespace, store: Any, blobs: Any = None) -> None:
    worker = args.worker is not None
    with trio.open_signal_receiver(*((signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM))) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve(
                args.data_dir, args.host, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                store=store, limits=_limits(args), blobs=blobs, trusted_proxies=frozenset(args.trusted_proxy),
                listen_fd=args.listen_fd, retention_interval_s=math.inf if args.worker else None,  # worker 0 sweeps
                task_status=task_status,
            ))
            if worker:
                nursery.start_soon(stop_when_parent_dies, nursery.cancel_scope)
            print(f"{LISTENING_PREFIX}{_url(args, port)}", flush=True)
            async for signum in signals:
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                if not worker:  # a worker's parent owns the hard stop (cloud/workers.py)
                    exit_on_second_signal(signals, _say_interrupted)
                nursery.cancel_scope.cancel()
                break


def _say_interrupted() -> None:
    print("capsync cloud serve: interrupted while stopping", file=sys.stderr)
