// The wire protocol (docs/protocol.md §3–§7): 12-byte frame headers and the bodies the web client
// sends and reads. Ids and sync keys are 64-bit: they are kept as BigInt.

export const CMD = Object.freeze({
  AUTH_STATUS: 3, IM: 4, ACK: 5, GROUP_NOTIFICATION: 7, GROUP_IM: 8, PING: 13, PONG: 14,
  AUTH_TOKEN: 15, RT: 17, ENTER_ROOM: 18, LEAVE_ROOM: 19, ROOM_IM: 20, SYSTEM: 21,
  SYNC: 26, SYNC_BEGIN: 27, SYNC_END: 28, SYNC_NOTIFY: 29, SYNC_GROUP: 30,
  SYNC_GROUP_BEGIN: 31, SYNC_GROUP_END: 32, SYNC_GROUP_NOTIFY: 33, SYNC_KEY: 34,
  GROUP_SYNC_KEY: 35, NOTIFICATION: 36, METADATA: 37, CUSTOMER_V2: 64,
});

export const FLAG = Object.freeze({
  TEXT: 0x01, UNPERSISTENT: 0x02, SELF: 0x08, PUSH: 0x10, SUPER_GROUP: 0x20,
});

// The session version: 2 lays IM out with a timestamp and gives ACKs a status byte (§4).
export const VERSION = 2;
export const PLATFORM_WEB = 3;
const HEADER = 12;
const enc = new TextEncoder();
const dec = new TextDecoder();

export function frame(cmd, seq, body, flag = 0) {
  const out = new Uint8Array(HEADER + body.length);
  const v = new DataView(out.buffer);
  v.setInt32(0, body.length);
  v.setInt32(4, seq);
  out[8] = cmd;
  out[9] = VERSION;
  out[10] = flag;
  out.set(body, HEADER);
  return out;
}

/** Splits one WebSocket message into {cmd, seq, version, flag, body}; null if it is malformed. */
export function parse(buf) {
  const bytes = new Uint8Array(buf);
  if (bytes.length < HEADER) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const len = v.getInt32(0);
  if (len < 0 || HEADER + len > bytes.length) return null;
  return { seq: v.getInt32(4), cmd: bytes[8], version: bytes[9], flag: bytes[10],
    body: bytes.subarray(HEADER, HEADER + len) };
}

function i64s(...vals) {
  const out = new Uint8Array(8 * vals.length);
  const v = new DataView(out.buffer);
  vals.forEach((x, i) => v.setBigInt64(8 * i, BigInt(x)));
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

export function authToken(token, deviceId) {
  const t = enc.encode(token), d = enc.encode(deviceId);
  if (t.length > 255 || d.length > 255) throw new Error('token or device id longer than 255 bytes');
  return concat(Uint8Array.of(PLATFORM_WEB, t.length), t, Uint8Array.of(d.length), d);
}

/** IM / GROUP_IM body in the version-1+ layout (the server replaces the timestamp). */
export function im(sender, receiver, msgid, content) {
  const fixed = new Uint8Array(24);
  const v = new DataView(fixed.buffer);
  v.setBigInt64(0, BigInt(sender));
  v.setBigInt64(8, BigInt(receiver));
  v.setInt32(16, Math.floor(Date.now() / 1000));
  v.setInt32(20, msgid);
  return concat(fixed, enc.encode(content));
}

export function rt(sender, receiver, content) {
  return concat(i64s(sender, receiver), enc.encode(content));
}

export function customer(senderApp, sender, receiverApp, receiver, content) {
  const fixed = new Uint8Array(36);
  const v = new DataView(fixed.buffer);
  [senderApp, sender, receiverApp, receiver].forEach((x, i) => v.setBigInt64(8 * i, BigInt(x)));
  v.setInt32(32, Math.floor(Date.now() / 1000));
  return concat(fixed, enc.encode(content));
}

export const key = (k) => i64s(k);
export const groupKey = (gid, k) => i64s(gid, k);

function view(body) { return new DataView(body.buffer, body.byteOffset, body.length); }
const text = (b) => dec.decode(b);

/** Decodes a server frame's body into a plain object (unknown commands: {}). */
export function decode(f) {
  const b = f.body, v = view(b);
  const need = (n) => { if (b.length < n) throw new Error(`command ${f.cmd}: body of ${b.length} bytes`); };
  switch (f.cmd) {
    case CMD.AUTH_STATUS: need(4); return { status: v.getInt32(0) };
    case CMD.ACK: need(4); return { seq: v.getInt32(0), status: b.length >= 5 ? v.getInt8(4) : 0 };
    case CMD.IM: case CMD.GROUP_IM: {
      if (f.version === 0) {
        need(20);
        return { sender: v.getBigInt64(0), receiver: v.getBigInt64(8), timestamp: 0,
          msgid: v.getInt32(16), content: text(b.subarray(20)) };
      }
      need(24);
      return { sender: v.getBigInt64(0), receiver: v.getBigInt64(8), timestamp: v.getInt32(16),
        msgid: v.getInt32(20), content: text(b.subarray(24)) };
    }
    case CMD.RT: case CMD.ROOM_IM: need(16);
      return { sender: v.getBigInt64(0), receiver: v.getBigInt64(8), content: text(b.subarray(16)) };
    case CMD.CUSTOMER_V2: need(36);
      return { senderApp: v.getBigInt64(0), sender: v.getBigInt64(8), receiverApp: v.getBigInt64(16),
        receiver: v.getBigInt64(24), timestamp: v.getInt32(32), msgid: 0, content: text(b.subarray(36)) };
    case CMD.SYNC_BEGIN: case CMD.SYNC_END: case CMD.SYNC_NOTIFY: need(8);
      return { key: v.getBigInt64(0) };
    case CMD.SYNC_GROUP_BEGIN: case CMD.SYNC_GROUP_END: case CMD.SYNC_GROUP_NOTIFY: need(16);
      return { gid: v.getBigInt64(0), key: v.getBigInt64(8) };
    case CMD.METADATA: need(16);
      return { key: v.getBigInt64(0), prev: v.getBigInt64(8) };
    case CMD.GROUP_NOTIFICATION: case CMD.SYSTEM: case CMD.NOTIFICATION:
      return { content: text(b) };
    default: return {};
  }
}
