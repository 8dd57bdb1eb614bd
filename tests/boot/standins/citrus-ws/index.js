'use strict';
// Stand-in for the Citrus agent's WebSocket dependency, used only by the boot harness
// (tests/boot). A minimal RFC 6455 client: the opening handshake over Node's http/https
// `upgrade`, masked text frames out, text/close/ping frames in. No dependencies, because
// Debian 12's Node.js 18.19 has no global WebSocket and the agent must have something to install.

const crypto = require('crypto');
const http = require('http');
const https = require('https');
const { EventEmitter } = require('events');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const OP = { CONT: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa };

class WebSocket extends EventEmitter {
  // Events: 'open', 'message' (string), 'close' (code, reason) exactly once, 'error' (Error).
  constructor(url) {
    super();
    const target = new URL(url);
    const secure = target.protocol === 'wss:';
    if (!secure && target.protocol !== 'ws:') throw new Error(`not a ws:// or wss:// URL: ${url}`);
    this._key = crypto.randomBytes(16).toString('base64');
    this._buffer = Buffer.alloc(0);
    this._fragments = [];
    this._closed = false;
    const req = (secure ? https : http).request({
      host: target.hostname,
      port: target.port || (secure ? 443 : 80),
      path: target.pathname + target.search,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': this._key,
      },
    });
    req.on('upgrade', (res, socket, head) => this._onUpgrade(res, socket, head));
    req.on('response', (res) => {
      res.resume();
      this._fail(new Error(`handshake refused: HTTP ${res.statusCode}`));
    });
    req.on('error', (err) => this._fail(err));
    req.end();
  }

  _onUpgrade(res, socket, head) {
    const expected = crypto.createHash('sha1').update(this._key + GUID).digest('base64');
    this._socket = socket;
    if (res.headers['sec-websocket-accept'] !== expected) {
      this._fail(new Error('handshake refused: bad Sec-WebSocket-Accept'));
      return;
    }
    socket.setNoDelay(true);
    socket.on('data', (data) => this._onData(data));
    socket.on('error', (err) => this._fail(err));
    socket.on('close', () => this._finish(1006, 'connection lost'));
    this.emit('open');
    if (head && head.length) this._onData(head);
  }

  send(text) {
    this._write(OP.TEXT, Buffer.from(String(text), 'utf8'));
  }

  close(code = 1000, reason = '') {
    const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
    payload.writeUInt16BE(code, 0);
    payload.write(reason, 2);
    this._write(OP.CLOSE, payload);
    if (this._socket) this._socket.end();
  }

  // Client frames are always masked (RFC 6455 section 5.3).
  _write(opcode, payload) {
    if (!this._socket || this._socket.destroyed) throw new Error('not connected');
    const mask = crypto.randomBytes(4);
    let header;
    if (payload.length < 126) {
      header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
    } else if (payload.length < 65536) {
      header = Buffer.alloc(4);
      header.writeUInt16BE(payload.length, 2);
      header[1] = 0x80 | 126;
    } else {
      header = Buffer.alloc(10);
      header.writeBigUInt64BE(BigInt(payload.length), 2);
      header[1] = 0x80 | 127;
    }
    header[0] = 0x80 | opcode;
    const masked = Buffer.alloc(payload.length);
    for (let i = 0; i < payload.length; i++) masked[i] = payload[i] ^ mask[i % 4];
    this._socket.write(Buffer.concat([header, mask, masked]));
  }

  _onData(data) {
    this._buffer = Buffer.concat([this._buffer, data]);
    for (;;) {
      const frame = parseFrame(this._buffer);
      if (!frame) return;
      this._buffer = this._buffer.subarray(frame.size);
      this._onFrame(frame);
    }
  }

  _onFrame({ fin, opcode, payload }) {
    if (opcode === OP.PING) return this._write(OP.PONG, payload);
    if (opcode === OP.PONG) return undefined;
    if (opcode === OP.CLOSE) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      const reason = payload.subarray(2).toString('utf8');
      if (!this._closed) this.close(code === 1005 ? 1000 : code);
      return this._finish(code, reason);
    }
    this._fragments.push(payload);
    if (opcode !== OP.CONT) this._opcode = opcode;
    if (!fin) return undefined;
    const message = Buffer.concat(this._fragments);
    this._fragments = [];
    if (this._opcode === OP.TEXT) this.emit('message', message.toString('utf8'));
    return undefined;
  }

  _fail(err) {
    if (this._closed) return;
    this.emit('error', err);
    if (this._socket) this._socket.destroy();
    this._finish(1006, err.message);
  }

  _finish(code, reason) {
    if (this._closed) return;
    this._closed = true;
    this.emit('close', code, reason);
  }
}

// One complete frame at the start of `buf`, or null when more bytes are needed.
function parseFrame(buf) {
  if (buf.length < 2) return null;
  let length = buf[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buf.length < 4) return null;
    length = buf.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buf.length < 10) return null;
    length = Number(buf.readBigUInt64BE(2));
    offset = 10;
  }
  const masked = (buf[1] & 0x80) !== 0;
  const mask = masked ? buf.subarray(offset, offset + 4) : null;
  if (masked) offset += 4;
  if (buf.length < offset + length) return null;
  let payload = buf.subarray(offset, offset + length);
  if (mask) payload = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return { fin: (buf[0] & 0x80) !== 0, opcode: buf[0] & 0x0f, payload, size: offset + length };
}

function connect(url) {
  return new WebSocket(url);
}

module.exports = { connect, WebSocket };
