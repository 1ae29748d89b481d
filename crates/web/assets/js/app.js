// The chat client's page: sign-in, the conversation list, the (paged) message list and the composer.

import { ImClient } from './client.js';
import { Model, convKey, parseConvKey, preview, KIND_TITLE } from './store.js';
import { Media, imageSize } from './media.js';
import { h, $, fmtTime, fmtBytes, jsonFetch } from './util.js';

const PAGE = 50;
const EMOJI = ['😀', '😂', '😊', '😍', '😎', '🤔', '😢', '😡', '👍', '👎', '👏', '🙏', '🎉', '❤️', '🔥', '✅', '❌', '👀', '💯', '🚀', '☕', '🍕', '🌟', '😴'];
const SESSION = 'banter.session';

const root = $('#app');
let cfg = null;

function store(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}
function save(key, v) { localStorage.setItem(key, JSON.stringify(v)); }

async function boot() {
  try {
    cfg = await jsonFetch('/web/config');
  } catch (e) {
    root.replaceChildren(h('p.error', `Cannot load the configuration: ${e.message}`));
    return;
  }
  const s = store(SESSION, null);
  if (s && s.token) startChat(s); else signIn();
}

// ---------------------------------------------------------------- sign-in

function signIn(message) {
  const err = h('p.error#sign-in-error', { role: 'alert' }, message || '');
  const field = (label, attrs) => h('label', label, h('input', attrs));
  const forms = [];
  if (cfg.dev_signin) {
    const f = h('form.card#dev-signin', { 'aria-label': 'Dev sign-in' },
      h('h2', 'Dev sign-in'),
      h('p.hint', 'Issues a token for any user of any app. Available on this machine only unless the operator enabled it.'),
      field('App id', { name: 'appid', type: 'number', min: 1, value: 7, required: true }),
      field('User id', { name: 'uid', type: 'number', min: 1, required: true, autofocus: true }),
      field('Name', { name: 'name', maxlength: 64 }),
      h('button', { type: 'submit' }, 'Sign in'));
    f.addEventListener('submit', async (e) => {
      e.preventDefault();
      const d = new FormData(f);
      const appid = Number(d.get('appid')), uid = Number(d.get('uid')), name = String(d.get('name') || '');
      try {
        const r = await jsonFetch('/web/dev-signin', { method: 'POST',
          headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ appid, uid, name }) });
        const s = { appid, uid, name: name || `user ${uid}`, token: r.token };
        save(SESSION, s);
        startChat(s);
      } catch (x) { err.textContent = `Sign-in failed: ${x.message}`; }
    });
    forms.push(f);
  }
  if (cfg.token_url) {
    // The app server knows who this browser is (its own cookie session) and issues the IM token.
    // The token comes back in the response body, never in a URL.
    const f = h('form.card#app-signin', { 'aria-label': 'Sign in with the app' },
      h('h2', 'Sign in with the app'),
      h('p.hint', `Asks the app server for a token, with this browser's sign-in there (${new URL(cfg.token_url, location.href).origin}).`),
      h('button', { type: 'submit' }, 'Sign in with the app'));
    f.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const r = await jsonFetch(cfg.token_url, { method: 'POST', credentials: 'include', cache: 'no-store',
          headers: { Accept: 'application/json' } });
        const appid = Number(r && r.appid), uid = Number(r && r.uid);
        if (!r || typeof r.token !== 'string' || !r.token || !(appid > 0) || !(uid > 0)) {
          throw new Error('the app server\'s answer has no "token", "appid" and "uid"');
        }
        const s = { appid, uid, name: typeof r.name === 'string' && r.name ? r.name : `user ${uid}`, token: r.token };
        save(SESSION, s);
        startChat(s);
      } catch (x) { err.textContent = `Sign-in failed: ${x.message}`; }
    });
    forms.push(f);
  }
  const t = h('form.card#token-signin', { 'aria-label': 'Sign in with a token' },
    h('h2', 'Sign in with a token'),
    h('p.hint', 'A token from your app server (POST /auth/grant, a GoBelieve token or a JWT).'),
    field('App id', { name: 'appid', type: 'number', min: 1, required: true }),
    field('User id', { name: 'uid', type: 'number', min: 1, required: true }),
    field('Token', { name: 'token', type: 'password', required: true, autocomplete: 'off' }),
    h('button', { type: 'submit' }, 'Sign in'));
  t.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(t);
    const s = { appid: Number(d.get('appid')), uid: Number(d.get('uid')), name: `user ${d.get('uid')}`,
      token: String(d.get('token')).trim() };
    save(SESSION, s);
    startChat(s);
  });
  forms.push(t);
  root.className = 'app signin';
  root.replaceChildren(h('main.signin-page', h('h1', 'banter'), err, h('div.cards', forms),
    cfg.admin_api ? h('p', h('a', { href: '/admin' }, 'Admin console')) : null));
  performance.mark('banter-ready');
}

// ---------------------------------------------------------------- chat

function startChat(session) {
  const me = { appid: session.appid, uid: session.uid };
  const ns = `${me.appid}.${me.uid}`;
  const model = new Model(me, store(`banter.read.${ns}`, {}), (m) => save(`banter.read.${ns}`, m));
  const media = new Media(cfg.app_api, session.token);
  if (!cfg.ws_url) { root.replaceChildren(h('p.error', 'This server has no WebSocket listener.')); return; }
  const client = new ImClient({ wsUrl: cfg.ws_url, token: session.token, appid: me.appid, uid: me.uid,
    kefuAppid: cfg.kefu_appid, model, groups: store(`banter.groups.${ns}`, []) });
  client.addEventListener('groups', (e) => save(`banter.groups.${ns}`, e.detail));
  for (const k of store(`banter.convs.${ns}`, [])) model.conv(k);
  const remember = () => save(`banter.convs.${ns}`, [...model.convs.keys()]);

  // --- layout
  const stateDot = h('span.dot', { 'aria-hidden': true });
  const stateText = h('span#conn-state', 'connecting');
  const banner = h('div.banner', { hidden: true, role: 'status' });
  const list = h('ul.convs#conv-list', { 'aria-label': 'Conversations' });
  const newForm = h('form.new-conv#new-conv', { 'aria-label': 'Open a conversation' },
    h('select', { name: 'kind', 'aria-label': 'Kind' },
      h('option', { value: 'peer' }, 'User'), h('option', { value: 'group' }, 'Group'),
      h('option', { value: 'room' }, 'Room'),
      cfg.kefu_appid ? h('option', { value: 'cs' }, 'Service') : null),
    h('input', { name: 'id', type: 'number', min: 1, required: true, placeholder: 'id', 'aria-label': 'Id' }),
    h('input', { name: 'app', type: 'number', min: 1, placeholder: 'app', 'aria-label': 'App id (service)', hidden: true }),
    h('button', { type: 'submit' }, 'Open'));
  newForm.kind.addEventListener('change', () => { newForm.app.hidden = newForm.kind.value !== 'cs'; });
  newForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const kind = newForm.kind.value, id = Number(newForm.id.value);
    const app = kind === 'cs' ? Number(newForm.app.value || cfg.kefu_appid) : 0;
    if (!(id > 0)) return;
    openConv(convKey(kind, id, app));
    newForm.id.value = '';
  });
  const sidebar = h('aside.sidebar',
    h('header.me', h('div', h('strong#me-name', session.name), h('small', ` app ${me.appid} · uid ${me.uid}`)),
      h('div.state', stateDot, stateText),
      h('button.link#sign-out', { type: 'button', onclick: signOut }, 'Sign out')),
    newForm, list);

  const title = h('h2#chat-title', 'No conversation');
  const typing = h('span.typing#typing', { 'aria-live': 'polite' });
  const back = h('button.back', { type: 'button', 'aria-label': 'Back to conversations', onclick: () => root.classList.remove('show-chat') }, '‹');
  const msgs = h('div.messages#messages', { role: 'log', 'aria-label': 'Messages', tabindex: 0 });
  const input = h('textarea#composer', { rows: 1, placeholder: 'Message', 'aria-label': 'Message', maxlength: 8000 });
  const emojiBox = h('div.emoji-picker', { hidden: true, role: 'menu' },
    EMOJI.map((e) => h('button', { type: 'button', role: 'menuitem', onclick: () => { insert(e); } }, e)));
  const fileInput = h('input', { type: 'file', hidden: true, 'aria-label': 'Attach a file' });
  const progress = h('div.progress#upload-progress', { hidden: true });
  const recordBtn = h('button.icon#record', { type: 'button', title: 'Record voice', 'aria-label': 'Record voice' }, 'Voice');
  const composer = h('form.composer#composer-form',
    h('button.icon', { type: 'button', title: 'Emoji', 'aria-label': 'Emoji', 'aria-haspopup': 'menu',
      onclick: () => { emojiBox.hidden = !emojiBox.hidden; } }, '☺'),
    h('button.icon#attach', { type: 'button', title: 'Attach an image or file', 'aria-label': 'Attach',
      onclick: () => fileInput.click(), disabled: !media.available }, 'Attach'),
    recordBtn, fileInput, input, h('button#send', { type: 'submit' }, 'Send'));
  const chat = h('section.chat', h('header.chat-head', back, title, typing), banner, msgs, progress, emojiBox, composer);
  root.className = 'app';
  root.replaceChildren(sidebar, chat);
  composer.hidden = true;

  // --- connection state
  let retryAt = 0;
  client.addEventListener('state', (e) => {
    if (e.detail === 'online') pollPresence(true);
    stateText.textContent = e.detail;
    stateDot.className = `dot ${e.detail}`;
    root.dataset.conn = e.detail;
    if (e.detail === 'online') banner.hidden = true;
  });
  client.addEventListener('retry', (e) => {
    retryAt = Date.now() + e.detail;
    banner.hidden = false;
    banner.replaceChildren(h('span', 'Connection lost. Reconnecting…'), ' ',
      h('button.link', { type: 'button', onclick: () => client.reconnectNow() }, 'Retry now'));
  });
  client.addEventListener('auth-failed', (e) => { signOut(); signIn(`Signed out: ${e.detail}.`); });
  client.addEventListener('typing', (e) => {
    const c = model.conv(e.detail.conv);
    c.typingUntil = Date.now() + 5000;
    if (model.active === c.key) showTyping(c);
    setTimeout(() => { if (model.active === c.key) showTyping(c); }, 5100);
  });
  window.addEventListener('online', () => client.reconnectNow());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && model.active) { model.markRead(model.conv(model.active)); renderList(); }
  });
  void retryAt;

  function signOut() {
    clearInterval(presenceTimer);
    client.stop();
    localStorage.removeItem(SESSION);
    signIn();
  }

  // --- conversation list
  function title_(c) {
    if (c.kind === 'cs') return `Service ${c.app}/${c.id}`;
    if (c.kind === 'system') return 'System';
    return `${KIND_TITLE[c.kind]} ${c.id}`;
  }
  let listQueued = false;
  function renderList() {
    if (listQueued) return;
    listQueued = true;
    requestAnimationFrame(() => {
      listQueued = false;
      const convs = [...model.convs.values()].sort((a, b) => (b.last?.timestamp || 0) - (a.last?.timestamp || 0));
      list.replaceChildren(...convs.map((c) => h('li',
        h('button.conv', { type: 'button', 'aria-current': model.active === c.key ? 'true' : null,
          dataset: { conv: c.key }, onclick: () => openConv(c.key) },
        h('span.conv-title', title_(c), ' ', presenceDot(c)),
        c.unread ? h('span.badge', { 'aria-label': `${c.unread} unread` }, String(c.unread)) : null,
        h('span.conv-last', c.last ? preview(c.last) : ''),
        h('span.conv-time', c.last ? fmtTime(c.last.timestamp) : '')))));
    });
  }
  model.addEventListener('convs', () => { renderList(); remember(); pollPresence(); });

  // --- online state of the 1:1 contacts, where the server knows it (GET /web/presence)
  const presence = new Map(); // uid → bool
  let presenceTimer = 0, presenceAsked = '';
  async function pollPresence(force = false) {
    if (!cfg.presence || client.stopped || client.state !== 'online') return;
    const uids = [...model.convs.values()].filter((c) => c.kind === 'peer').map((c) => c.id).slice(0, 100);
    const key = uids.join(',');
    if (!uids.length || (!force && key === presenceAsked)) return;
    presenceAsked = key;
    try {
      const r = await jsonFetch(`/web/presence?uids=${key}`, { headers: { Authorization: `Bearer ${session.token}` }, cache: 'no-store' });
      if (!r.online) { cfg.presence = false; return; }
      for (const [u, on] of Object.entries(r.online)) presence.set(Number(u), on === true);
      renderList();
      renderTitle();
    } catch { /* shown again at the next poll */ }
  }
  presenceTimer = setInterval(() => pollPresence(true), 10000);
  function presenceDot(c) {
    if (c.kind !== 'peer' || !presence.has(c.id)) return null;
    const on = presence.get(c.id);
    return h(`span.presence.${on ? 'on' : 'off'}`, { title: on ? 'online' : 'offline', 'aria-label': on ? 'online' : 'offline', dataset: { online: on ? '1' : '0' } });
  }
  function renderTitle() {
    const c = model.active && model.conv(model.active);
    if (!c) return;
    title.replaceChildren(title_(c), ' ', presenceDot(c) || '');
  }

  // --- messages (paged: only the newest pages are in the DOM; older ones are added on scroll)
  let shownFrom = 0; // index of the oldest rendered message of the active conversation
  const nodes = new Map(); // message id → element

  function openConv(key) {
    const c = model.conv(key);
    remember();
    if (c.kind === 'room') client.enterRoom(c.id);
    if (c.kind === 'group') client.watchGroup(c.id);
    model.open(key);
    renderTitle();
    composer.hidden = c.kind === 'system';
    root.classList.add('show-chat');
    shownFrom = Math.max(0, c.messages.length - PAGE);
    nodes.clear();
    msgs.replaceChildren(...c.messages.slice(shownFrom).map(renderMsg));
    msgs.scrollTop = msgs.scrollHeight;
    showTyping(c);
    input.focus();
  }

  function showTyping(c) {
    typing.textContent = c.typingUntil > Date.now() ? 'typing…' : '';
  }

  msgs.addEventListener('scroll', () => {
    if (msgs.scrollTop > 80 || shownFrom === 0 || !model.active) return;
    const c = model.conv(model.active);
    const from = Math.max(0, shownFrom - PAGE);
    const before = msgs.scrollHeight;
    msgs.prepend(...c.messages.slice(from, shownFrom).map(renderMsg));
    shownFrom = from;
    msgs.scrollTop += msgs.scrollHeight - before;
  });

  model.addEventListener('message', (e) => {
    const { conv, msg, index } = e.detail;
    if (conv.key !== model.active) return;
    const atBottom = msgs.scrollHeight - msgs.scrollTop - msgs.clientHeight < 60;
    if (index === conv.messages.length - 1) msgs.append(renderMsg(msg));
    else if (index >= shownFrom) msgs.insertBefore(renderMsg(msg), msgs.children[index - shownFrom] || null);
    else shownFrom++;
    if (atBottom || msg.mine) msgs.scrollTop = msgs.scrollHeight;
    conv.typingUntil = 0;
    showTyping(conv);
  });
  model.addEventListener('update', (e) => {
    const old = nodes.get(e.detail.msg.id);
    if (old) old.replaceWith(renderMsg(e.detail.msg));
    renderList();
  });

  function renderMsg(m) {
    const p = m.parsed;
    let body;
    switch (p.type) {
      case 'image': body = renderImage(p); break;
      case 'audio': body = renderAudio(p); break;
      case 'file': body = renderFile(p); break;
      default: body = h('div.text', p.text);
    }
    const meta = h('div.meta', fmtTime(m.timestamp));
    const c = model.conv(model.active);
    if (!m.mine && (c.kind === 'group' || c.kind === 'room') && m.sender) meta.prepend(`${m.sender} · `);
    if (m.mine) {
      const label = { sending: 'sending…', stored: '✓ sent', failed: `failed${m.error ? `: ${m.error}` : ''}` }[m.state] || '';
      meta.append(' ', h('span.state', label));
      if (m.state === 'failed') meta.append(' ', h('button.link.retry', { type: 'button', onclick: () => client.retry(m) }, 'Retry'));
    }
    const el = h(`div.msg.${p.type === 'notice' ? 'notice' : m.mine ? 'mine' : 'theirs'}`,
      { dataset: { id: m.id, state: m.state } }, h('div.bubble', body, meta));
    nodes.set(m.id, el);
    return el;
  }

  function untrusted(url, what) {
    return h('div.text', `[${what} from another site, not loaded: ${url}]`);
  }

  function renderImage(p) {
    if (!media.trusted(p.url)) return untrusted(p.url, 'image');
    const scale = p.width && p.height ? Math.min(1, 240 / p.width, 240 / p.height) : 1;
    const img = h('img.thumb', { alt: 'image', width: p.width ? Math.round(p.width * scale) : 160,
      height: p.height ? Math.round(p.height * scale) : 120, tabindex: 0, role: 'button' });
    const open = () => media.blobUrl(p.url).then((u) => window.open(u, '_blank', 'noopener')).catch(() => {});
    img.addEventListener('click', open);
    img.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
    media.thumbnail(p.url).then((u) => { img.src = u; img.dataset.loaded = '1'; })
      .catch(() => { img.alt = 'image (cannot load)'; });
    return img;
  }

  function renderAudio(p) {
    if (!media.trusted(p.url)) return untrusted(p.url, 'voice message');
    const a = h('audio', { controls: true, preload: 'none' });
    media.blobUrl(p.url).then((u) => { a.src = u; }).catch(() => {});
    return h('div.voice', a, p.duration ? h('small', ` ${p.duration}s`) : null);
  }

  function renderFile(p) {
    if (!media.trusted(p.url)) return untrusted(p.url, 'file');
    return h('button.file', { type: 'button', title: 'Download', onclick: () => media.blobUrl(p.url).then((u) => {
      const a = h('a', { href: u, download: p.name });
      document.body.append(a); a.click(); a.remove();
    }).catch((e) => alert(e.message)) }, `${p.name} (${fmtBytes(p.size)})`);
  }

  // --- composer
  function insert(text) {
    const { selectionStart: s, selectionEnd: e, value } = input;
    input.value = value.slice(0, s) + text + value.slice(e);
    input.selectionStart = input.selectionEnd = s + text.length;
    input.focus();
  }
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') emojiBox.hidden = true; });
  let lastTyping = 0;
  input.addEventListener('input', () => {
    const c = model.active && model.conv(model.active);
    if (c && c.kind === 'peer' && Date.now() - lastTyping > 3000 && input.value) {
      lastTyping = Date.now();
      client.sendTyping(c.id);
    }
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); composer.requestSubmit(); }
  });
  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || !model.active) return;
    client.send(model.active, JSON.stringify({ text }));
    input.value = '';
    emojiBox.hidden = true;
    lastTyping = 0;
  });

  async function uploadAndSend(file, kindHint) {
    const conv = model.active;
    if (!conv) return;
    const kind = kindHint || (file.type.startsWith('image/') ? 'images' : file.type.startsWith('audio/') ? 'audios' : 'files');
    progress.hidden = false;
    const bar = h('progress', { max: 1, value: 0 });
    progress.replaceChildren(h('span', `Uploading ${file.name || 'voice'}… `), bar);
    try {
      const size = kind === 'images' ? await imageSize(file) : null;
      const r = await media.upload(kind, file, (f) => { bar.value = f; });
      let content;
      if (kind === 'images') content = { image2: { url: r.src_url, width: r.width || size.width, height: r.height || size.height } };
      else if (kind === 'audios') content = { audio: { url: r.src_url, duration: file.duration || 0 } };
      else content = { file: { url: r.src_url, filename: file.name || 'file', size: r.size } };
      client.send(conv, JSON.stringify(content));
      progress.hidden = true;
    } catch (x) {
      progress.replaceChildren(h('span.error', `Upload failed: ${x.message}`));
      setTimeout(() => { progress.hidden = true; }, 6000);
    }
  }
  fileInput.addEventListener('change', () => {
    for (const f of fileInput.files) uploadAndSend(f);
    fileInput.value = '';
  });

  // Voice: MediaRecorder where the browser has it (WebM/Opus, accepted by /audios).
  let recorder = null;
  recordBtn.addEventListener('click', async () => {
    if (recorder) { recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) { alert('Voice recording is not available in this browser.'); return; }
    let stream;
    try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) { alert(`No microphone: ${e.message}`); return; }
    const chunks = [], started = Date.now();
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      recordBtn.classList.remove('recording');
      const blob = new Blob(chunks, { type: 'audio/webm' });
      blob.duration = Math.round((Date.now() - started) / 1000);
      uploadAndSend(blob, 'audios');
    };
    recorder.start();
    recordBtn.classList.add('recording');
  });

  // For tests and the browser console: the page's model and connection (nothing a script on this page
  // could not reach anyway; the page runs no script but its own).
  window.banter = { model, client, openConv, uploadAndSend };
  renderList();
  client.start();
  performance.mark('banter-ready');
}

boot();
