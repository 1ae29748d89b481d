// The admin console: the node's own /metrics, /summary and /healthz, and the admin API for groups and
// users. Everything goes through the operator API with `Authorization: Bearer <api.secret>` when a
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

/** Prometheus text → {name: value} (unlabelled samples only, which is all banter exports). */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && !m[2]) out[m[1]] = Number(m[3]);
  }
  return out;
}

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
  const storeInfo = h('p.out#store-info');
  const secretBtn = cfg.admin_secret_required
    ? h('button.link', { type: 'button', onclick: () => { sessionStorage.removeItem(SECRET); askSecret(); } }, 'Forget the secret')
    : null;
  root.replaceChildren(
    h('h1', 'banter admin ', h('small.hint', h('a', { href: '/' }, 'chat')), ' ', secretBtn),
    h('section', h('h2', 'Live'), tiles),
    h('section', h('h2', 'Traffic (from /metrics)'), h('div.charts', Object.values(charts).map((c) => c.el))),
    h('section', h('h2', 'Store and backend (/healthz)'), storeInfo, health),
    groupsSection(), usersSection(),
    h('section', h('h2', 'Recent errors and cluster'),
      h('p.hint', 'This server has no recent-errors endpoint: errors go to its log (throttled). ' +
        'Error counters are shown above. In cluster mode this console shows the node it is served by; ' +
        'open each node\'s console for the others.')));

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
      tile('memory', fmtBytes(m.banter_process_resident_memory_bytes ?? 0)));
    charts.conns.push(m.banter_connections ?? 0);
    if (prev) {
      const dt = (t - prev.t) / 1000;
      charts.msgs.push(Math.max(0, (m.banter_messages_stored_total - prev.m.banter_messages_stored_total) / dt));
      charts.deliveries.push(Math.max(0, (m.banter_deliveries_total - prev.m.banter_deliveries_total) / dt));
    }
    prev = { t, m };
    const storeKeys = Object.keys(m).filter((k) => /store_(bytes|size)|fsync/.test(k));
    storeInfo.textContent = storeKeys.length
      ? storeKeys.map((k) => `${k} = ${m[k]}`).join(', ')
      : 'Store size and fsync latency are not exported by this server\'s /metrics.';
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
  return h('section#users', h('h2', 'Users'), ban, revoke,
    h('p.hint', 'Kicking a user means revoking the token their sessions logged in with: the server closes those sessions and refuses the token from then on. There is no kick by user id in the admin API.'),
    o);
}

boot().catch((e) => root.replaceChildren(h('p.error', e.message)));
