// One signed-in user's connection: authentication, the sync loop of docs/protocol.md §10.7 with the
// METADATA fast path (§11), sending with per-message delivery state, reconnecting with back-off and
// resyncing, typing indicators over RT and rooms.

import * as P from './proto.js';
import { convKey } from './store.js';

const { CMD, FLAG } = P;
const PING_MS = 45000;      // well inside the server's idle timeout (360 s)
const PONG_WAIT_MS = 15000; // a connection that does not answer a PING is considered dead
const STORED = new Set([CMD.IM, CMD.GROUP_IM, CMD.CUSTOMER_V2, CMD.GROUP_NOTIFICATION, CMD.SYSTEM]);

const ACK_ERRORS = {
  64: 'not a member of this group', 65: 'no such group', 66: 'muted in this group',
  67: 'speak-banned', 68: 'invalid sender', 69: 'rate limited', 70: 'storage failed',
  71: 'not allowed here', 72: 'invalid receiver',
};

// Key 1 asks for a queue from its start: real keys are never below 44 (a 0 would be replaced by the
// stored hint, which can skip history this page has never shown).
const FROM_START = 1n;
const sameKey = (prev, held) => prev === held || (prev === 0n && held === FROM_START);

export class ImClient extends EventTarget {
  constructor({ wsUrl, token, appid, uid, kefuAppid, model, groups }) {
    super();
    Object.assign(this, { wsUrl, token, appid, uid, kefuAppid, model });
    this.state = 'offline';
    this.seq = 0;
    this.attempt = 0;
    this.personal = { key: 0n, syncing: false, notified: 0n };
    this.groups = new Map(); // gid (string) → {key, syncing, notified}
    for (const g of groups || []) this.groupQueue(BigInt(g));
    this.acks = new Map();   // frame seq → message awaiting its ACK
    this.outbox = [];        // messages waiting for a connection or for the resync to finish
    this.meta = null;        // the last METADATA frame: {seq, key, prev}
    this.room = 0;
    this.resyncing = 0;      // syncs of the current connection still to finish before resending
    this.stopped = false;
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  setState(s) { if (this.state !== s) { this.state = s; this.emit('state', s); } }

  groupQueue(gid) {
    const k = String(gid);
    let q = this.groups.get(k);
    if (!q) {
      q = { key: 0n, syncing: false, notified: 0n };
      this.groups.set(k, q);
      this.emit('groups', [...this.groups.keys()]);
    }
    return q;
  }

  start() { this.stopped = false; this.connect(); }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    if (this.ws) this.ws.close();
    this.setState('offline');
  }

  connect() {
    if (this.stopped) return;
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.wsUrl);
    } catch (e) {
      this.emit('error', `cannot open ${this.wsUrl}: ${e.message}`);
      return this.scheduleReconnect();
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      this.seq = 0;
      this.meta = null;
      this.sendFrame(CMD.AUTH_TOKEN, P.authToken(this.token, ''));
    };
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      const f = P.parse(ev.data);
      if (!f) return ws.close();
      try { this.onFrame(f); } catch (e) { console.error('bad frame', f.cmd, e); }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pingTimer);
      this.onDisconnected();
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    if (this.stopped) return;
    this.setState('offline');
    const base = Math.min(15000, 500 * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    const delay = base / 2 + Math.random() * base / 2;
    this.emit('retry', delay);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnects now (the user pressed "retry", or the browser came back online). */
  reconnectNow() {
    if (this.stopped || this.state === 'online' || this.state === 'connecting') return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.connect();
  }

  onDisconnected() {
    // Messages sent but not acknowledged may or may not be stored: they are resent only after the
    // next connection's sync, which shows (by msgid) the ones that were.
    for (const m of this.acks.values()) {
      if (m.kind === 'room') { m.state = 'failed'; m.error = 'connection lost'; this.model.update(m.conv, m); }
      else this.outbox.push(m);
    }
    this.acks.clear();
    this.personal.syncing = false;
    for (const q of this.groups.values()) q.syncing = false;
  }

  sendFrame(cmd, body, flag = 0) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return 0;
    this.seq = (this.seq % 0x7fffffff) + 1;
    this.ws.send(P.frame(cmd, this.seq, body, flag));
    return this.seq;
  }

  onFrame(f) {
    const meta = this.meta;
    this.meta = null;
    const b = P.decode(f);
    switch (f.cmd) {
      case CMD.AUTH_STATUS: return this.onAuth(b.status);
      case CMD.METADATA: this.meta = { seq: f.seq, key: b.key, prev: b.prev }; return;
      case CMD.ACK: return this.onAck(f, b, meta);
      case CMD.PONG: clearTimeout(this.pongTimer); return;
      case CMD.SYNC_BEGIN: return;
      case CMD.SYNC_END: return this.onSyncEnd(this.personal, b.key, null);
      case CMD.SYNC_NOTIFY: return this.onNotify(this.personal, b.key, null);
      case CMD.SYNC_GROUP_BEGIN: return;
      case CMD.SYNC_GROUP_END: return this.onSyncEnd(this.groupQueue(b.gid), b.key, b.gid);
      case CMD.SYNC_GROUP_NOTIFY: return this.onNotify(this.groupQueue(b.gid), b.key, b.gid);
      case CMD.RT: return this.onRt(b);
      case CMD.ROOM_IM:
        return this.ingest(CMD.ROOM_IM, { ...b, timestamp: Math.floor(Date.now() / 1000) }, false);
      case CMD.NOTIFICATION: return this.emit('notification', b.content);
      default:
        if (!STORED.has(f.cmd)) return;
        if (!(f.flag & FLAG.PUSH)) return this.ingest(f.cmd, b, true); // inside a sync response
        return this.onPush(f, b, meta);
    }
  }

  onAuth(status) {
    if (status !== 0) {
      this.stopped = true;
      this.ws.close();
      this.setState('offline');
      this.emit('auth-failed', 'the server refused the token (revoked, expired or unknown)');
      return;
    }
    this.attempt = 0;
    this.setState('online');
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), PING_MS);
    this.resyncing = 1 + this.groups.size;
    this.sync(this.personal, null);
    for (const [gid, q] of this.groups) this.sync(q, BigInt(gid));
    if (this.room) this.sendFrame(CMD.ENTER_ROOM, P.key(this.room));
  }

  ping() {
    this.sendFrame(CMD.PING, new Uint8Array(0));
    clearTimeout(this.pongTimer);
    this.pongTimer = setTimeout(() => { if (this.ws) this.ws.close(); }, PONG_WAIT_MS);
  }

  sync(q, gid) {
    q.syncing = true;
    const from = q.key || FROM_START;
    if (gid === null) this.sendFrame(CMD.SYNC, P.key(from));
    else this.sendFrame(CMD.SYNC_GROUP, P.groupKey(gid, from));
  }

  onSyncEnd(q, k, gid) {
    q.syncing = false;
    q.key = k;
    if (k > FROM_START) {
      if (gid === null) this.sendFrame(CMD.SYNC_KEY, P.key(k));
      else this.sendFrame(CMD.GROUP_SYNC_KEY, P.groupKey(gid, k));
    }
    if (q.notified > q.key) return this.sync(q, gid);
    if (this.resyncing > 0 && --this.resyncing === 0) this.flushOutbox();
    this.emit('synced', gid);
  }

  onNotify(q, k, gid) {
    if (k <= q.key) return;
    if (q.syncing) { if (k > q.notified) q.notified = k; return; }
    this.sync(q, gid);
  }

  /** A pushed stored message: taken directly when nothing is missing before it (§11), else left to
   * the sync that the notification after it starts. */
  onPush(f, b, meta) {
    const superGroup = (f.flag & FLAG.SUPER_GROUP) !== 0;
    const q = superGroup ? this.groupQueue(b.receiver) : this.personal;
    if (!meta || meta.seq + 1 !== f.seq || q.syncing || !sameKey(meta.prev, q.key)) return;
    q.key = meta.key;
    if (superGroup) this.sendFrame(CMD.GROUP_SYNC_KEY, P.groupKey(b.receiver, meta.key));
    else this.sendFrame(CMD.SYNC_KEY, P.key(meta.key));
    this.ingest(f.cmd, b, false);
  }

  onAck(f, b, meta) {
    const m = this.acks.get(b.seq);
    if (!m) return;
    this.acks.delete(b.seq);
    if (b.status !== 0) {
      m.state = 'failed';
      m.error = ACK_ERRORS[b.status] || `refused (status ${b.status})`;
      return this.model.update(m.conv, m);
    }
    if (meta && meta.seq + 1 === f.seq) {
      const q = f.flag & FLAG.SUPER_GROUP ? this.groupQueue(BigInt(m.target)) : this.personal;
      if (!q.syncing && sameKey(meta.prev, q.key)) {
        q.key = meta.key;
        if (q === this.personal) this.sendFrame(CMD.SYNC_KEY, P.key(meta.key));
        else this.sendFrame(CMD.GROUP_SYNC_KEY, P.groupKey(BigInt(m.target), meta.key));
      }
    }
    m.state = 'stored';
    m.error = '';
    this.model.update(m.conv, m);
  }

  /** Adds a stored or room message to its conversation. */
  ingest(cmd, b, historic) {
    const me = BigInt(this.uid);
    let key, mine = b.sender === me, sender = Number(b.sender);
    switch (cmd) {
      case CMD.IM: key = convKey('peer', Number(mine ? b.receiver : b.sender)); break;
      case CMD.GROUP_IM: key = convKey('group', Number(b.receiver)); break;
      case CMD.ROOM_IM: key = convKey('room', Number(b.receiver)); break;
      case CMD.CUSTOMER_V2: {
        mine = b.sender === me && b.senderApp === BigInt(this.appid);
        const [app, uid] = mine ? [b.receiverApp, b.receiver] : [b.senderApp, b.sender];
        key = convKey('cs', Number(uid), Number(app));
        break;
      }
      case CMD.GROUP_NOTIFICATION: {
        const gid = groupOfNotice(b.content);
        key = gid ? convKey('group', gid) : 'system';
        mine = false; sender = 0;
        break;
      }
      default: key = 'system'; mine = false; sender = 0;
    }
    this.model.add(key, { sender, mine, msgid: b.msgid || 0, timestamp: b.timestamp || 0,
      content: b.content, historic });
  }

  onRt(b) {
    let c;
    try { c = JSON.parse(b.content); } catch { return; }
    if (c && c.typing) this.emit('typing', { conv: convKey('peer', Number(b.sender)) });
  }

  /** Sends a message to a conversation; returns the message shown locally with its delivery state. */
  send(conv, content) {
    const c = this.model.conv(conv);
    const msgid = 1 + Math.floor(Math.random() * 0x7ffffffe);
    const m = this.model.add(conv, { sender: this.uid, mine: true, msgid, content,
      timestamp: Math.floor(Date.now() / 1000) });
    Object.assign(m, { state: 'sending', conv, kind: c.kind, target: c.id, app: c.app });
    this.model.update(conv, m);
    if (this.state === 'online' && this.resyncing === 0) this.transmit(m);
    else this.outbox.push(m);
    return m;
  }

  retry(m) {
    m.state = 'sending';
    m.error = '';
    this.model.update(m.conv, m);
    if (this.state === 'online' && this.resyncing === 0) this.transmit(m);
    else this.outbox.push(m);
  }

  flushOutbox() {
    const out = this.outbox;
    this.outbox = [];
    for (const m of out) {
      if (m.state === 'stored') continue; // the resync showed it was stored
      this.transmit(m);
    }
  }

  transmit(m) {
    let seq;
    const text = isText(m.content) ? FLAG.TEXT : 0;
    switch (m.kind) {
      case 'peer': seq = this.sendFrame(CMD.IM, P.im(this.uid, m.target, m.msgid, m.content), text); break;
      case 'group': seq = this.sendFrame(CMD.GROUP_IM, P.im(this.uid, m.target, m.msgid, m.content), text); break;
      case 'room': seq = this.sendFrame(CMD.ROOM_IM, P.rt(this.uid, m.target, m.content)); break;
      case 'cs': seq = this.sendFrame(CMD.CUSTOMER_V2, P.customer(this.appid, this.uid, m.app, m.target, m.content)); break;
      default: m.state = 'failed'; m.error = 'cannot send here'; return this.model.update(m.conv, m);
    }
    if (seq) this.acks.set(seq, m);
    else this.outbox.push(m);
  }

  sendTyping(peer) {
    if (this.state === 'online') this.sendFrame(CMD.RT, P.rt(this.uid, peer, JSON.stringify({ typing: true })));
  }

  enterRoom(room) {
    if (this.room === room) return;
    if (this.room) this.sendFrame(CMD.LEAVE_ROOM, P.key(this.room));
    this.room = room;
    if (room) this.sendFrame(CMD.ENTER_ROOM, P.key(room));
  }

  /** Starts following a (super) group's queue; harmless for a normal group (its sync is empty). */
  watchGroup(gid) {
    const known = this.groups.has(String(gid));
    const q = this.groupQueue(BigInt(gid));
    if (!known && this.state === 'online' && !q.syncing) this.sync(q, BigInt(gid));
  }
}

function isText(content) {
  try { return typeof JSON.parse(content).text === 'string'; } catch { return false; }
}

function groupOfNotice(content) {
  let c;
  try { c = JSON.parse(content); } catch { return 0; }
  if (!c || typeof c !== 'object') return 0;
  for (const v of Object.values(c)) {
    if (v && typeof v === 'object' && Number(v.group_id) > 0) return Number(v.group_id);
  }
  return Number(c.group_id) > 0 ? Number(c.group_id) : 0;
}
