#!/usr/bin/env bash
# dynamodb_local_init.sh: creates the report_status table (and its UserIdIndex GSI) on DynamoDB Local.
#
# Endpoint: $DYNAMODB_ENDPOINT, default http://localhost:8111. Table: $SSE_DYNAMODB_TABLE,
# default report_status. Idempotent: an existing table is left as it is (exit 0 either way;
# non-zero when DynamoDB cannot be reached). Runs the server's own `init-dynamodb` subcommand
# (no aws CLI): through `cargo run --release`, or the binary at $SSE_SERVER_BIN when set.
set -euo pipefail

DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT:-http://localhost:8111}

if [[ -n "${SSE_SERVER_BIN:-}" ]]; then
    exec "$SSE_SERVER_BIN" --dynamodb-endpoint "$DYNAMODB_ENDPOINT" init-dynamodb
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
exec cargo run --release -- --dynamodb-endpoint "$DYNAMODB_ENDPOINT" init-dynamodb
