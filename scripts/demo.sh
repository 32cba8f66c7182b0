#!/usr/bin/env bash
# The story of the platform, narrated: an operator onboards a partner, the partner a business
# with its number and approved templates; two users write (one now, one 25 hours ago, so her
# window has closed without waiting) through signed Cloud API webhooks; the business reads both
# windows, replies free inside the window, is refused a free-form message outside it, sends a
# template charged by market; a user blocks the business and the next send is refused; then the
# wallet, the month's invoice and a reconciliation.
set -euo pipefail
cd "$(dirname "$0")/.."
fin=./target/debug/finestra
TENANT=demo-pizzeria
WABA=demo-waba-100
NUMBER=100200300
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Re-running the demo finds its partner, tenant, number and template already there.
once() {
  local out
  if out=$("$@" 2>&1); then echo "$out"; return 0; fi
  if grep -q ALREADY_EXISTS <<<"$out"; then echo "(exists already, kept)"; return 0; fi
  echo "$out" >&2
  return 1
}
secret_of() { sed -n 's/.*"secret":"\([^"]*\)".*/\1/p'; }

step "The operator's key (created once by 'finestra bootstrap', kept in var/run/operator.key)"
mkdir -p var/run
if [ ! -s var/run/operator.key ]; then
  $fin --json bootstrap --prefix fin_test_ --another | secret_of >var/run/operator.key
fi
export FINESTRA_API_KEY
FINESTRA_API_KEY=$(cat var/run/operator.key)
echo "operator key ${FINESTRA_API_KEY:0:13}… (only its hash is stored)"

step "The partner registers the business's number with the network (the simulator), as it configures an app at Meta"
$fin sim register-number --phone-number-id "$NUMBER" --waba-id "$WABA" --display "+39 02 1234 5678" \
  --app-secret demo-app-secret-0001

step "A partner (BSP) onboards the business in Finestra: tenant '$TENANT', business account $WABA, number $NUMBER"
once $fin partner create --id demo-bsp --name "Demo BSP"
once $fin tenant create --partner demo-bsp --id "$TENANT" --name "Pizzeria Napoli" --waba-id "$WABA"
once $fin number add --tenant "$TENANT" --phone-number-id "$NUMBER" --display "+39 02 1234 5678" \
  --app-secret demo-app-secret-0001
# The marketing frequency cap: at most 5 marketing templates per user per day for this business
# (the platform's default is 2 per 7 days), so the demo can run again and again.
$fin tenant limits --id "$TENANT" --marketing-cap 5 --marketing-cap-days 1 >/dev/null

step "The business makes two templates: Finestra submits each to the network, which reviews it"
once $fin template create --tenant "$TENANT" --name order_ready --language it --category UTILITY \
  --body "Ciao {{1}}, il tuo ordine {{2}} è pronto"
once $fin template create --tenant "$TENANT" --name weekend_offer --language it --category MARKETING \
  --body "Ciao {{1}}, questo weekend pizza a metà prezzo!"
# The network approves a template a couple of seconds after its submission, and says so with a
# signed webhook that reaches accounts through ingest and the broker.
for name in order_ready weekend_offer; do
  for _ in $(seq 1 150); do
    $fin --json template list --tenant "$TENANT" | grep "\"name\":\"$name\"" | grep -q '"status":"APPROVED"' && break
    sleep 0.2
  done
  $fin --json template list --tenant "$TENANT" | grep "\"name\":\"$name\"" | grep -q '"status":"APPROVED"' \
    || { echo "the network has not approved $name after 30 s; see var/run/simulator.log and var/run/accounts.log" >&2; exit 1; }
done
$fin template list --tenant "$TENANT"
OPERATOR_KEY=$FINESTRA_API_KEY

step "The business gets its own read-only API key"
TENANT_KEY=$($fin --json key create --tenant "$TENANT" --scopes read --label demo | secret_of)
echo "tenant key ${TENANT_KEY:0:13}… created"

step "Giulia writes now: the network (the simulator) posts a signed webhook to ingest, which answers 200 once Kafka has the event"
GIULIA_WAMID=$($fin sim user-says --phone-number-id "$NUMBER" --from 393471234567 --name Giulia \
  --text "Ciao! Are you open tonight?" | tee /dev/stderr | sed -n 's/.*: \(wamid[^ ]*\) .*/\1/p')

step "Marco's message was sent 25 hours ago (the network delivers it late)"
MARCO_WAMID=$($fin sim user-says --phone-number-id "$NUMBER" --from 393479876543 --name Marco \
  --text "Do you deliver?" --seconds-ago 90000 | tee /dev/stderr | sed -n 's/.*: \(wamid[^ ]*\) .*/\1/p')

step "The window service applied both events; the business reads the windows with its key:"
export FINESTRA_API_KEY=$TENANT_KEY
# The events travel through the broker; on a fresh broker the consumer group joins first.
wait_for() { # user pattern
  for _ in $(seq 1 150); do
    $fin --json window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user "$1" | grep -q "$2" && return 0
    sleep 0.2
  done
  echo "the window service has not applied $1's message after 30 s; see var/run/window.log" >&2
  return 1
}
wait_for 393471234567 "$GIULIA_WAMID"
wait_for 393479876543 "$MARCO_WAMID"
$fin window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user 393471234567
echo "  -> the business may reply free-form, free of charge, until the window closes."
$fin window get --tenant "$TENANT" --phone-number-id "$NUMBER" --user 393479876543
echo "  -> Marco's 24-hour window closed an hour ago: only an approved template may reach him now."


step "Billing: the partner tops up the business's wallet (idempotent by its payment reference)"
bill() { $fin billing --api-key "$OPERATOR_KEY" "$@"; }
bill top-up --tenant "$TENANT" --micros 5000000 --id "demo-payment-$(date +%Y%m)" --note "demo credit"
bill top-up --tenant "$TENANT" --micros 5000000 --id "demo-payment-$(date +%Y%m)" --note "demo credit"
echo "  -> the same payment reference twice: credited once."

step "The partner earns a 15 % markup on marketing (provider cost -> the business's price)"
bill markup set --partner demo-bsp --category MARKETING --bp 1500

step "What would each message cost, and why? (the business asks with its read-only key)"
quote() { $fin billing quote --tenant "$TENANT" --phone-number-id "$NUMBER" "$@"; }
echo "A free-form reply to Giulia (window open):"
quote --user 393471234567 --free-form
echo "The utility template order_ready to Giulia (window open):"
quote --user 393471234567 --template order_ready --language it
echo "The same utility template to Marco (window closed):"
quote --user 393479876543 --template order_ready --language it
echo "The marketing template weekend_offer to Giulia (marketing is always charged):"
quote --user 393471234567 --template weekend_offer --language it
echo "The marketing template to a user in Brazil (+55) and one in India (+91): priced by market"
quote --user 5511988880000 --template weekend_offer --language it
quote --user 919800000001 --template weekend_offer --language it

step "The business sends, with its own send key (dispatch applies the channel's rules in order)"
SEND_KEY=$(FINESTRA_API_KEY=$OPERATOR_KEY $fin --json key create --tenant "$TENANT" --scopes send \
  --label demo-send | secret_of)
send() { $fin send --api-key "$SEND_KEY" "$@"; }
echo "A free-form reply to Giulia, inside her window:"
REPLY=$(send text --tenant "$TENANT" --phone-number-id "$NUMBER" --to 393471234567 \
  --body "Yes, open until 23:00!" | tee /dev/stderr | cut -d' ' -f1)
echo "A document to Giulia (the menu), inside her window:"
send document --tenant "$TENANT" --phone-number-id "$NUMBER" --to 393471234567 \
  --link https://pizzeria.example/menu.pdf --caption "Our menu" --filename menu.pdf
echo "A free-form message to Marco, whose window closed:"
if send text --tenant "$TENANT" --phone-number-id "$NUMBER" --to 393479876543 --body "Still hungry?"; then
  echo "unexpected: the send was accepted" >&2; exit 1
fi
echo "  -> refused before anything is reserved or queued: only a template may reach him now."
echo "The marketing template to Marco instead:"
OFFER=$(send template --tenant "$TENANT" --phone-number-id "$NUMBER" --to 393479876543 \
  --name weekend_offer --language it --param Marco | tee /dev/stderr | cut -d' ' -f1)

step "Code written for the Cloud API sends through the gateway: only its base URL and token change"
GATEWAY=http://127.0.0.1:8088/v21.0
cloud() { # <json body>: POST /{number}/messages as a Cloud API client does
  curl -sS -X POST "$GATEWAY/$NUMBER/messages" -H "Authorization: Bearer $SEND_KEY" \
    -H 'Content-Type: application/json' -d "$1"
}
echo "POST $GATEWAY/$NUMBER/messages, a text to Giulia:"
ANSWER=$(cloud '{"messaging_product":"whatsapp","recipient_type":"individual","to":"393471234567","type":"text","text":{"body":"Your table for two is booked."}}')
echo "  $ANSWER"
case "$ANSWER" in *'"messages":[{"id":"m_'*) ;; *) echo "unexpected: the gateway refused it" >&2; exit 1 ;; esac
echo "The same to Marco, whose window closed, answers the Cloud API's own error:"
ANSWER=$(cloud '{"messaging_product":"whatsapp","to":"393479876543","type":"text","text":{"body":"Still hungry?"}}')
echo "  $ANSWER"
case "$ANSWER" in *'"code":131047'*) ;; *) echo "unexpected: not the Cloud API's 131047" >&2; exit 1 ;; esac

msg() { $fin message --api-key "$SEND_KEY" "$@"; }
for id in "$REPLY" "$OFFER"; do
  for _ in $(seq 1 150); do
    msg --json get --tenant "$TENANT" --id "$id" | grep -Eq '"status":"(DELIVERED|READ|FAILED)"' && break
    sleep 0.2
  done
done
echo "The business's messages: sent at the network's pace, then delivered (statuses come back as signed webhooks):"
msg list --tenant "$TENANT" --page-size 5
for _ in $(seq 1 150); do
  $fin --json billing --api-key "$OPERATOR_KEY" wallet --tenant "$TENANT" | grep -q '"reserved_micros":0' && break
  sleep 0.2
done
echo "  -> the reply and the document were free; the offer is charged once, on delivery."
echo "What the business was told, in order (finestra events tail: resumable from any cursor):"
$fin events --api-key "$SEND_KEY" tail --tenant "$TENANT" --limit 14 --idle-secs 2

step "Giulia blocks the business: the user stays in control, nothing more reaches her"
$fin sim block --phone-number-id "$NUMBER" --user 393471234567
for _ in $(seq 1 150); do
  FINESTRA_API_KEY=$TENANT_KEY $fin --json window get --tenant "$TENANT" --phone-number-id "$NUMBER" \
    --user 393471234567 | grep -q '"blocked":true' && break
  sleep 0.2
done
echo "  -> the network reported the block; the window service recorded it (her window is still open)."
echo "A free-form reply to Giulia, even inside her open window:"
if send text --tenant "$TENANT" --phone-number-id "$NUMBER" --to 393471234567 --body "One more thing..."; then
  echo "unexpected: the send to a user who blocked the business was accepted" >&2; exit 1
fi
echo "  -> refused with USER_BLOCKED: nothing reserved, nothing charged, nothing queued."
$fin sim unblock --phone-number-id "$NUMBER" --user 393471234567 >/dev/null
echo "(Giulia unblocks again afterwards, so the demo can be run again.)"

step "The network raises the number's messaging limit: Finestra's tier follows (a signed health webhook)"
$fin sim health --kind number_quality --phone-number-id "$NUMBER" --event UPGRADE \
  --current-limit TIER_2K --old-limit TIER_250
for _ in $(seq 1 150); do
  FINESTRA_API_KEY=$OPERATOR_KEY $fin --json number health --tenant "$TENANT" --phone-number-id "$NUMBER" \
    | grep -q '"messaging_limit":"TIER_2K"' && break
  sleep 0.2
done
FINESTRA_API_KEY=$OPERATOR_KEY $fin number health --tenant "$TENANT" --phone-number-id "$NUMBER"

step "The business's wallet and this month's invoice"
$fin billing wallet --tenant "$TENANT"
$fin billing invoice --tenant "$TENANT" --month "$(date -u +%Y-%m)"

step "The operator reconciles the books: balance = top-ups - charges, reserved = open reservations"
bill reconcile --tenant "$TENANT"
