#!/usr/bin/env bash
# Send a signed Standard Webhooks "employee.terminated" delivery with curl and openssl.
#   usage: send-hr-webhook.sh EMAIL [URL]
# Needs OFFBOARD_SANDBOX_WHSEC (whsec_<base64 key>) in the environment: `. var/sandbox.env`.
set -euo pipefail
email=${1:?usage: send-hr-webhook.sh EMAIL [URL]}
url=${2:-http://127.0.0.1:8080/v1/hooks/hr/hris}
id="msg_$(date +%s%N)"
ts=$(date +%s)
body=$(printf '{"type":"employee.terminated","data":{"email":"%s","hr_reference":"HR-%s","reason":"left"}}' "$email" "$ts")
# the key is the base64 after "whsec_"; the signed string is "{id}.{timestamp}.{body}"
key_hex=$(printf '%s' "${OFFBOARD_SANDBOX_WHSEC#whsec_}" | base64 -d | od -An -vtx1 | tr -d ' \n')
sig=$(printf '%s.%s.%s' "$id" "$ts" "$body" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | base64)
curl -sS -X POST "$url" \
  -H 'Content-Type: application/json' \
  -H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" \
  --data "$body"
echo
