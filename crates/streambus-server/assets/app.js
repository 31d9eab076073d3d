// streambus dashboard. Plain JavaScript, no framework, no build step.
//
// Event payloads are attacker-controlled: everything that comes from the
// service is put into the page with textContent / createTextNode only. Never
// HTML parsing, never code evaluation. The page's CSP forbids inline script as a second line
// of defence.
'use strict';

(function () {
  const MAX_ROWS = 500;          // rows kept in the live feed
  const HISTORY = 150;           // points kept per chart
  const POLL_MS = 2000;          // /api/streams
  const SCALE_MS = 4000;         // /scale per group
  const DLQ_MS = 5000;           // dead letters
  const DLQ_ROWS = 20;           // dead letters shown per stream
  const HEALTH_MS = 2000;        // /healthz (Redis reachable?)

  const $ = (id) => document.getElementById(id);

  // ---- token --------------------------------------------------------------

  let token = null;

  function loadToken() {
    const m = /(?:^|[#&])token=([^&]*)/.exec(location.hash);
    if (m) {
      token = decodeURIComponent(m[1]);
      sessionStorage.setItem('streambus.token', token);
      // Keep the token out of the address bar and of bookmarks.
      history.replaceState(null, '', location.pathname + location.search);
    } else {
      token = sessionStorage.getItem('streambus.token');
    }
    $('forget-token').hidden = !token;
  }

  function askToken(message) {
    $('auth').hidden = false;
    $('auth-error').textContent = message || '';
    $('auth-token').focus();
  }

  $('auth-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('auth-token').value.trim();
    if (!t) return;
    token = t;
    sessionStorage.setItem('streambus.token', t);
    $('auth-token').value = '';
    $('auth').hidden = true;
    $('forget-token').hidden = false;
    start();
  });

  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem('streambus.token');
    token = null;
    location.reload();
  });

  class AuthError extends Error {}

  async function api(path) {
    const headers = { 'Accept': 'application/json' };
    if (token) headers['Authorization'] = 'Bearer ' + token;
    const r = await fetch(path, { headers, cache: 'no-store' });
    if (r.status === 401) throw new AuthError('unauthorized');
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { const j = await r.json(); if (j && j.error) msg = j.error; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  // ---- small DOM helpers (text only) ---------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function td(text, cls) { return el('td', cls, text); }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function fmtNum(n) {
    if (n === null || n === undefined) return '\u2014';
    return Number(n).toLocaleString('en-US');
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '\u2014';
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  function statusBadge(status) {
    const cls = status === 'OK' ? 'badge-ok'
      : status === 'IDLE' || status === 'TOO_MANY_PENDING' ? 'badge-warn' : 'badge-bad';
    return el('span', 'badge ' + cls, status);
  }

  function idCmp(a, b) {
    const [am, as] = a.split('-').map(BigInt);
    const [bm, bs] = b.split('-').map(BigInt);
    if (am !== bm) return am < bm ? -1 : 1;
    if (as !== bs) return as < bs ? -1 : 1;
    return 0;
  }

  // ---- charts (canvas, drawn by hand) ---------------------------------------

  function drawChart(canvas, series) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = '#26313d';
    ctx.lineWidth = 1;
    for (const y of [0.5, h / 2, h - 0.5]) {
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
    }
    for (const s of series) {
      const pts = s.points;
      if (pts.length < 2) continue;
      // Each series has its own scale: they are different quantities.
      const max = Math.max(1, ...pts);
      // Few points fill the width; a long history scrolls.
      const step = w / Math.max(pts.length - 1, 30);
      const x0 = w - (pts.length - 1) * step;
      ctx.beginPath();
      pts.forEach((v, i) => {
        const x = x0 + i * step;
        const y = h - 3 - (v / max) * (h - 8);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.6;
      ctx.stroke();
    }
  }

  function push(arr, v) { arr.push(v); if (arr.length > HISTORY) arr.shift(); }

  const css = getComputedStyle(document.documentElement);
  const C_A = css.getPropertyValue('--accent').trim() || '#4fb3ff';
  const C_B = css.getPropertyValue('--accent-2').trim() || '#b48cff';

  // ---- state -----------------------------------------------------------------

  const streams = new Map();   // name -> {card, rateHist, lenHist, count, ...}
  const groups = new Map();    // "stream\u0000group" -> {row, lagHist, pendHist, scaleCell}
  const lastSeen = {};         // stream (or "stream#partition") -> last entry id received
  const partitioned = new Set(); // logical streams split into partitions
  let streamNames = [];
  let feed = [];               // newest first, at most MAX_ROWS
  let paused = false;
  let pausedNew = 0;
  let filter = '';
  let started = false;

  // ---- streams and groups (polled) -------------------------------------------

  function streamCard(name) {
    let s = streams.get(name);
    if (s) return s;
    const card = el('div', 'card');
    card.appendChild(el('div', 'card-title', name));
    const stats = el('div', 'stats');
    const mk = (k) => {
      const d = el('div', 'stat');
      const v = el('div', 'v', '\u2014');
      d.appendChild(v); d.appendChild(el('div', 'k', k));
      stats.appendChild(d);
      return v;
    };
    s = {
      card,
      rate: mk('events/s (5 s)'), length: mk('length'), last: mk('last id'), dlq: mk('dead letters'),
      rateHist: [], lenHist: [], count: 0,
    };
    s.last.classList.add('mono');
    card.appendChild(stats);
    const legend = el('div', 'legend');
    legend.appendChild(el('span', 'a', 'rate'));
    legend.appendChild(el('span', 'b', 'length'));
    card.appendChild(legend);
    s.canvas = el('canvas', 'chart');
    card.appendChild(s.canvas);
    // A partitioned stream: one small line per partition (filled by poll).
    s.parts = el('div', 'muted mono');
    card.appendChild(s.parts);
    // Leased groups of a partitioned stream: who owns each partition.
    s.owners = el('div', 'owners');
    card.appendChild(s.owners);
    const box = $('streams');
    if (streams.size === 0) clear(box);
    box.appendChild(card);
    streams.set(name, s);
    const opt = el('option', null, name);
    opt.value = name;
    $('filter').appendChild(opt);
    return s;
  }

  function groupRow(stream, g) {
    const key = stream + '\u0000' + g;
    let r = groups.get(key);
    if (r) return r;
    const tr = el('tr');
    tr.appendChild(td(stream, 'mono'));
    tr.appendChild(td(g, 'mono'));
    r = { tr, lag: td('', 'num'), pending: td('', 'num'), lagHist: [], pendHist: [], stream, group: g };
    tr.appendChild(r.lag);
    tr.appendChild(r.pending);
    const chartCell = td();
    r.canvas = el('canvas', 'spark');
    chartCell.appendChild(r.canvas);
    tr.appendChild(chartCell);
    r.scale = td('\u2026', 'scale');
    tr.appendChild(r.scale);
    $('groups').appendChild(tr);
    groups.set(key, r);
    return r;
  }

  // One leased group's ownership: live members, partitions without an owner
  // (a red badge above 0: their entries wait), and per partition its owner,
  // lease age, time to expiry, lag and pending. Names come from Redis, so
  // text only, like everything else.
  function ownersBlock(o) {
    const box = el('div', 'owners-group');
    const head = el('div', 'owners-head');
    head.appendChild(el('span', 'mono', o.group));
    const n = (o.members || []).length;
    head.appendChild(document.createTextNode(
      ': ' + n + (n === 1 ? ' live member ' : ' live members ')));
    const unowned = el('span', 'badge owners-unowned ' + (o.unowned > 0 ? 'badge-bad' : 'badge-ok'),
      o.unowned + ' unowned');
    head.appendChild(unowned);
    box.appendChild(head);
    if (n > 0) box.appendChild(el('div', 'muted mono owners-members', o.members.join(', ')));
    const table = el('table', 'table owners-table');
    const hr = el('tr');
    for (const h of ['p', 'owner', 'held', 'renewed', 'expires', 'lag', 'pending']) hr.appendChild(el('th', null, h));
    const thead = el('thead');
    thead.appendChild(hr);
    table.appendChild(thead);
    const body = el('tbody');
    for (const p of o.partitions || []) {
      const tr = el('tr', p.owner === null || p.owner === undefined ? 'unowned' : null);
      tr.appendChild(td('p' + p.partition, 'mono'));
      tr.appendChild(td(p.owner === null || p.owner === undefined ? 'no owner' : p.owner, 'mono'));
      tr.appendChild(td(fmtMs(p.held_ms), 'num'));
      tr.appendChild(td(p.renewed_ms_ago === null || p.renewed_ms_ago === undefined ? '\u2014'
        : fmtMs(p.renewed_ms_ago) + ' ago', 'num'));
      tr.appendChild(td(fmtMs(p.expires_in_ms), 'num'));
      tr.appendChild(td(fmtNum(p.lag), 'num'));
      tr.appendChild(td(fmtNum(p.pending), 'num'));
      body.appendChild(tr);
    }
    table.appendChild(body);
    box.appendChild(table);
    return box;
  }

  async function poll() {
    let data;
    try {
      data = await api('/api/streams');
    } catch (e) {
      if (e instanceof AuthError) { askToken(token ? 'That token was refused.' : ''); return false; }
      $('updated').textContent = 'API: ' + e.message;
      return true;
    }
    const names = [];
    const consumersBody = $('consumers');
    clear(consumersBody);
    let nConsumers = 0;
    for (const s of data.streams) {
      names.push(s.stream);
      const c = streamCard(s.stream);
      c.length.textContent = fmtNum(s.length);
      c.last.textContent = s.last_entry_id || '\u2014';
      c.dlq.textContent = fmtNum(s.dead_letters);
      c.dlqCount = s.dead_letters;
      push(c.lenHist, s.length || 0);
      clear(c.parts);
      if (Array.isArray(s.partitions)) {
        partitioned.add(s.stream);
        c.parts.appendChild(el('div', null, s.partitions.length + ' partitions'));
        for (const p of s.partitions) {
          const lag = (p.groups || []).map((g) => g.name + ' lag ' + fmtNum(g.lag)).join(', ');
          c.parts.appendChild(el('div', null,
            'p' + p.partition + ': length ' + fmtNum(p.length) + (lag ? ', ' + lag : '')));
        }
      }
      clear(c.owners);
      for (const o of s.owners || []) c.owners.appendChild(ownersBlock(o));
      // Room for the owners' table.
      c.card.classList.toggle('card-wide', (s.owners || []).length > 0);
      for (const g of s.groups || []) {
        const r = groupRow(s.stream, g.name);
        r.lag.textContent = fmtNum(g.lag);
        r.pending.textContent = fmtNum(g.pending);
        push(r.lagHist, g.lag || 0);
        push(r.pendHist, g.pending || 0);
        drawChart(r.canvas, [{ points: r.lagHist, color: C_A }, { points: r.pendHist, color: C_B }]);
        for (const c2 of g.consumers || []) {
          nConsumers++;
          const tr = el('tr');
          const part = c2.partition === undefined ? '' : ' / p' + c2.partition;
          tr.appendChild(td(s.stream + ' / ' + g.name + part, 'mono'));
          tr.appendChild(td(c2.name, 'mono'));
          const st = td();
          st.appendChild(statusBadge(c2.status));
          tr.appendChild(st);
          tr.appendChild(td(fmtNum(c2.pending), 'num'));
          tr.appendChild(td(fmtMs(c2.idle_ms), 'num'));
          consumersBody.appendChild(tr);
        }
      }
    }
    $('groups-empty').hidden = groups.size > 0;
    $('consumers-empty').hidden = nConsumers > 0;
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    if (names.join(',') !== streamNames.join(',')) {
      streamNames = names;
      connect(true);
    }
    return true;
  }

  async function pollScale() {
    for (const r of groups.values()) {
      if (partitioned.has(r.stream)) {
        // Scaling advice is per partition; the API refuses the logical stream.
        r.scale.textContent = 'per partition';
        continue;
      }
      try {
        const s = await api('/api/streams/' + encodeURIComponent(r.stream) + '/groups/' +
          encodeURIComponent(r.group) + '/scale');
        clear(r.scale);
        const sugg = s.suggestion || 'UNKNOWN';
        const cls = sugg === 'OUT' ? 'badge-warn' : sugg === 'IN' ? 'badge-info' : 'badge-ok';
        r.scale.appendChild(el('span', 'badge ' + cls, sugg));
        const target = s.target === null || s.target === undefined ? '' :
          '  target ' + s.target + ' (now ' + s.consumers + ')';
        r.scale.appendChild(document.createTextNode(target));
        const reason = (s.reasons && s.reasons[0]) || s.sentence || '';
        r.scale.appendChild(el('div', 'reason', reason));
        // Full text on hover (a property: text, not markup).
        r.scale.title = [s.sentence || ''].concat(s.reasons || []).join('\n');
      } catch (e) {
        if (e instanceof AuthError) return;
        r.scale.textContent = 'unavailable';
      }
    }
  }

  async function pollDlq() {
    const body = $('dlq');
    const rows = [];
    for (const [name, c] of streams) {
      if (!c.dlqCount) continue;
      try {
        const d = await api('/api/streams/' + encodeURIComponent(name) + '/dlq?count=' + DLQ_ROWS);
        for (const e of d.entries) {
          const tr = el('tr');
          tr.appendChild(td(name, 'mono'));
          tr.appendChild(td(e.id, 'mono'));
          tr.appendChild(td(e.reason || '\u2014'));
          tr.appendChild(td((e.group || '?') + ' / ' + (e.consumer || '?'), 'mono'));
          tr.appendChild(td(fmtNum(e.deliveries), 'num'));
          tr.appendChild(td(preview(e.fields), 'mono payload'));
          rows.push(tr);
        }
      } catch (e) {
        if (e instanceof AuthError) return;
      }
    }
    clear(body);
    for (const r of rows) body.appendChild(r);
    $('dlq-empty').hidden = rows.length > 0;
  }

  // ---- Redis health (banner) ----------------------------------------------------

  // /healthz answers from the service's own watcher at once: 200 while Redis
  // is reachable, 503 {"status":"redis_unreachable","since":ms,"error":kind}
  // while it is not. The banner is text only (textContent), like everything.
  function showBanner(text) {
    const b = $('redis-banner');
    if (text) { b.textContent = text; b.hidden = false; } else { b.hidden = true; b.textContent = ''; }
  }

  async function pollHealth() {
    let r;
    try {
      r = await fetch('/healthz', { cache: 'no-store' });
    } catch (_) {
      showBanner('The streambus service does not answer; retrying\u2026');
      return;
    }
    let h = null;
    try { h = await r.json(); } catch (_) { /* not JSON */ }
    if (r.ok) { showBanner(''); return; }
    if (h && h.status === 'redis_unreachable') {
      const since = typeof h.since === 'number' ? new Date(h.since).toLocaleTimeString() : '?';
      const why = typeof h.error === 'string' ? ' (' + h.error + ')' : '';
      showBanner('Redis unreachable since ' + since + why +
        '. Live events resume where they stopped once it is back.');
    } else {
      showBanner('The streambus service reports a problem (' + r.status + ').');
    }
  }

  // ---- live feed (WebSocket) ---------------------------------------------------

  let ws = null;
  let attempt = 0;
  let retryTimer = null;

  function setConn(text, cls) {
    const c = $('conn');
    c.textContent = text;
    c.className = 'pill ' + cls;
  }

  function protocolSafe(t) { return /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/.test(t); }

  function connect(force) {
    if (ws && !force) return;
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    if (ws) { ws.onclose = null; ws.close(1000); ws = null; }
    if (streamNames.length === 0) { setConn('no streams', 'pill-warn'); return; }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let url = scheme + '//' + location.host + '/ws?streams=' +
      streamNames.map(encodeURIComponent).join(',');
    // Resume after the oldest last-seen id: entries at or below each stream's
    // own last-seen id are dropped on arrival, so nothing is shown twice.
    // Partitioned streams cannot resume (ids are per partition): go live.
    const seen = streamNames.map((s) => lastSeen[s]).filter(Boolean);
    if (seen.length === streamNames.length && !streamNames.some((s) => partitioned.has(s))) {
      url += '&from=' + encodeURIComponent(seen.sort(idCmp)[0]);
    }
    let protocols = [];
    if (token && protocolSafe(token)) protocols = ['bearer.' + token];
    else if (token) url += '&token=' + encodeURIComponent(token);
    const sock = new WebSocket(url, protocols);
    ws = sock;
    sock.onopen = () => { attempt = 0; setConn('live', 'pill-ok'); };
    sock.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m && m.entry_id && m.stream) onEntry(m);
      else if (m && m.type === 'lagged') setConn('resyncing', 'pill-warn');
      else if (m && m.type === 'reset' && typeof m.stream === 'string') onReset(m);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      attempt++;
      // Backoff with jitter; a lagged cut-off resumes at once.
      const lagged = ev.code === 1008 || ev.code === 4000;
      const base = lagged ? 100 : Math.min(5000, 500 * Math.pow(2, attempt - 1));
      const delay = base / 2 + Math.random() * base / 2;
      setConn(lagged ? 'resyncing' : 'reconnecting', lagged ? 'pill-warn' : 'pill-bad');
      retryTimer = setTimeout(() => { retryTimer = null; connect(false); }, delay);
    };
  }

  function preview(v) {
    let s;
    try { s = typeof v === 'string' ? v : JSON.stringify(v); } catch (_) { s = String(v); }
    if (s === undefined) s = '';
    return s.length > 600 ? s.slice(0, 600) + '\u2026' : s;
  }

  function entryRow(m) {
    const tr = el('tr');
    const t = m.timestamp ? new Date(m.timestamp) : new Date(Number(m.entry_id.split('-')[0]));
    tr.appendChild(td(isNaN(t) ? '' : t.toLocaleTimeString(), 'mono'));
    tr.appendChild(td(m.stream, 'mono'));
    tr.appendChild(td(m.entry_id, 'mono'));
    tr.appendChild(td(m.type || '', 'mono'));
    tr.appendChild(td(preview(m.data !== undefined ? m.data : m.fields), 'payload'));
    return tr;
  }

  // Redis lost data (restarted without persistence...): the stream's ids went
  // back, and later entries come after m.after. Forget the last id seen, or
  // they would be dropped as duplicates.
  function onReset(m) {
    const seq = m.partition === undefined ? m.stream : m.stream + '#' + m.partition;
    if (typeof m.after === 'string' && m.after !== '0-0') lastSeen[seq] = m.after;
    else delete lastSeen[seq];
  }

  function onEntry(m) {
    // Ids are ordered within a stream, or within one partition of one.
    const seq = m.partition === undefined ? m.stream : m.stream + '#' + m.partition;
    const prev = lastSeen[seq];
    if (prev && idCmp(m.entry_id, prev) <= 0) return; // replayed duplicate
    lastSeen[seq] = m.entry_id;
    const s = streams.get(m.stream);
    if (s) s.count++;
    feed.unshift(m);
    if (feed.length > MAX_ROWS) feed.length = MAX_ROWS;
    if (paused) { pausedNew++; updatePauseLabel(); return; }
    if (filter && m.stream !== filter) return;
    const body = $('feed');
    body.insertBefore(entryRow(m), body.firstChild);
    while (body.childElementCount > MAX_ROWS) body.removeChild(body.lastChild);
    $('feed-empty').hidden = true;
    updateCount();
  }

  function renderFeed() {
    const body = $('feed');
    clear(body);
    const frag = document.createDocumentFragment();
    for (const m of feed) if (!filter || m.stream === filter) frag.appendChild(entryRow(m));
    body.appendChild(frag);
    $('feed-empty').hidden = body.childElementCount > 0;
    updateCount();
  }

  function updateCount() {
    $('feed-count').textContent = $('feed').childElementCount + ' shown (max ' + MAX_ROWS + ')';
  }

  function updatePauseLabel() {
    $('pause').textContent = paused ? 'Resume' + (pausedNew ? ' (' + pausedNew + ' new)' : '') : 'Pause';
    $('pause').classList.toggle('active', paused);
  }

  $('pause').addEventListener('click', () => {
    paused = !paused;
    if (!paused) { pausedNew = 0; renderFeed(); }
    updatePauseLabel();
  });
  $('clear').addEventListener('click', () => { feed = []; pausedNew = 0; renderFeed(); });
  $('filter').addEventListener('change', (ev) => { filter = ev.target.value; renderFeed(); });

  // Rates: entries received per second, computed here from the live feed.
  function tickRates() {
    for (const s of streams.values()) {
      push(s.rateHist, s.count);
      const recent = s.rateHist.slice(-5);
      const avg = recent.reduce((a, b) => a + b, 0) / recent.length;
      s.rate.textContent = avg >= 10 ? fmtNum(Math.round(avg)) : avg.toFixed(1);
      s.count = 0;
      drawChart(s.canvas, [{ points: s.rateHist, color: C_A }, { points: s.lenHist, color: C_B }]);
    }
  }

  // ---- start -------------------------------------------------------------------

  async function start() {
    if (started) return;
    const ok = await poll();
    if (!ok) return;
    started = true;
    $('auth').hidden = true;
    setInterval(poll, POLL_MS);
    setInterval(tickRates, 1000);
    pollScale();
    setInterval(pollScale, SCALE_MS);
    pollDlq();
    setInterval(pollDlq, DLQ_MS);
  }

  loadToken();
  pollHealth();
  setInterval(pollHealth, HEALTH_MS);
  start();
})();
