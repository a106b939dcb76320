#!/bin/sh
# One-shot (compose service `bucket-init`, image minio/mc): create S3_BUCKET_NAME on MinIO and
# upload the demo objects downloads/{id}.zip that `delineate dev` seeds (service/embedded.py
# DEMO_FILE_IDS). Idempotent: a second `docker compose up` finds the bucket and overwrites the
# same ten small files. Exits non-zero on any failure, so the API never starts without them.
set -eu

: "${S3_ENDPOINT:?}" "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}" "${S3_BUCKET_NAME:?}"
SEED_DIR="${SEED_DIR:-/seed}"

mc alias set delineate "$S3_ENDPOINT" "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY" >/dev/null
mc mb --ignore-existing "delineate/$S3_BUCKET_NAME"
count=0
for file in "$SEED_DIR"/downloads/*.zip; do
    [ -f "$file" ] || continue  # no match leaves the pattern itself
    mc cp --quiet "$file" \
        "delineate/$S3_BUCKET_NAME/downloads/${file##*/}" >/dev/null
    count=$((count + 1))
done
[ "$count" -gt 0 ] || { echo "no demo files in $SEED_DIR/downloads" >&2; exit 1; }
echo "bucket $S3_BUCKET_NAME ready with $count demo files"
