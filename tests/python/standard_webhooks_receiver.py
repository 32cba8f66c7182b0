"""A receiver of Finestra's own webhooks that verifies them with the PyPI `standardwebhooks`
package, as a business would, instead of hand-written code.

Driven by tests/gateway_python.rs over stdin/stdout (one JSON object per line):
  stdout {"listening": <port>}           the receiver serves POST /hook
  stdin  {"secrets": ["whsec_…", …]}     the secrets to verify with from now on (the newest
                                         first; during a rotation the test names both)
  stdout {"verified": {"event_id", "kind", "by": [indexes of the secrets that verify it],
                       "tampered_rejected": true, "stale_rejected": true}}
                                         per delivery; a delivery no secret verifies is
                                         answered 400 and reported as {"rejected": …}
"""

import json
import sys
import threading
from datetime import datetime, timedelta, timezone

from flask import Flask, request
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from werkzeug.serving import make_server

lock = threading.Lock()
secrets = []
out_lock = threading.Lock()


def say(obj):
    with out_lock:
        print(json.dumps(obj), flush=True)


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


app = Flask(__name__)


@app.post("/hook")
def hook():
    body = request.get_data()
    headers = {k.lower(): v for k, v in request.headers.items()}
    with lock:
        current = list(secrets)
    if not current:
        return "not ready", 503
    by = [i for i, s in enumerate(current) if verifies(s, body, headers)]
    if not by:
        say({"rejected": headers.get("webhook-id", "")})
        return "bad signature", 400
    # The same delivery with its body changed by one byte, or replayed an hour late, must fail.
    tampered = body.replace(b"}", b" }", 1)
    stale = dict(headers)
    stale["webhook-timestamp"] = str(
        int((datetime.now(timezone.utc) - timedelta(hours=1)).timestamp())
    )
    event = json.loads(body)
    say(
        {
            "verified": {
                "event_id": headers.get("webhook-id"),
                "kind": event.get("kind"),
                "by": by,
                "tampered_rejected": not any(verifies(s, tampered, headers) for s in current),
                "stale_rejected": not any(verifies(s, body, stale) for s in current),
            }
        }
    )
    return "", 204


server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
say({"listening": server.server_port})

for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    command = json.loads(line)
    if "secrets" in command:
        with lock:
            secrets[:] = command["secrets"]
        say({"secrets_set": len(command["secrets"])})
server.shutdown()
