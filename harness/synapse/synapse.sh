#!/usr/bin/env bash
# A test Synapse on loopback, from nothing: `start` installs matrix-synapse from PyPI into a
# virtualenv (once), writes a config for testing, generates the signing key, starts it and
# waits until /_matrix/client/versions answers; `stop` stops it by its own PID.
#
#   harness/synapse/synapse.sh start            # prints the base URL
#   harness/synapse/synapse.sh start-partners   # two more Synapses federating with it
#   harness/synapse/synapse.sh stop             # stops all of them
#
# The first Synapse (server name `localhost`, the one the suites test) serves the client and
# federation APIs over HTTP on SYNAPSE_PORT for the harness, and federation over TLS on
# 127.0.0.1:8448 (the port its name implies) for other homeservers; it trusts the harness's
# authority for identity servers too (the identity peer on 127.0.0.1:18090). `start-partners` starts
# Synapses named `localhost:18449` and `localhost:18450` (client APIs on 18018 and 18028),
# each federating with the first and with each other over TLS; their certificates, like the
# fake servers', chain to the harness's authority, which every one of them trusts. The
# synapse profile names them as partners `second` and `third`.
#
# Environment: SYNAPSE_DIR (default target/synapse under the repo), SYNAPSE_PORT (8448+ free:
# default 18008), SYNAPSE_VERSION (default: the newest on PyPI), PYTHON (default python3).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${SYNAPSE_DIR:-$repo/target/synapse}"
port="${SYNAPSE_PORT:-18008}"
python="${PYTHON:-python3}"
venv="$dir/venv"
data="$dir/data"
pidfile="$data/synapse.pid"
url="http://127.0.0.1:$port"
# The harness's synapse profile holds the same secret.
secret="mxconform-test-shared-secret"

install() {
  # The url-preview extra (beautifulsoup4) lets the suites exercise URL previews.
  if [ ! -x "$venv/bin/synctl" ] || ! "$venv/bin/python" -c "import bs4" 2>/dev/null; then
    echo "installing matrix-synapse into $venv" >&2
    [ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet "matrix-synapse[url-preview]${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}" >&2
  fi
}

write_config() {
  mkdir -p "$data/media"
  cat > "$data/homeserver.yaml" <<YAML
server_name: "localhost"
public_baseurl: "$url/"
serve_client_wellknown: true
serve_server_wellknown: true
pid_file: "$pidfile"
report_stats: false
signing_key_path: "$data/localhost.signing.key"
tls_certificate_path: "$dir/federation-ca/localhost.crt"
tls_private_key_path: "$dir/federation-ca/localhost.key"
media_store_path: "$data/media"
log_config: "$data/log.config"
database:
  name: sqlite3
  args:
    database: "$data/homeserver.db"
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, federation, media]
        compress: false
  # Federation over TLS on the port the name localhost implies, for the partner Synapses.
  - port: 8448
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: true
    resources:
      - names: [federation]
        compress: false
login_via_existing_session:
  enabled: true
  require_ui_auth: true
  token_timeout: "5m"
refreshable_access_token_lifetime: 1h
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "$secret"
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
# Federation with the harness's fake homeservers on loopback: their certificates chain to the
# harness's authority, and 127.0.0.1 is allowed (the default blocklist covers it).
federation_custom_ca_list: ["$dir/federation-ca/ca.pem"]
ip_range_whitelist: ["127.0.0.1"]
federation_ip_range_blacklist: []
# The spec gives GET /publicRooms no auth requirement, and a room created with
# visibility: public must be listed.
allow_public_rooms_without_auth: true
allow_public_rooms_over_federation: true
room_list_publication_rules: [{action: allow}]
alias_creation_rules: [{action: allow}]
# The deprecated unauthenticated media endpoints (/_matrix/media/v3/download, thumbnail) are
# frozen for new uploads by default; serving them lets the suites exercise those operations.
enable_authenticated_media: false
# A made-up TURN server (nothing listens there) so that getTurnServer hands out credentials.
turn_uris: ["turn:127.0.0.1:3478?transport=udp"]
turn_username: "mxconform"
turn_password: "mxconform-test-turn"
enable_search: true
# The harness's mail sink (harness/src/peers.rs) takes the validation mail.
email:
  smtp_host: "127.0.0.1"
  smtp_port: 18025
  force_tls: false
  require_transport_security: false
  enable_tls: false
  notif_from: "mxconform test <noreply@localhost>"
  app_name: "mxconform"
  enable_notifs: false
# Single sign-on through the CAS server the harness's web peer plays.
cas_config:
  enabled: true
  server_url: "http://127.0.0.1:18080/cas"
# The suites' made-up client: redirect to it straight away (no confirmation page), as the
# spec's SSO flow describes.
sso:
  client_whitelist: ["http://client.mxconform.test/"]
# Phone-number validation goes through the SMS gateway the harness's web peer plays.
account_threepid_delegates:
  msisdn: "http://127.0.0.1:18080"
# The harness plays this application service (a bridge) on loopback.
app_service_config_files: ["$repo/harness/peers/appservice.yaml"]
user_directory:
  enabled: true
  search_all_users: true
# Previews of the pages the harness's web peer serves on loopback: everything else private
# stays blocked.
url_preview_enabled: true
url_preview_ip_range_blacklist: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8", "::1/128", "fe80::/10", "fc00::/7"]
url_preview_ip_range_whitelist: ["127.0.0.1"]
presence:
  enabled: true
# Test-server rate limits: high enough that suites never meet them.
rc_message: {per_second: 10000, burst_count: 100000}
rc_registration: {per_second: 10000, burst_count: 100000}
rc_registration_token_validity: {per_second: 10000, burst_count: 100000}
rc_login:
  address: {per_second: 10000, burst_count: 100000}
  account: {per_second: 10000, burst_count: 100000}
  failed_attempts: {per_second: 10000, burst_count: 100000}
rc_admin_redaction: {per_second: 10000, burst_count: 100000}
rc_joins:
  local: {per_second: 10000, burst_count: 100000}
  remote: {per_second: 10000, burst_count: 100000}
rc_joins_per_room: {per_second: 10000, burst_count: 100000}
rc_3pid_validation: {per_second: 10000, burst_count: 100000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 100000}
  per_user: {per_second: 10000, burst_count: 100000}
  per_issuer: {per_second: 10000, burst_count: 100000}
rc_third_party_invite: {per_second: 10000, burst_count: 100000}
rc_media_create: {per_second: 10000, burst_count: 100000}
rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 100000, concurrent: 1000}
# Fake servers come and go on ephemeral ports, and a new one may get the port of one that has
# stopped: a short, flat back-off keeps Synapse from refusing to send to it for ten minutes.
federation:
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 1
  destination_max_retry_interval: 2s
rc_presence:
  per_user: {per_second: 10000, burst_count: 100000}
rc_delayed_event_mgmt: {per_second: 10000, burst_count: 100000}
rc_reports: {per_second: 10000, burst_count: 100000}
rc_room_creation: {per_second: 10000, burst_count: 100000}
rc_user_directory: {per_second: 10000, burst_count: 100000}
rc_send_to_device: {per_second: 10000, burst_count: 100000}
rc_key_requests: {per_second: 10000, burst_count: 100000}
YAML
  cat > "$data/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $data/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
YAML
}

# The harness's identity server (harness/src/peers/identity.rs) serves HTTPS with a certificate
# from that authority. Synapse calls identity servers through its plain HTTP client, which
# verifies certificates against OpenSSL's default trust (twisted's platformTrust): SSL_CERT_FILE,
# set for this Synapse only, replaces that with the system's authorities and the harness's.
identity_trust() {
  local system
  system="$("$venv/bin/python" -c 'import ssl; print(ssl.get_default_verify_paths().openssl_cafile or "")')"
  {
    if [ -n "$system" ] && [ -f "$system" ]; then cat "$system"; fi
    cat "$dir/federation-ca/ca.pem"
  } > "$dir/trust.pem"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# The authority the fake homeservers' and the Synapses' certificates chain to (kept across
# runs), with a leaf certificate for `localhost`.
authority() {
  if [ ! -f "$dir/federation-ca/ca.pem" ] || [ ! -f "$dir/federation-ca/localhost.crt" ]; then
    (cd "$repo" && cargo run -q -p mxconform -- federation-ca --out "$dir/federation-ca" --leaf localhost >/dev/null)
  fi
}

# A partner Synapse: `localhost:<fed port>`, federation over TLS there, the client API on
# <client port>; open registration with the same shared secret; federating with anything on
# 127.0.0.1 whose certificate chains to the harness's authority.
write_partner_config() {
  local pdata="$1" fedport="$2" cport="$3"
  mkdir -p "$pdata/media"
  cat > "$pdata/homeserver.yaml" <<YAML
server_name: "localhost:$fedport"
public_baseurl: "http://127.0.0.1:$cport/"
pid_file: "$pdata/synapse.pid"
report_stats: false
signing_key_path: "$pdata/partner.signing.key"
tls_certificate_path: "$dir/federation-ca/localhost.crt"
tls_private_key_path: "$dir/federation-ca/localhost.key"
media_store_path: "$pdata/media"
log_config: "$pdata/log.config"
database:
  name: sqlite3
  args:
    database: "$pdata/homeserver.db"
listeners:
  - port: $fedport
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: true
    resources:
      - names: [federation]
        compress: false
  - port: $cport
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    resources:
      - names: [client, media]
        compress: false
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "$secret"
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
federation_custom_ca_list: ["$dir/federation-ca/ca.pem"]
ip_range_whitelist: ["127.0.0.1"]
federation_ip_range_blacklist: []
allow_public_rooms_without_auth: true
allow_public_rooms_over_federation: true
room_list_publication_rules: [{action: allow}]
alias_creation_rules: [{action: allow}]
presence:
  enabled: true
rc_message: {per_second: 10000, burst_count: 100000}
rc_registration: {per_second: 10000, burst_count: 100000}
rc_login:
  address: {per_second: 10000, burst_count: 100000}
  account: {per_second: 10000, burst_count: 100000}
  failed_attempts: {per_second: 10000, burst_count: 100000}
rc_joins:
  local: {per_second: 10000, burst_count: 100000}
  remote: {per_second: 10000, burst_count: 100000}
rc_joins_per_room: {per_second: 10000, burst_count: 100000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 100000}
  per_user: {per_second: 10000, burst_count: 100000}
  per_issuer: {per_second: 10000, burst_count: 100000}
rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 100000, concurrent: 1000}
# Fake servers come and go on ephemeral ports, and a new one may get the port of one that has
# stopped: a short, flat back-off keeps Synapse from refusing to send to it for ten minutes.
federation:
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 1
  destination_max_retry_interval: 2s
rc_presence:
  per_user: {per_second: 10000, burst_count: 100000}
rc_room_creation: {per_second: 10000, burst_count: 100000}
rc_send_to_device: {per_second: 10000, burst_count: 100000}
rc_key_requests: {per_second: 10000, burst_count: 100000}
rc_media_create: {per_second: 10000, burst_count: 100000}
YAML
  cat > "$pdata/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $pdata/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
YAML
}

# Starts the Synapse whose config is in $1 and waits until $2/_matrix/client/versions answers.
launch() {
  local cdata="$1" curl_url="$2"
  "$venv/bin/python" -m synapse.app.homeserver --config-path "$cdata/homeserver.yaml" --generate-keys >/dev/null 2>&1
  "$venv/bin/python" -m synapse.app.homeserver --config-path "$cdata/homeserver.yaml" --daemonize >/dev/null 2>"$cdata/start.err" || {
    echo "synapse ($cdata) failed to start:" >&2
    cat "$cdata/start.err" >&2
    tail -n 30 "$cdata/homeserver.log" >&2 2>/dev/null || true
    return 1
  }
  for _ in $(seq 1 120); do
    if curl -fsS "$curl_url/_matrix/client/versions" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  echo "synapse ($cdata) did not answer /_matrix/client/versions within 30 s" >&2
  tail -n 30 "$cdata/homeserver.log" >&2 2>/dev/null || true
  return 1
}

partner_ports=("18449:18018" "18450:18028")

start_partners() {
  install
  authority
  for pair in "${partner_ports[@]}"; do
    local fedport="${pair%%:*}" cport="${pair##*:}"
    local pdata="$dir/partner-$fedport"
    if [ -f "$pdata/synapse.pid" ] && kill -0 "$(cat "$pdata/synapse.pid")" 2>/dev/null; then
      echo "http://127.0.0.1:$cport"
      continue
    fi
    rm -rf "$pdata"
    write_partner_config "$pdata" "$fedport" "$cport"
    launch "$pdata" "http://127.0.0.1:$cport" || { stop; exit 1; }
    echo "http://127.0.0.1:$cport"
  done
}

start() {
  install
  if running; then
    echo "$url"
    return 0
  fi
  if curl -fsS "$url/_matrix/client/versions" >/dev/null 2>&1; then
    echo "something not started by this script already answers on $url; stop it or set SYNAPSE_PORT" >&2
    exit 1
  fi
  rm -rf "$data"
  authority
  identity_trust
  write_config
  SSL_CERT_FILE="$dir/trust.pem" launch "$data" "$url" || { stop; exit 1; }
  echo "$url"
}

stop_pid() {
  local pf="$1"
  if [ -f "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null; then
    local pid
    pid="$(cat "$pf")"
    kill "$pid"
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
}

stop() {
  stop_pid "$pidfile"
  for pair in "${partner_ports[@]}"; do
    stop_pid "$dir/partner-${pair%%:*}/synapse.pid"
  done
}

version() {
  "$venv/bin/python" -c 'import synapse; print(synapse.__version__)'
}

case "${1:-}" in
  start) start ;;
  start-partners) start_partners ;;
  stop) stop ;;
  version) version ;;
  *) echo "usage: $0 start|start-partners|stop|version" >&2; exit 2 ;;
esac
