'use strict';
// Stand-in for the Citrus agent, served by the boot harness's Git server (tests/boot). Like the
// real agent it reads `.env` from its own directory, connects to the Engine Hub and authenticates
// with its id and key; it never logs the key.

const fs = require('fs');
const path = require('path');
const { connect } = require('citrus-ws');

const ENV_FILE = path.join(__dirname, '.env');
const REQUIRED = ['AGENT_ID', 'AGENT_KEY', 'ENGINE_WS_URL'];

// KEY=VALUE per line; the value is everything after the first `=`, taken literally (no quotes).
function readEnv(file) {
  const env = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0 && !line.startsWith('#')) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

let env;
try {
  env = readEnv(ENV_FILE);
} catch (err) {
  console.error(`citrus-agent: cannot read ${ENV_FILE}: ${err.code || err.message}`);
  process.exit(1);
}
const missing = REQUIRED.filter((name) => !env[name]);
if (missing.length) {
  console.error(`citrus-agent: ${ENV_FILE} lacks ${missing.join(', ')}`);
  process.exit(1);
}

let failures = 0;

function start() {
  const ws = connect(env.ENGINE_WS_URL);
  ws.on('open', () => {
    console.log(`citrus-agent: connected to ${env.ENGINE_WS_URL}`);
    ws.send(JSON.stringify({ type: 'auth', agentId: env.AGENT_ID, agentKey: env.AGENT_KEY }));
  });
  ws.on('message', (text) => {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.type === 'auth_ok') {
      failures = 0;
      console.log(`citrus-agent: authenticated as ${env.AGENT_ID}`);
    } else if (msg.type === 'auth_failed') {
      console.error(`citrus-agent: the hub refused agent ${env.AGENT_ID}`);
    }
  });
  ws.on('error', (err) => console.error(`citrus-agent: ${err.message}`));
  ws.on('close', (code) => {
    const delay = Math.min(30000, 1000 * 2 ** failures++);
    console.log(`citrus-agent: disconnected (${code}); reconnecting in ${delay} ms`);
    setTimeout(start, delay);
  });
}

start();
