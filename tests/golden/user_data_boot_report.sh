#!/bin/bash
# shellcheck disable=SC2016  # values are single-quoted on purpose: nothing in them may expand
# citrus-init: installs the Citrus agent and starts it as a systemd service.
# Rendered by citrus-deploy from cloud_init/templates/user_data.sh.j2; every value below was
# validated and shell-quoted at render time. Secrets are never echoed: no `set -x` here.
set -euo pipefail

readonly LOG=/var/log/citrus-init.log
readonly AGENT_DIR=/opt/citrus-agent
readonly AGENT_USER=citrus-agent
readonly UNIT=citrus-agent.service
readonly REPO_URL=https://github.com/limedrop-byte/citrus-agent.git
readonly REPO_REF=main
readonly NPM_URL=https://registry.npmjs.org/npm/-/npm-10.9.9.tgz
readonly NPM_SHA512=d60fba8cb42f688b81e33c2f1cbef2ad7b977166700ec0ad057f1b6d60ea6ef2524abf673e20c35931cd8305d1dbb8887134d6eefdc0e7b8435bd458bf65b862
readonly NPM_HOME=/usr/local/lib/citrus-npm/10.9.9

# >>> env: the agent's .env, byte for byte; tests run this block alone.
readonly AGENT_ID=0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b
readonly AGENT_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
readonly ENGINE_WS_URL=wss://engine.citrushost.io
write_env() {
  (umask 077 && printf 'AGENT_ID=%s\nAGENT_KEY=%s\nENGINE_WS_URL=%s\n' \
    "$AGENT_ID" "$AGENT_KEY" "$ENGINE_WS_URL" >"$1")
}
# <<< env

GITHUB_TOKEN=ghp_GoldenFileToken

# Everything after this point goes to the log only; the console gets the final line.
touch "$LOG" && chmod 0640 "$LOG"
exec 3>&1 >>"$LOG" 2>&1

STEP=start
STAGE=
log() { printf '%s citrus-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
step() { STEP=$1; log "step: $1"; report step || true; }
finish() {
  local rc=$?
  if [[ -n $STAGE ]]; then rm -rf -- "$STAGE"; fi
  if ((rc == 0)); then
    log "SUCCESS: agent $AGENT_ID installed, $UNIT active" | tee /dev/fd/3
    report success 0 || true
  else
    log "FAILURE: step '$STEP' failed (exit $rc)" | tee /dev/fd/3
    report failure "$rc" || true
  fi
}
trap finish EXIT
retry() {  # three attempts, 3 s then 6 s apart: rides out a mirror or network hiccup
  local n
  for n in 1 2; do
    "$@" && return 0
    log "attempt $n of '$1' failed; retrying in $((n * 3))s"
    sleep $((n * 3))
  done
  "$@"
}

# >>> report: each step and the outcome go to the service (bootReportUrl), signed with an
# HMAC-SHA256 keyed by the agent key. Best effort: curl is bounded (2 s to connect, 4 s in all),
# after two undelivered reports only the outcome is still tried, and no failure here fails the
# boot (every call is `|| true`). The key stays in this shell: the HMAC is computed with bash
# builtins and sha256sum reading stdin, so the key is in no process's argv or environment
# (openssl would take it on its command line, readable by anyone in /proc/<pid>/cmdline).
readonly REPORT_URL=https://citrus-deploy.example.com/boot-reports/0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b
REPORT_BOOT=$(cat /proc/sys/kernel/random/uuid) || true
REPORT_SEQ=0
REPORT_MISSES=0
REPORT_QUEUE=()
REPORT_IPAD=
REPORT_OPAD=
# The key's 32 bytes, zero-padded to SHA-256's 64-byte block, XOR ipad and opad (RFC 2104),
# as printf escapes.
for ((i = 0; i < 64; i++)); do
  b=0
  if ((i < 32)); then b=$((16#${AGENT_KEY:i*2:2})); fi
  printf -v REPORT_IPAD '%s\\x%02x' "$REPORT_IPAD" $((b ^ 0x36))
  printf -v REPORT_OPAD '%s\\x%02x' "$REPORT_OPAD" $((b ^ 0x5c))
done
unset i b
hmac_sha256() {  # the hex HMAC-SHA256 of $1 under the agent key
  local inner escaped='' i
  inner=$({ printf '%b' "$REPORT_IPAD" && printf '%s' "$1"; } | sha256sum)
  for ((i = 0; i < 64; i += 2)); do escaped+="\\x${inner:i:2}"; done
  inner=$({ printf '%b' "$REPORT_OPAD" && printf '%b' "$escaped"; } | sha256sum)
  printf '%s' "${inner:0:64}"
}
json_string() {  # $1 as a JSON string; bytes other than printable ASCII, tab and newline: '?'
  local s
  s=$(printf '%s' "$1" | LC_ALL=C tr -c '\11\12\40-\176' '?'; printf x)
  s=${s%x}
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}
step_id() {  # the step's stable name, as the service knows it
  case $1 in
    start) echo start ;;
    "install packages") echo packages ;;
    "create user "*) echo user ;;
    "fetch agent "*) echo fetch ;;
    "write .env") echo env ;;
    "install agent dependencies") echo dependencies ;;
    "install $UNIT") echo unit ;;
    "verify $UNIT") echo verify ;;
    *) echo other ;;
  esac
}
report() {  # report step|success|failure [EXIT]: queues the report, then sends what it can
  local event=$1 code=${2:-null} tail_text='' at step label body
  REPORT_SEQ=$((REPORT_SEQ + 1))
  if [[ $event == failure ]]; then
    # The log holds neither the key nor the token; they are taken out again all the same. With
    # the label cut to 200 characters, a report stays under 4 KiB however much is escaped.
    tail_text=$(tail -n 20 "$LOG" | tail -c 1500)
    tail_text=${tail_text//"$AGENT_KEY"/[redacted]}
    if [[ -n ${GITHUB_TOKEN:-} ]]; then tail_text=${tail_text//"$GITHUB_TOKEN"/[redacted]}; fi
  fi
  printf -v at '%(%s)T' -1
  step=$(json_string "$(step_id "$STEP")")
  label=$(json_string "${STEP:0:200}")
  tail_text=$(json_string "$tail_text")
  printf -v body '{"boot":"%s","seq":%d,"at":%d,"step":%s,"label":%s,"event":"%s","exit":%s,"tail":%s}' \
    "$REPORT_BOOT" "$REPORT_SEQ" "$at" "$step" "$label" "$event" "$code" "$tail_text"
  REPORT_QUEUE+=("$body")
  send_reports "$event"
}
send_reports() {  # sends the queued reports once curl is there (the bare image installs it)
  local body ts sig
  command -v curl >/dev/null || return 0
  while ((${#REPORT_QUEUE[@]})); do
    body=${REPORT_QUEUE[0]}
    REPORT_QUEUE=("${REPORT_QUEUE[@]:1}")
    if ((REPORT_MISSES >= 2)) && [[ $1 == step ]]; then continue; fi
    printf -v ts '%(%s)T' -1
    sig=$(hmac_sha256 "$ts.$body")
    if ! printf '%s' "$body" | curl -fsS -o /dev/null --proto '=http,https' --connect-timeout 2 \
      --max-time 4 -H 'Content-Type: application/json' -H "X-Citrus-Timestamp: $ts" \
      -H "X-Citrus-Signature: sha256=$sig" --data-binary @- "$REPORT_URL"; then
      REPORT_MISSES=$((REPORT_MISSES + 1))
      log "boot report not delivered ($REPORT_MISSES so far); the boot goes on"
    fi
  done
}
report step || true
# <<< report

step "install packages"
export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in ca-certificates curl git nodejs; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  retry apt-get -q -o DPkg::Lock::Timeout=300 update
  retry apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}"
fi

step "create user $AGENT_USER"
if ! id -u "$AGENT_USER" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$AGENT_DIR" --no-create-home \
    --shell /usr/sbin/nologin "$AGENT_USER"
fi

step "fetch agent $REPO_URL at $REPO_REF"
STAGE=$(mktemp -d /opt/.citrus-agent.XXXXXX)
git init -q "$STAGE"
git -C "$STAGE" remote add origin "$REPO_URL"
# The token travels in an environment-only config entry: never in argv, the URL or .git/config.
basic=$(printf 'x-access-token:%s' "$GITHUB_TOKEN" | base64 -w0)
git_with_token() {
  GIT_TERMINAL_PROMPT=0 GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=http.extraHeader \
    GIT_CONFIG_VALUE_0="Authorization: Basic $basic" git "$@"
}
retry git_with_token -C "$STAGE" fetch -q --depth 1 origin "$REPO_REF"
unset basic GITHUB_TOKEN
git -C "$STAGE" -c advice.detachedHead=false checkout -q FETCH_HEAD
log "fetched commit $(git -C "$STAGE" rev-parse HEAD)"

step "write .env"
write_env "$STAGE/.env"

step "install agent dependencies"
chown -R "$AGENT_USER:$AGENT_USER" "$STAGE"
if [[ -f $STAGE/package.json ]] && node -e \
  'process.exit(Object.keys(require(process.argv[1]).dependencies || {}).length ? 0 : 1)' \
  "$STAGE/package.json"; then
  if [[ ! -f $NPM_HOME/bin/npm-cli.js ]]; then
    tarball=$(mktemp)
    retry curl -fsSL -o "$tarball" "$NPM_URL"
    printf '%s  %s\n' "$NPM_SHA512" "$tarball" | sha512sum -c --quiet -
    mkdir -p "$NPM_HOME"
    tar -xzf "$tarball" -C "$NPM_HOME" --strip-components=1 --no-same-owner
    rm -f "$tarball"
  fi
  npm_cmd=install
  if [[ -f $STAGE/package-lock.json ]]; then npm_cmd=ci; fi
  install -d -o "$AGENT_USER" -g "$AGENT_USER" -m 0700 /var/cache/citrus-agent
  (cd "$STAGE" && retry runuser -u "$AGENT_USER" -- env HOME=/var/cache/citrus-agent \
    node "$NPM_HOME/bin/npm-cli.js" "$npm_cmd" --omit=dev --no-audit --no-fund \
    --cache /var/cache/citrus-agent/npm)
fi

step "install $UNIT"
chmod 0750 "$STAGE"
cat >"/etc/systemd/system/$UNIT.new" <<UNIT
[Unit]
Description=Citrus agent (connects this server to the Citrus Engine Hub)
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User=$AGENT_USER
Group=$AGENT_USER
WorkingDirectory=$AGENT_DIR
ExecStart=/usr/bin/node $AGENT_DIR
Restart=always
RestartSec=5
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
UNIT
systemctl stop "$UNIT" 2>/dev/null || true
rm -rf -- "$AGENT_DIR.previous"
if [[ -e $AGENT_DIR ]]; then mv -- "$AGENT_DIR" "$AGENT_DIR.previous"; fi
mv -- "$STAGE" "$AGENT_DIR"
STAGE=
rm -rf -- "$AGENT_DIR.previous"
mv -- "/etc/systemd/system/$UNIT.new" "/etc/systemd/system/$UNIT"
systemctl daemon-reload
systemctl enable -q "$UNIT"
systemctl restart "$UNIT"

step "verify $UNIT"
sleep 2
systemctl is-active -q "$UNIT"
