#!/usr/bin/env bash
# The Cloud API over plain HTTP against Finestra's gateway: the requests a business writes
# with curl (Cloud API reference shapes), and a webhook handler that answers the verification
# handshake and checks X-Hub-Signature-256 with the app secret. Only curl and python3's
# standard library (JSON fields, the handler, the HMAC) are used.
#
# Driven by tests/gateway_python.rs (environment: GATEWAY_URL TOKEN PHONE_ID USER SIM_URL
# TEMPLATE TEMPLATE_LANGUAGE VERIFY_TOKEN APP_SECRET). It prints {"listening": <port>} once the
# handler serves, waits for "subscribed" on stdin (the test created the webhook, which made the
# handshake), then has the simulated user write, receives that message through the handler,
# replies with a text, marks it read and sends a template, and prints {"done": {...}}; on any
# failure {"failed": "..."} and exit 1.
set -euo pipefail
: "${GATEWAY_URL:?}" "${TOKEN:?}" "${PHONE_ID:?}" "${USER:?}" "${SIM_URL:?}" "${TEMPLATE:?}"
: "${TEMPLATE_LANGUAGE:?}" "${VERIFY_TOKEN:?}" "${APP_SECRET:?}"
API="$GATEWAY_URL/v21.0"
HOOKS=$(mktemp -d)
trap 'kill "${HANDLER:-0}" 2>/dev/null || true; rm -rf "$HOOKS"' EXIT

fail() { printf '{"failed": "%s"}\n' "$*"; exit 1; }
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"; }

# The webhook handler: GET answers the challenge for the right verify token, POST keeps each
# body whose X-Hub-Signature-256 is the app secret's HMAC (a bad one is answered 401).
VERIFY_TOKEN="$VERIFY_TOKEN" APP_SECRET="$APP_SECRET" python3 -u - "$HOOKS" <<'PY' >"$HOOKS/port" &
import hashlib, hmac, http.server, os, sys, urllib.parse
out = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        ok = q.get("hub.mode") == ["subscribe"] and q.get("hub.verify_token") == [os.environ["VERIFY_TOKEN"]]
        self.send_response(200 if ok else 403); self.end_headers()
        if ok: self.wfile.write(q["hub.challenge"][0].encode())
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        want = "sha256=" + hmac.new(os.environ["APP_SECRET"].encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, self.headers.get("x-hub-signature-256", "")):
            self.send_response(401); self.end_headers(); return
        name = os.path.join(out, f"{len(os.listdir(out))}.json")
        with open(name + ".part", "wb") as f: f.write(body)
        os.rename(name + ".part", name)
        self.send_response(200); self.end_headers()
    def log_message(self, *_): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_port)
server.serve_forever()
PY
HANDLER=$!
for _ in $(seq 50); do [ -s "$HOOKS/port" ] && break; sleep 0.1; done
[ -s "$HOOKS/port" ] || fail "the handler did not start"
printf '{"listening": %s}\n' "$(cat "$HOOKS/port")"
read -r said || true
[ "$said" = "subscribed" ] || fail "the test did not subscribe the webhook"

# The user writes first (only a user opens a conversation).
curl -sf -X POST "$SIM_URL/sim/v1/say" -H 'content-type: application/json' \
  -d "{\"phone_number_id\":\"$PHONE_ID\",\"from\":\"$USER\",\"name\":\"Giulia\",\"text\":\"Is my order ready?\"}" \
  >/dev/null || fail "the simulated user could not write"

# Its message arrives through the handler as the Cloud API's notification.
inbound=""
for _ in $(seq 300); do
  for f in "$HOOKS"/*.json; do
    [ -e "$f" ] || continue
    if [ "$(field entry.0.changes.0.value.messages.0.text.body <"$f" 2>/dev/null || true)" = "Is my order ready?" ]; then
      inbound=$f; break 2
    fi
  done
  sleep 0.2
done
[ -n "$inbound" ] || fail "no inbound message reached the handler"
wamid=$(field entry.0.changes.0.value.messages.0.id <"$inbound")
from=$(field entry.0.changes.0.value.messages.0.from <"$inbound")

post() { # <json body>: the answer, or fail with it
  local answer
  answer=$(curl -s -X POST "$API/$PHONE_ID/messages" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$1")
  printf '%s' "$answer" | field messaging_product >/dev/null 2>&1 \
    || printf '%s' "$answer" | field success >/dev/null 2>&1 \
    || fail "refused: $(printf '%s' "$answer" | tr '"' "'")"
  printf '%s' "$answer"
}

text_id=$(post "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"$from\",\"type\":\"text\",\"text\":{\"preview_url\":false,\"body\":\"Yes, it ships today.\"}}" | field messages.0.id)
read_ok=$(post "{\"messaging_product\":\"whatsapp\",\"status\":\"read\",\"message_id\":\"$wamid\"}" | field success)
template_id=$(post "{\"messaging_product\":\"whatsapp\",\"to\":\"$from\",\"type\":\"template\",\"template\":{\"name\":\"$TEMPLATE\",\"language\":{\"code\":\"$TEMPLATE_LANGUAGE\"},\"components\":[{\"type\":\"body\",\"parameters\":[{\"type\":\"text\",\"text\":\"Giulia\"},{\"type\":\"text\",\"text\":\"A-1\"}]}]}}" | field messages.0.id)

printf '{"done": {"inbound_id": "%s", "from": "%s", "text_id": "%s", "template_id": "%s", "read": "%s"}}\n' \
  "$wamid" "$from" "$text_id" "$template_id" "$read_ok"
