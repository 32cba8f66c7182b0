#!/usr/bin/env bash
# The foundation demo: a tenant and its number are registered, two users write (one now, one
# 25 hours ago) through signed Cloud API webhooks, and both windows are shown.
set -euo pipefail
cd "$(dirname "$0")/.."
fin=./target/debug/finestra
TENANT=demo-pizzeria
NUMBER=100200300
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "A partner (BSP) onboards a business: tenant '$TENANT' with number $NUMBER (its webhooks are signed with its app secret)"
$fin partner create --id demo-bsp --name "Demo BSP"
$fin tenant add --partner demo-bsp --id "$TENANT" --name "Pizzeria Napoli"
$fin number add --tenant "$TENANT" --phone-number-id "$NUMBER" --display "+39 02 1234 5678" \
  --app-secret demo-app-secret-0001

step "The business gets a read-only API key (only its hash is stored)"
FINESTRA_API_KEY=$($fin --json key create --tenant "$TENANT" --scopes read --label demo --prefix fin_test_ \
  | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
export FINESTRA_API_KEY
echo "key ${FINESTRA_API_KEY:0:13}… created; window queries below authenticate with it"

step "Giulia writes now: a signed webhook reaches ingest, which answers 200 once Kafka has the event"
RUN_ID=$(date +%s%N)
$fin dev send-text --phone-number-id "$NUMBER" --from 393471234567 --name Giulia \
  --text "Ciao! Are you open tonight?" --wamid "wamid.demo.giulia.$RUN_ID"

step "Marco's message was sent 25 hours ago (the provider delivers it late)"
$fin dev send-text --phone-number-id "$NUMBER" --from 393479876543 --name Marco \
  --text "Do you deliver?" --minutes-ago 1500 --wamid "wamid.demo.marco.$RUN_ID"

step "The window service applied both events; the windows:"
# The events travel through the broker; on a fresh broker the consumer group joins first.
wait_for() { # user pattern
  for _ in $(seq 1 150); do
    $fin --json window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user "$1" | grep -q "$2" && return 0
    sleep 0.2
  done
  echo "the window service has not applied $1's message after 30 s; see var/run/window.log" >&2
  return 1
}
wait_for 393471234567 "wamid.demo.giulia.$RUN_ID"
wait_for 393479876543 "wamid.demo.marco.$RUN_ID"
$fin window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user 393471234567
echo "  -> the business may reply free-form, free of charge, until the window closes."
$fin window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user 393479876543
echo "  -> Marco's 24-hour window closed an hour ago: only an approved template may reach him now."
