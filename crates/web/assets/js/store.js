// The client's model: conversations and their messages, kept in memory (the server's queues are the
// durable copy; every page load syncs them again). Own messages are matched by their msgid, so a
// message that comes back through sync after an unacknowledged send is never shown twice.

export const KIND_TITLE = { peer: 'User', group: 'Group', room: 'Room', cs: 'Service', system: 'System' };

export function convKey(kind, id, app) {
  return kind === 'cs' ? `cs:${app}:${id}` : kind === 'system' ? 'system' : `${kind}:${id}`;
}

export function parseConvKey(key) {
  const [kind, a, b] = key.split(':');
  if (kind === 'cs') return { kind, app: Number(a), id: Number(b) };
  if (kind === 'system') return { kind, id: 0 };
  return { kind, id: Number(a) };
}

/** What a message's content shows: {type, text?, url?, width?, height?, duration?, name?, size?}. */
export function parseContent(content) {
  let c;
  try { c = JSON.parse(content); } catch { return { type: 'text', text: String(content) }; }
  if (c === null || typeof c !== 'object' || Array.isArray(c)) return { type: 'text', text: String(content) };
  if (typeof c.text === 'string') return { type: 'text', text: c.text };
  if (c.image2 && typeof c.image2.url === 'string') {
    return { type: 'image', url: c.image2.url, width: Number(c.image2.width) || 0, height: Number(c.image2.height) || 0 };
  }
  if (typeof c.image === 'string') return { type: 'image', url: c.image, width: 0, height: 0 };
  if (c.audio && typeof c.audio.url === 'string') {
    return { type: 'audio', url: c.audio.url, duration: Number(c.audio.duration) || 0 };
  }
  if (c.file && typeof c.file.url === 'string') {
    return { type: 'file', url: c.file.url, name: String(c.file.filename || 'file'), size: Number(c.file.size) || 0 };
  }
  if (c.notification !== undefined || c.create || c.add_member || c.quit_group || c.disband || c.mute) {
    return { type: 'notice', text: describeNotice(c) };
  }
  return { type: 'text', text: String(content) };
}

function describeNotice(c) {
  if (c.create) return `Group created (${(c.create.members || []).length} members)`;
  if (c.add_member) return `Member(s) added: ${(c.add_member.member_ids || c.add_member.members || []).join(', ')}`;
  if (c.quit_group) return `Member left: ${c.quit_group.member_id ?? ''}`;
  if (c.disband) return 'Group disbanded';
  if (c.mute) return 'Mute changed';
  return typeof c.notification === 'string' ? c.notification : JSON.stringify(c);
}

export function preview(msg) {
  const p = msg.parsed;
  switch (p.type) {
    case 'image': return '[image]';
    case 'audio': return '[voice]';
    case 'file': return `[file] ${p.name}`;
    default: return p.text;
  }
}

let localSeq = 0;

export class Model extends EventTarget {
  constructor(me, marks = {}, saveMarks = () => {}) {
    super();
    this.me = me; // {appid, uid}
    this.marks = marks; // conversation → timestamp (s) of the newest message read
    this.saveMarks = saveMarks;
    this.convs = new Map();
    this.active = null;
  }

  conv(key) {
    let c = this.convs.get(key);
    if (!c) {
      const k = parseConvKey(key);
      c = { key, ...k, messages: [], unread: 0, last: null, byMsgid: new Map(), typingUntil: 0 };
      this.convs.set(key, c);
      this.emit('convs');
    }
    return c;
  }

  /** Adds a message (or, for an own message already shown, updates it). Returns the message. */
  add(key, m) {
    const c = this.conv(key);
    if (m.mine && m.msgid) {
      const known = c.byMsgid.get(m.msgid);
      if (known) {
        if (known.state !== 'stored') { known.state = 'stored'; known.error = ''; }
        if (m.timestamp) known.timestamp = m.timestamp;
        this.emit('update', { conv: c, msg: known });
        return known;
      }
    }
    const msg = { id: `m${++localSeq}`, state: m.mine ? 'stored' : 'received', error: '', ...m,
      parsed: parseContent(m.content) };
    // Keep timestamp order; messages from sync arrive oldest first, so this is an append nearly always.
    let i = c.messages.length;
    while (i > 0 && c.messages[i - 1].timestamp > msg.timestamp && msg.timestamp) i--;
    c.messages.splice(i, 0, msg);
    if (msg.msgid && msg.mine) c.byMsgid.set(msg.msgid, msg);
    if (i === c.messages.length - 1) c.last = msg;
    if (this.active === key && document.visibilityState !== 'hidden') this.markRead(c);
    else if (!msg.mine && msg.timestamp > (this.marks[key] || 0)) c.unread++;
    this.emit('message', { conv: c, msg, index: i });
    this.emit('convs');
    return msg;
  }

  markRead(c) {
    c.unread = 0;
    const t = c.last ? c.last.timestamp : 0;
    if (t > (this.marks[c.key] || 0)) { this.marks[c.key] = t; this.saveMarks(this.marks); }
  }

  update(key, msg) {
    this.emit('update', { conv: this.conv(key), msg });
  }

  open(key) {
    this.active = key;
    const c = this.conv(key);
    this.markRead(c);
    this.emit('open', { conv: c });
    this.emit('convs');
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}
