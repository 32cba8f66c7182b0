"""An unmodified Cloud API SDK (pywa) against Finestra's gateway.

The client is pointed at the gateway by its base-URL option and at its webhook by the
Cloud API webhook format; nothing else about it changes. Driven by tests/gateway_python.rs,
which starts the platform and passes where it is through the environment:

  FINESTRA_GATEWAY_URL, FINESTRA_TOKEN, FINESTRA_PHONE_ID, FINESTRA_USER, FINESTRA_SIM_URL,
  FINESTRA_TEMPLATE, FINESTRA_TEMPLATE_LANGUAGE, FINESTRA_VERIFY_TOKEN, FINESTRA_APP_SECRET

Protocol on stdout (one JSON object per line): {"listening": <port>} once the webhook
handler serves; after the test says "subscribed" on stdin (it created the webhook, which
made the gateway's handshake with this handler), the script asks the simulated user to
write, answers through the SDK and prints {"done": {...}} with what it saw. Any failure
prints {"failed": "..."} and exits 1.
"""

import json
import os
import queue
import sys
import threading
import time

import httpx
from flask import Flask
from pywa import WhatsApp
from pywa.types import Message, MessageStatus, Template
from werkzeug.serving import make_server

env = os.environ
TIMEOUT = 60


def say(obj):
    print(json.dumps(obj), flush=True)


def fail(why):
    say({"failed": why})
    sys.exit(1)


app = Flask(__name__)
wa = WhatsApp(
    phone_id=env["FINESTRA_PHONE_ID"],
    token=env["FINESTRA_TOKEN"],
    base_url=env["FINESTRA_GATEWAY_URL"],
    server=app,
    webhook_endpoint="/webhook",
    verify_token=env["FINESTRA_VERIFY_TOKEN"],
    app_secret=env["FINESTRA_APP_SECRET"],
)

inbound = queue.Queue()
statuses = {}
statuses_lock = threading.Lock()


@wa.on_message()
def on_message(_: WhatsApp, msg: Message):
    inbound.put(msg)


@wa.on_message_status()
def on_status(_: WhatsApp, status: MessageStatus):
    with statuses_lock:
        statuses.setdefault(status.id, []).append(status.status.value)


server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
say({"listening": server.server_port})

if sys.stdin.readline().strip() != "subscribed":
    fail("the test did not subscribe the webhook")

# The user opens the conversation (only a user can).
said = httpx.post(
    f"{env['FINESTRA_SIM_URL']}/sim/v1/say",
    json={
        "phone_number_id": env["FINESTRA_PHONE_ID"],
        "from": env["FINESTRA_USER"],
        "name": "Giulia",
        "text": "Hello, where is my order?",
    },
    timeout=10,
)
if said.status_code != 200:
    fail(f"the simulated user could not write: {said.status_code} {said.text}")

try:
    msg = inbound.get(timeout=TIMEOUT)
except queue.Empty:
    fail("no inbound message reached the SDK's webhook handler")
if msg.text != "Hello, where is my order?":
    fail(f"the handler got {msg.text!r}")

# Inside the window: a free-form reply and a read receipt, then a template.
text_id = wa.send_message(to=msg.from_user.wa_id, text="Thanks Giulia, it ships today.")
read = wa.mark_message_as_read(message_id=msg.id)
template_id = wa.send_template(
    to=msg.from_user.wa_id,
    template=Template(
        name=env["FINESTRA_TEMPLATE"],
        language=Template.Language(env["FINESTRA_TEMPLATE_LANGUAGE"]),
        body=[Template.TextValue(value="Giulia"), Template.TextValue(value="A-1")],
    ),
)

# Their statuses come back through the same handler, under the ids the sends answered.
deadline = time.monotonic() + TIMEOUT
while time.monotonic() < deadline:
    with statuses_lock:
        seen = {k: list(v) for k, v in statuses.items()}
    if all("delivered" in seen.get(i, []) for i in (text_id, template_id)):
        break
    time.sleep(0.2)
else:
    fail(f"statuses seen: {seen}; wanted delivered for {text_id} and {template_id}")

say(
    {
        "done": {
            "inbound_id": msg.id,
            "from": msg.from_user.wa_id,
            "profile_name": msg.from_user.name,
            "text_id": text_id,
            "template_id": template_id,
            "read": read,
            "statuses": seen,
        }
    }
)
server.shutdown()
