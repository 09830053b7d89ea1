#!/usr/bin/env bash
# update_report_status.sh: asks the server to move one report to a new status.
#
# Usage: update_report_status.sh <userID> <reportID> <new-status>
#   Sends PUT $SSE_BASE_URL/v4/report?user_id=<userID> with {"id":"<reportID>","status":"<new-status>"}.
#   SSE_BASE_URL defaults to http://localhost:3000.
#   The request carries an Idempotency-Key (a fresh random one, or $SSE_IDEMPOTENCY_KEY to
#   repeat an earlier run safely); a lost answer or a 503 is retried with the same key, so
#   the change is applied at most once.
#   With access control on (--auth jwt), set SSE_TOKEN to a token of that user (or an admin).
# Prints the server's answer and the HTTP status. Exit: 0 on 2xx, 1 on an HTTP error
# (409 invalid transition included) or a connection failure, 2 on bad arguments.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") <userID> <reportID> <new-status>" >&2
    echo "  statuses: pending queued processing completed failed canceled" >&2
    echo "  server: \$SSE_BASE_URL (default http://localhost:3000)" >&2
}

if [[ $# -ne 3 ]]; then
    usage
    exit 2
fi

user_id=$1
report_id=$2
new_status=$3

for arg in "$user_id" "$report_id" "$new_status"; do
    if [[ -z "$arg" ]]; then
        echo "$(basename "$0"): arguments must not be empty" >&2
        usage
        exit 2
    fi
    # Keeps the hand-built JSON valid and free of injected fields.
    if [[ "$arg" == *'"'* || "$arg" == *'\'* || "$arg" =~ [[:cntrl:]] ]]; then
        echo "$(basename "$0"): arguments must not contain '\"', '\\' or control characters: $arg" >&2
        exit 2
    fi
done

base_url=${SSE_BASE_URL:-http://localhost:3000}
base_url=${base_url%/}

# The user id goes into the query string: percent-encode everything but unreserved chars.
urlencode() {
    local LC_ALL=C s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [a-zA-Z0-9.~_-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

body=$(printf '{"id":"%s","status":"%s"}' "$report_id" "$new_status")
url="$base_url/v4/report?user_id=$(urlencode "$user_id")"

if [[ -n "${SSE_IDEMPOTENCY_KEY:-}" ]]; then
    key=$SSE_IDEMPOTENCY_KEY
    if [[ ! "$key" =~ ^[[:graph:]]{1,255}$ || "$key" == *'"'* ]]; then
        echo "$(basename "$0"): SSE_IDEMPOTENCY_KEY must be 1 to 255 printable characters without spaces or quotes" >&2
        exit 2
    fi
else
    key=$(cat /proc/sys/kernel/random/uuid 2>/dev/null || od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
fi

# With access control on (--auth jwt), $SSE_TOKEN is sent as the bearer token (never printed).
auth_header=()
if [[ -n "${SSE_TOKEN:-}" ]]; then
    if [[ "$SSE_TOKEN" =~ [[:space:][:cntrl:]] ]]; then
        echo "$(basename "$0"): SSE_TOKEN must not contain spaces or control characters" >&2
        exit 2
    fi
    auth_header=(--header "Authorization: Bearer $SSE_TOKEN")
fi

response_file=$(mktemp)
trap 'rm -f "$response_file"' EXIT

if ! http_status=$(curl --silent --show-error --max-time 10 \
    --retry 2 --retry-delay 1 --retry-connrefused \
    --request PUT \
    --header 'Content-Type: application/json' \
    --header "Idempotency-Key: $key" \
    "${auth_header[@]}" \
    --data-binary "$body" \
    --output "$response_file" \
    --write-out '%{http_code}' \
    "$url"); then
    echo "$(basename "$0"): request to $url failed" >&2
    exit 1
fi

cat "$response_file"
# Make sure the status line starts on its own line even if the body has no newline.
[[ -s "$response_file" && -n "$(tail -c 1 "$response_file")" ]] && echo
echo "HTTP $http_status"

if [[ "$http_status" =~ ^2[0-9][0-9]$ ]]; then
    exit 0
fi
exit 1
