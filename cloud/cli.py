"""The `capsync cloud ...` command line: the parser of the commands that run the cloud, register and
manage parts (list, disable, enable, remove, rotate secrets), export a part's data from a running
cloud (cloud/export_client.py) and apply retention.

`add_cloud_commands(subparsers)` adds them to the `capsync` parser (each sets `func`, which
returns the exit code); `python -m capsync.cloud.cli` runs them alone. The commands themselves
are in cloud/commands.py, imported only when one runs: an agent's `capsync run` builds this
parser too, and must not carry the cloud's web server and database in its memory. Exit codes: 0
success, 1 runtime failure, 2 bad input (bad usage, existing part without --rotate), 130
interrupted again while stopping.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from capsync.cloud.limits import UploadLimits
from capsync.runtime.logs import LOG_LEVELS, log_level
from capsync.cloud.s3_uri import parse_uri

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
#: Most processes `serve --workers` starts.
MAX_WORKERS = 64


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The `func` of a command: cloud/commands.py's `name`, imported when the command runs."""
    def run(args: argparse.Namespace) -> int:
        from capsync.cloud import commands

        return getattr(commands, name)(args)
    run.__name__ = name
    return run


def add_cloud_commands(subparsers: Any) -> None:
    """Register the `cloud` commands (serve, add-part, the part commands, retention) on an argparse subparsers object."""
    cloud = subparsers.add_parser("cloud", help="run the sync cloud and manage its parts")
    sub = cloud.add_subparsers(metavar="CLOUD_COMMAND", required=True)

    s = sub.add_parser("serve", help="serve the sync protocol and query API until SIGINT/SIGTERM")
    s.add_argument("--data-dir", type=Path, required=True, help="where the database and uploaded files live")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8787, help="0 picks a free port (printed on start)")
    s.add_argument("--tls-cert", type=Path, help="PEM certificate; with --tls-key, serve HTTPS")
    s.add_argument("--tls-key", type=Path, help="PEM private key")
    _store_options(s, "keep parts, uploads, files and rows in this database instead of SQLite under --data-dir: "
                      "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (several serve processes may share it) or "
                      "mongodb://HOST/DB; binary bytes stay under --data-dir")
    d = UploadLimits()
    s.add_argument("--max-inflight-bytes", type=int, default=d.max_inflight_bytes, metavar="N",
                   help="bytes one part may have declared in uploads not yet committed (0: no limit; default %(default)s)")
    s.add_argument("--max-inflight-uploads", type=int, default=d.max_inflight_uploads, metavar="N",
                   help="uploads one part may have declared and not yet committed (0: no limit; default %(default)s)")
    s.add_argument("--max-stored-bytes", type=int, default=d.max_stored_bytes, metavar="N",
                   help="bytes one part may store, committed plus in flight (0: no limit; default %(default)s)")
    s.add_argument("--min-free-bytes", type=int, default=d.min_free_bytes, metavar="N",
                   help="free disk bytes every new upload must leave (0: no check; default %(default)s)")
    s.add_argument("--upload-expiry-days", type=float, default=d.upload_expiry_s / 86_400, metavar="DAYS",
                   help="an upload that received no byte for this long is removed (0: never; default %(default)s)")
    _blobs_option(s)
    s.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="a reverse proxy in front of this process (repeatable): for its requests the client's "
                        "address is taken from X-Forwarded-For (sign-in budgets are per address)")
    s.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="serve with N processes on this machine, sharing the port, the store and the file bytes, "
                        "so that the cloud uses N cores (default 1; see docs/cloud.md)")
    s.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the parent of --workers N
    s.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # the parent's listening socket
    s.add_argument("--log-format", choices=["text", "json"], default="text")
    s.add_argument("--log-level", default="INFO", type=log_level, choices=LOG_LEVELS)
    s.set_defaults(func=_command("cmd_serve"))

    a = sub.add_parser("add-part", help="register a part and print its new secret")
    a.add_argument("--data-dir", type=Path, required=True)
    a.add_argument("part_id", metavar="PART_ID", nargs="?")
    a.add_argument("--rotate", action="store_true", help="replace the secret of an existing part")
    a.add_argument("--from-config", type=Path, metavar="ROBOT_JSON",
                   help="register the part a robot config names (cloud.id) with the secret it holds (cloud.secret)")
    _store_options(a)
    a.set_defaults(func=_command("cmd_add_part"))

    _add_part_commands(sub)

    _add_export_command(sub)

    r = sub.add_parser("retention", help="apply every file's retention_policy now, and print what was deleted")
    r.add_argument("--data-dir", type=Path, required=True)
    _store_options(r)
    _blobs_option(r, "the cloud keeps its files in this object store (as `serve --blobs`)")
    r.set_defaults(func=_command("cmd_retention"))


def _export(args: argparse.Namespace) -> int:
    from capsync.cloud.export_client import cmd_export

    return cmd_export(args)


def _add_export_command(sub: Any) -> None:
    x = sub.add_parser("export", help="export a part's readings and files from a running cloud into a folder (resumable)",
                       description="Every reading and/or binary item of a part matching the filters, from a running "
                                   "cloud, into --out: readings.jsonl|csv, binary.jsonl|csv and the bytes under files/. "
                                   "Run the same command again to resume an interrupted export (or to add newer rows).")
    x.add_argument("--config", type=Path, help="a robot config: its cloud.app_address, cloud.id and cloud.secret are used")
    x.add_argument("--url", help="the cloud's URL (default: the config's cloud.app_address)")
    x.add_argument("--part", help="the part id (default: the config's cloud.id)")
    x.add_argument("--secret-file", type=Path, help="a file holding the part's secret (else $CAPSYNC_SECRET or the config's)")
    x.add_argument("--out", type=Path, required=True, help="the folder to export into (created; resumed when it holds this export)")
    x.add_argument("--data", choices=["all", "tabular", "binary"], default="all", help="readings, binary items or both")
    x.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="of readings.* and binary.* (default jsonl)")
    x.add_argument("--resource-type")
    x.add_argument("--resource-name")
    x.add_argument("--method")
    x.add_argument("--start", help="from this time on (RFC 3339 or integer ns; inclusive)")
    x.add_argument("--end", help="before this time (exclusive)")
    x.add_argument("--tag", action="append", default=[], help="rows carrying this tag (repeatable: all of them)")
    x.set_defaults(func=_export)


def _store_options(parser: argparse.ArgumentParser, text: str = "the store the cloud runs on (as `serve --store`)") -> None:
    """`--store URL` (cloud/store_url.py reads it) and `--mongodb-uri URI`, its older name for MongoDB."""
    parser.add_argument("--store", metavar="URL", help=text)
    parser.add_argument("--mongodb-uri", metavar="URI", help="the same as --store with a mongodb:// URL")


def _add_part_commands(sub: Any) -> None:
    p = sub.add_parser("parts", help="list the parts: id, enabled, files, bytes, last upload (JSON lines)")
    p.add_argument("--data-dir", type=Path, required=True)
    _store_options(p)
    p.set_defaults(func=_command("cmd_parts"))

    d = sub.add_parser("disable-part", help="refuse a part's requests (403 with the reason) until enable-part")
    d.add_argument("--data-dir", type=Path, required=True)
    d.add_argument("part_id", metavar="PART_ID")
    d.add_argument("--reason", default="disabled by the operator", help="told to the part in every 403")
    _store_options(d)
    d.set_defaults(func=_command("cmd_disable_part"))

    e = sub.add_parser("enable-part", help="serve a disabled part again")
    e.add_argument("--data-dir", type=Path, required=True)
    e.add_argument("part_id", metavar="PART_ID")
    _store_options(e)
    e.set_defaults(func=_command("cmd_enable_part"))

    rm = sub.add_parser("remove-part", help="remove a part; say what becomes of its data")
    rm.add_argument("--data-dir", type=Path, required=True)
    rm.add_argument("part_id", metavar="PART_ID")
    choice = rm.add_mutually_exclusive_group(required=True)
    choice.add_argument("--delete-data", action="store_true", help="delete its uploads, files, rows and bytes too")
    choice.add_argument("--keep-data", action="store_true",
                        help="keep its data (it comes back if the part id is added again)")
    _store_options(rm)
    _blobs_option(rm, "the cloud keeps its files in this object store (as `serve --blobs`)")
    rm.set_defaults(func=_command("cmd_remove_part"))

    rs = sub.add_parser("rotate-secret", help="give a part a new secret (printed); the old one stops at once")
    rs.add_argument("--data-dir", type=Path, required=True)
    rs.add_argument("part_id", metavar="PART_ID")
    rs.add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                    help="let the old secret work this many seconds more (default 0: stops at once)")
    _store_options(rs)
    rs.set_defaults(func=_command("cmd_rotate_secret"))


def _workers(value: str) -> int:
    """argparse type of --workers: 1 to MAX_WORKERS."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of processes from 1 to {MAX_WORKERS} "
                                         f"(this machine has {os.cpu_count()} cores)")
    return n


def _blobs_uri(value: str) -> str:
    """argparse type of --blobs: an s3:// address, checked (bad ones are a usage error, exit 2)."""
    try:
        parse_uri(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _blobs_option(parser: Any, help: str | None = None) -> None:
    parser.add_argument("--blobs", metavar="s3://BUCKET/PREFIX", type=_blobs_uri, help=help or (
        "keep uploaded files in this S3-API object store, which several `serve` processes can share "
        "(endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or "
        "AWS_PROFILE; see docs/cloud.md); default: under --data-dir"))


def _limits(args: argparse.Namespace) -> UploadLimits:
    return UploadLimits(
        max_inflight_bytes=args.max_inflight_bytes, max_inflight_uploads=args.max_inflight_uploads,
        max_stored_bytes=args.max_stored_bytes, min_free_bytes=args.min_free_bytes,
        upload_expiry_s=args.upload_expiry_days * 86_400,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cloud commands alone: `python -m capsync.cloud.cli cloud serve ...`."""
    parser = argparse.ArgumentParser(prog="capsync", description="The capsync cloud.")
    add_cloud_commands(parser.add_subparsers(metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
