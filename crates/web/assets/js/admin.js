// The admin console: the node's own /metrics and /healthz, its recent errors (/admin/errors) and what it
// knows of its cluster (/admin/cluster), and the admin API for groups and users. Everything goes through the operator API with `Authorization: Bearer <api.secret>` when a
// secret is set; the secret is kept in this tab's sessionStorage only.

import { h, $, fmtBytes, jsonFetch } from './util.js';

const root = $('#admin');
const SECRET = 'banter.admin.secret';
const POLL_MS = 2000;
const POINTS = 150; // 5 minutes of samples
let cfg;

function headers(json) {
  const hd = {};
  const s = sessionStorage.getItem(SECRET);
  if (s) hd.Authorization = `Bearer ${s}`;
  if (json) hd['Content-Type'] = 'application/json';
  return hd;
}
const get = (url) => jsonFetch(url, { headers: headers(false) });
const post = (url, body) => jsonFetch(url, { method: 'POST', headers: headers(true), body: JSON.stringify(body) });

async function boot() {
  cfg = await jsonFetch('/web/config');
  if (!cfg.admin_api) {
    root.replaceChildren(h('p.error', 'The admin API is not served on this address (use the API listener).'));
    return;
  }
  if (cfg.admin_secret_required && !sessionStorage.getItem(SECRET)) return askSecret();
  try {
    await fetchMetrics();
  } catch (e) {
    if (String(e.message).startsWith('401')) return askSecret('The secret was not accepted.');
  }
  console_();
}

function askSecret(msg) {
  const f = h('form.card#secret-form', h('h2', 'API secret'),
    h('p.hint', 'This server protects its operator API with api.secret.'),
    msg ? h('p.error', msg) : null,
    h('label', 'Secret', h('input', { name: 'secret', type: 'password', required: true, autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Open the console'));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(SECRET, f.secret.value);
    boot();
  });
  root.replaceChildren(h('h1', 'banter admin'), f);
}

/** Prometheus text → {name: value} for unlabelled samples; histogram buckets as `name` → [[le, count]…]
 *  under `out.buckets` (the store's fsync latency). */
function parseMetrics(text) {
  const out = { buckets: {} };
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    if (!m[2]) { out[m[1]] = Number(m[3]); continue; }
    const le = /le="([^"]+)"/.exec(m[2]);
    if (m[1].endsWith('_bucket') && le) (out.buckets[m[1].slice(0, -7)] ||= []).push([Number(le[1]), Number(m[3])]);
  }
  return out;
}

/** The smallest bucket bound holding fraction `q` of a histogram's samples (an upper estimate). */
function quantile(buckets, q) {
  if (!buckets || !buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  for (const [le, n] of buckets) if (n >= q * total) return le;
  return Infinity;
}
const fmtSecs = (s) => (s == null ? '–' : !isFinite(s) ? '> 10 s' : s < 0.001 ? `${(s * 1e6).toFixed(0)} µs` : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`);

async function fetchMetrics() {
  const r = await fetch('/metrics', { headers: headers(false) });
  if (!r.ok) throw new Error(`${r.status}: /metrics`);
  return parseMetrics(await r.text());
}

function console_() {
  const tiles = h('div.tiles#tiles');
  const charts = {
    conns: chart('Connections'), msgs: chart('Messages stored / s'), deliveries: chart('Deliveries / s'),
  };
  const health = h('pre.out#health');
  const storeTiles = h('div.tiles#store-tiles');
  const secretBtn = cfg.admin_secret_required
    ? h('button.link', { type: 'button', onclick: () => { sessionStorage.removeItem(SECRET); askSecret(); } }, 'Forget the secret')
    : null;
  root.replaceChildren(
    h('h1', 'banter admin ', h('small.hint', h('a', { href: '/' }, 'chat')), ' ', secretBtn),
    h('section', h('h2', 'Live'), tiles),
    h('section', h('h2', 'Traffic (from /metrics)'), h('div.charts', Object.values(charts).map((c) => c.el))),
    h('section#store', h('h2', 'Store and backend'), storeTiles, h('details', h('summary', 'Health (/healthz)'), health)),
    groupsSection(), usersSection(), errorsSection(), clusterSection());

  let prev = null;
  async function tick() {
    let m;
    try { m = await fetchMetrics(); } catch (e) { tiles.replaceChildren(h('p.error', e.message)); return; }
    const t = Date.now();
    const tile = (k, v, id) => h('div.tile', { id }, h('div.v', String(v)), h('div.k', k));
    tiles.replaceChildren(
      tile('connections', m.banter_connections ?? 0, 'tile-connections'),
      tile('signed-in sessions', m.banter_authenticated_sessions ?? 0, 'tile-sessions'),
      tile('online users', m.banter_online_users ?? 0, 'tile-users'),
      tile('messages stored', m.banter_messages_stored_total ?? 0, 'tile-stored'),
      tile('deliveries', m.banter_deliveries_total ?? 0, 'tile-deliveries'),
      tile('refused', m.banter_messages_refused_total ?? 0),
      tile('store errors', m.banter_store_errors_total ?? 0),
      tile('protocol errors', m.banter_protocol_errors_total ?? 0),
      tile('API connections', m.banter_api_connections ?? 0),
      tile('memory', fmtBytes(m.process_resident_memory_bytes ?? 0)));
    charts.conns.push(m.banter_connections ?? 0);
    if (prev) {
      const dt = (t - prev.t) / 1000;
      charts.msgs.push(Math.max(0, (m.banter_messages_stored_total - prev.m.banter_messages_stored_total) / dt));
      charts.deliveries.push(Math.max(0, (m.banter_deliveries_total - prev.m.banter_deliveries_total) / dt));
    }
    // The embedded store's size and fsync latency (absent with store nodes: see the cluster view).
    if (m.banter_store_log_bytes !== undefined) {
      const fs = m.buckets.banter_store_fsync_seconds;
      const n = m.banter_store_fsync_seconds_count ?? 0, sum = m.banter_store_fsync_seconds_sum ?? 0;
      let recent = null;
      if (prev && prev.m.banter_store_fsync_seconds_count !== undefined && n > prev.m.banter_store_fsync_seconds_count) {
        recent = (sum - prev.m.banter_store_fsync_seconds_sum) / (n - prev.m.banter_store_fsync_seconds_count);
      }
      storeTiles.replaceChildren(
        tile('store log size', fmtBytes(m.banter_store_log_bytes), 'tile-store-bytes'),
        tile('log segments', m.banter_store_segments ?? 0),
        tile('queues', m.banter_store_queues ?? 0),
        tile('fsyncs', n, 'tile-fsyncs'),
        tile('fsync mean', fmtSecs(n ? sum / n : null), 'tile-fsync-mean'),
        tile('fsync p99 (≤)', fmtSecs(quantile(fs, 0.99)), 'tile-fsync-p99'),
        tile('fsync mean, last 2 s', fmtSecs(recent)));
    } else {
      storeTiles.replaceChildren(h('p.hint', 'This node uses store nodes: their figures are on their own /metrics (their addresses and state are in the cluster view below).'));
    }
    prev = { t, m };
  }
  async function tickHealth() {
    try {
      const r = await fetch('/healthz');
      health.textContent = JSON.stringify(await r.json(), null, 2);
    } catch (e) { health.textContent = e.message; }
  }
  tick(); tickHealth();
  setInterval(tick, POLL_MS);
  setInterval(tickHealth, 10000);
}

function chart(title) {
  const canvas = h('canvas', { width: 600, height: 140, role: 'img', 'aria-label': title });
  const label = h('div.hint', title);
  const data = [];
  const el = h('div', label, canvas);
  function draw() {
    const ctx = canvas.getContext('2d');
    const w = canvas.width, hgt = canvas.height;
    ctx.clearRect(0, 0, w, hgt);
    const max = Math.max(1, ...data);
    ctx.strokeStyle = '#dde2ea';
    ctx.beginPath(); ctx.moveTo(0, hgt - 0.5); ctx.lineTo(w, hgt - 0.5); ctx.stroke();
    ctx.strokeStyle = '#2f6fde';
    ctx.lineWidth = 2;
    ctx.beginPath();
    const offset = POINTS - data.length; // the newest sample at the right edge
    data.forEach((v, i) => {
      const x = ((offset + i) / (POINTS - 1)) * w, y = hgt - 4 - (v / max) * (hgt - 20);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = '#6b7385';
    ctx.font = '12px system-ui, sans-serif';
    ctx.fillText(`max ${max.toFixed(max < 10 ? 1 : 0)}`, 4, 12);
    label.textContent = `${title}: ${data.length ? data[data.length - 1].toFixed(1) : '–'}`;
  }
  return { el, push(v) { data.push(v); if (data.length > POINTS) data.shift(); draw(); } };
}

function out() { return h('div.out', { role: 'status' }); }
function say(el, text, ok = true) { el.textContent = text; el.className = ok ? 'out ok' : 'out error'; }
const ints = (s) => String(s).split(/[\s,]+/).filter(Boolean).map(Number);

function groupsSection() {
  const o = out();
  const create = h('form#group-create', { 'aria-label': 'Create a group' },
    h('input', { name: 'appid', type: 'number', min: 1, placeholder: 'app id', required: true, 'aria-label': 'App id' }),
    h('input', { name: 'name', placeholder: 'name', 'aria-label': 'Name' }),
    h('input', { name: 'master', type: 'number', min: 0, placeholder: 'owner uid', 'aria-label': 'Owner uid' }),
    h('input.wide', { name: 'members', placeholder: 'members: 1,2,3', 'aria-label': 'Members' }),
    h('label', h('input', { name: 'super', type: 'checkbox' }), ' super group'),
    h('button', { type: 'submit' }, 'Create'));
  create.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await post('/admin/groups', { appid: Number(create.appid.value), name: create.name.value,
        master: Number(create.master.value || 0), super: create.super.checked, members: ints(create.members.value) });
      say(o, `Created group ${r.group_id}.`);
      show.appid.value = create.appid.value; show.gid.value = r.group_id;
      load();
    } catch (x) { say(o, x.message, false); }
  });
  const show = h('form#group-show', { 'aria-label': 'Show a group' },
    h('input', { name: 'appid', type: 'number', min: 1, placeholder: 'app id', required: true, 'aria-label': 'App id' }),
    h('input', { name: 'gid', type: 'number', min: 1, placeholder: 'group id', required: true, 'aria-label': 'Group id' }),
    h('button', { type: 'submit' }, 'Show'));
  const detail = h('div#group-detail');
  show.addEventListener('submit', (e) => { e.preventDefault(); load(); });
  async function load() {
    const appid = Number(show.appid.value), gid = Number(show.gid.value);
    let g;
    try { g = await get(`/admin/groups?appid=${appid}&group_id=${gid}`); } catch (x) { detail.replaceChildren(); return say(o, x.message, false); }
    const act = (label, url, body) => h('button', { type: 'button', onclick: async () => {
      try { await post(url, body); say(o, `${label}: done.`); load(); } catch (x) { say(o, x.message, false); }
    } }, label);
    const add = h('form', { 'aria-label': 'Add members' },
      h('input', { name: 'm', placeholder: 'uids: 4,5', 'aria-label': 'Members to add' }), h('button', { type: 'submit' }, 'Add members'));
    add.addEventListener('submit', async (e) => {
      e.preventDefault();
      try { await post('/admin/groups/members/add', { appid, group_id: gid, members: ints(add.m.value) }); say(o, 'Members added.'); load(); } catch (x) { say(o, x.message, false); }
    });
    detail.replaceChildren(
      h('p', `Group ${g.group_id} “${g.name}” in app ${g.appid}, ${g.super ? 'super' : 'normal'} group, owner ${g.master}, ${g.members.length} members `,
        act('Disband', '/admin/groups/disband', { appid, group_id: gid }), ' ',
        g.super ? null : act('Upgrade to super group', '/admin/groups/upgrade', { appid, group_id: gid })),
      h('table', h('thead', h('tr', h('th', 'uid'), h('th', 'muted'), h('th', 'joined'), h('th', ''))),
        h('tbody', g.members.map((m) => h('tr', { dataset: { uid: m.uid } }, h('td', String(m.uid)),
          h('td.muted', m.mute ? 'yes' : 'no'), h('td', new Date(m.joined_at * 1000).toLocaleString()),
          h('td', act(m.mute ? 'Unmute' : 'Mute', '/admin/groups/mute', { appid, group_id: gid, uid: m.uid, mute: !m.mute }), ' ',
            act('Remove', '/admin/groups/members/remove', { appid, group_id: gid, members: [m.uid] })))))),
      add);
  }
  return h('section#groups', h('h2', 'Groups'), create, show, o, detail);
}

function usersSection() {
  const o = out();
  const ban = h('form#user-ban', { 'aria-label': 'Speak ban' },
    h('input', { name: 'appid', type: 'number', min: 1, placeholder: 'app id', required: true, 'aria-label': 'App id' }),
    h('input', { name: 'uid', type: 'number', min: 1, placeholder: 'uid', required: true, 'aria-label': 'User id' }),
    h('button', { type: 'submit', value: 'on' }, 'Speak ban'), h('button', { type: 'submit', value: 'off' }, 'Lift ban'));
  ban.addEventListener('submit', async (e) => {
    e.preventDefault();
    const on = e.submitter && e.submitter.value === 'on';
    try {
      await post('/admin/users/forbidden', { appid: Number(ban.appid.value), uid: Number(ban.uid.value), forbidden: on });
      say(o, on ? 'Speak ban set.' : 'Speak ban lifted.');
    } catch (x) { say(o, x.message, false); }
  });
  const revoke = h('form#user-revoke', { 'aria-label': 'Revoke a token' },
    h('input.wide', { name: 'token', type: 'password', placeholder: 'token', required: true, autocomplete: 'off', 'aria-label': 'Token' }),
    h('button', { type: 'submit' }, 'Revoke and disconnect'));
  revoke.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await post('/auth/revoke', { token: revoke.token.value });
      say(o, r.revoked ? `Token revoked; ${r.sessions_closed} session(s) closed.` : 'No such token.', r.revoked);
      revoke.token.value = '';
    } catch (x) { say(o, x.message, false); }
  });
  const user = h('form#user-kick', { 'aria-label': 'Kick a user or revoke their tokens' },
    h('input', { name: 'appid', type: 'number', min: 1, placeholder: 'app id', required: true, 'aria-label': 'App id' }),
    h('input', { name: 'uid', type: 'number', min: 1, placeholder: 'uid', required: true, 'aria-label': 'User id' }),
    h('button', { type: 'submit', value: 'kick' }, 'Kick'),
    h('button', { type: 'submit', value: 'revoke' }, 'Revoke all tokens'));
  user.addEventListener('submit', async (e) => {
    e.preventDefault();
    const revokeAll = e.submitter && e.submitter.value === 'revoke';
    const body = { appid: Number(user.appid.value), uid: Number(user.uid.value) };
    try {
      if (revokeAll) {
        const r = await post('/auth/revoke_user', body);
        say(o, `${r.revoked} token(s) revoked; ${r.sessions_closed} session(s) closed.`);
      } else {
        const r = await post('/admin/users/kick', body);
        say(o, `Kicked: ${r.sessions_closed} session(s) closed.`);
      }
    } catch (x) { say(o, x.message, false); }
  });
  return h('section#users', h('h2', 'Users'), ban, user, revoke,
    h('p.hint', 'Kick closes the user\'s sessions; their apps may sign in again with the same token. ' +
      'Revoking tokens also refuses them from then on (all of a user\'s stored tokens, or one token).'),
    o);
}

function errorsSection() {
  const body = h('tbody');
  const info = h('p.hint#errors-info');
  const table = h('div.scroll', { hidden: true }, h('table',
    h('thead', h('tr', h('th', 'time'), h('th', 'level'), h('th', 'where'), h('th', 'what'))), body));
  const section = h('section#errors', h('h2', 'Recent errors'), info, table);
  async function load() {
    let r;
    try { r = await get('/admin/errors'); } catch (x) { info.textContent = x.message; return; }
    info.textContent = r.events.length
      ? `The last ${r.events.length} warnings and errors of this process (newest first; the ring keeps ${r.capacity}` +
        `${r.dropped ? `, ${r.dropped} older ones dropped` : ''}). The log has every line.`
      : 'No warnings or errors since the server started.';
    table.hidden = !r.events.length;
    body.replaceChildren(...r.events.slice().reverse().map((e) => h('tr',
      h('td', new Date(e.at_ms).toLocaleString()), h(`td.lvl-${e.level === 'ERROR' ? 'ERROR' : 'WARN'}`, e.level),
      h('td.mono', e.target), h('td.mono', e.text))));
  }
  load();
  setInterval(load, 5000);
  return section;
}

function clusterSection() {
  const out_ = h('div#cluster');
  const yesNo = (v) => (v == null ? '–' : v ? 'yes' : 'no');
  async function load() {
    let r;
    try { r = await get('/admin/cluster'); } catch (x) { out_.replaceChildren(h('p.error', x.message)); return; }
    if (r.mode === 'single') {
      out_.replaceChildren(h('p', { dataset: { mode: 'single' } }, 'Single node: this server holds every session and its own store (figures above).'));
      return;
    }
    out_.replaceChildren(
      h('p', { dataset: { mode: 'cluster' } }, `Cluster: this access node, ${r.routers.length} router link(s), ${r.stores.length} store node(s).`),
      h('h3', 'Routers'),
      h('table', h('thead', h('tr', ...['address', 'link', 'users', 'rooms', 'queued', 'sent', 'received', 'dropped', 'connects'].map((x) => h('th', x)))),
        h('tbody', r.routers.map((l) => h('tr', { dataset: { addr: l.addr } }, h('td.mono', l.addr),
          h('td', l.connected ? 'up' : 'down'), ...[l.users, l.rooms, l.queued, l.sent, l.received, l.dropped, l.connects].map((v) => h('td', String(v))))))),
      h('h3', 'Store nodes'),
      h('table', h('thead', h('tr', ...['address', 'holds', 'reachable', 'leader', 'log end', 'error'].map((x) => h('th', x)))),
        h('tbody', r.stores.map((st) => h('tr', { dataset: { addr: st.addr } }, h('td.mono', st.addr), h('td', st.role),
          h('td', yesNo(st.reachable)), h('td', yesNo(st.leader)), h('td', st.log_end == null ? '–' : fmtBytes(st.log_end)), h('td.mono', st.error || ''))))));
  }
  load();
  setInterval(load, 5000);
  return h('section#cluster-section', h('h2', 'Nodes'), out_);
}

boot().catch((e) => root.replaceChildren(h('p.error', e.message)));
