#!/bin/sh
# Two `capsync cloud serve` processes on one machine, without systemd, behind the nginx of
# configs/nginx-capsync-cloud.conf (docs/cloud.md, "Running several cloud processes").
#
# Both share everything durable: the PostgreSQL store (--store, the same URL and schema) and the
# object store (--blobs, the same bucket and prefix). Each has its own --data-dir, which then
# holds scratch files only (downloaded chunks, local copies of served files): nothing there needs
# a backup, and a process may start on an empty one. Both listen on loopback only; nginx is what
# the robots reach (over TLS). More processes: more ports, one more `server` line in nginx.
#
# Edit the first lines, then run it from a shell that stays open (or under any supervisor that
# restarts a process that exits: each is independent of the other).
set -eu

STORE='postgresql://capsync:CHANGE-ME@db.example.internal:5432/capsync'   # add ?schema=NAME for another schema
BLOBS='s3://my-capsync/cloud'
export AWS_REGION=eu-west-1
# export AWS_ENDPOINT_URL=https://minio.example.internal:9000            # MinIO or another S3-API store
# export AWS_ACCESS_KEY_ID=capsync AWS_SECRET_ACCESS_KEY=...              # or AWS_PROFILE, or an instance role

# Once, from any machine that reaches the database: register each robot's part (prints its secret).
#   capsync cloud add-part --data-dir /tmp/capsync-admin --store "$STORE" robot-0001

capsync cloud serve --port 8787 --data-dir /srv/capsync/cloud-1 --store "$STORE" --blobs "$BLOBS" \
    --trusted-proxy 127.0.0.1 --log-format json >>/var/log/capsync/cloud-1.log 2>&1 &
capsync cloud serve --port 8788 --data-dir /srv/capsync/cloud-2 --store "$STORE" --blobs "$BLOBS" \
    --trusted-proxy 127.0.0.1 --log-format json >>/var/log/capsync/cloud-2.log 2>&1 &
wait
