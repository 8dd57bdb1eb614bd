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
step() { STEP=$1; log "step: $1"; }
finish() {
  local rc=$?
  if [[ -n $STAGE ]]; then rm -rf -- "$STAGE"; fi
  if ((rc == 0)); then
    log "SUCCESS: agent $AGENT_ID installed, $UNIT active" | tee /dev/fd/3
  else
    log "FAILURE: step '$STEP' failed (exit $rc)" | tee /dev/fd/3
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
