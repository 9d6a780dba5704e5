// gemini-quota-proxy dashboard. Plain JS, no libraries, no inline code (the page's CSP forbids it).
// Every number comes from the authenticated JSON APIs, with the token the viewer signs in with.
(function () {
  'use strict';

  var TOKEN_KEY = 'gqp-dashboard-token';
  var REFRESH_MS = 5000;
  var SLOW_EVERY = 6; // the 24 h and 30 d histories: every 6th refresh (30 s)
  var FETCH_TIMEOUT_MS = 10000;
  var PT = 'America/Los_Angeles';
  var PALETTE = ['#1a62d6', '#d6398f', '#17853f', '#e08a00', '#6c4ce0', '#0e9aa7', '#b3541e', '#5d6b7e', '#8fb31d', '#c3262b'];
  var SVGNS = 'http://www.w3.org/2000/svg';

  var S = {
    token: null,
    role: null,
    gen: 0, // bumped on sign-out: late answers of an old session are dropped
    status: null,
    hour: null,
    day: null,
    month: null,
    skew: 0,
    tick: 0,
    timer: null,
    clock: null,
    inflight: false,
    again: false,
    lastOk: null,
    staleSince: null,
    colors: new Map(),
    pending: null, // the reset the dialog asks about
    opener: null
  };

  // ---------- small helpers ----------

  function $(sel, root) { return (root || document).querySelector(sel); }

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }

  function sv(tag, attrs, children) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }

  function setAttrs(e, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, String(v));
    });
  }

  function append(e, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    });
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  function num(x) { var n = Number(x); return isFinite(n) ? n : 0; }
  function int(x) { return String(Math.round(num(x))); }
  function pad2(n) { return (n < 10 ? '0' : '') + n; }

  function fmtClock(d) { return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds()); }
  function fmtHM(d) { return pad2(d.getHours()) + ':' + pad2(d.getMinutes()); }

  var dateFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  var ptFmt = new Intl.DateTimeFormat('en-US', { timeZone: PT, hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZoneName: 'short' });
  var ptParts = new Intl.DateTimeFormat('en-US', { timeZone: PT, hour: 'numeric', minute: 'numeric', second: 'numeric', hourCycle: 'h23' });
  var groupFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var localZone = (function () {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time'; } catch (e) { return 'local time'; }
  })();

  function fmtPacific(ms) { return ptFmt.format(new Date(ms)); }

  function pacificHMS(ms) {
    var o = { hour: 0, minute: 0, second: 0 };
    ptParts.formatToParts(new Date(ms)).forEach(function (p) {
      if (p.type in o) o[p.type] = Number(p.value) % (p.type === 'hour' ? 24 : 60);
    });
    return o;
  }

  // The start of the current quota day: the last midnight in America/Los_Angeles.
  function pacificDayStart(ms) {
    var p = pacificHMS(ms);
    var start = ms - ((p.hour * 60 + p.minute) * 60 + p.second) * 1000;
    start -= start % 1000;
    // Across a DST change the wall-clock arithmetic is an hour off: correct it.
    var h = pacificHMS(start).hour;
    if (h === 23) start += 3600000;
    else if (h === 1) start -= 3600000;
    return start;
  }

  function nextPacificMidnight(ms) {
    var start = pacificDayStart(ms);
    var next = start + 24 * 3600000;
    var h = pacificHMS(next).hour;
    if (h === 23) next += 3600000;
    else if (h === 1) next -= 3600000;
    return next;
  }

  function fmtDuration(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h >= 24) return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
    if (h > 0) return h + ' h ' + pad2(m) + ' m ' + pad2(sec) + ' s';
    if (m > 0) return m + ' m ' + pad2(sec) + ' s';
    return sec + ' s';
  }

  function fmtShortDuration(ms) {
    var m = Math.max(0, Math.round(ms / 60000));
    var h = Math.floor(m / 60);
    return h > 0 ? h + ' h ' + pad2(m % 60) + ' m' : m + ' m';
  }

  function fmtPct(p) {
    p = num(p);
    return (p >= 10 || p === 0 ? Math.round(p) : p.toFixed(1)) + ' %';
  }

  function fmtUSD(v) {
    v = num(v);
    var a = Math.abs(v);
    if (a === 0) return '$0.00';
    if (a >= 1000) return '$' + groupFmt.format(Math.round(v));
    if (a >= 1) return '$' + v.toFixed(2);
    if (a >= 0.01) return '$' + v.toFixed(3);
    return '$' + v.toFixed(4);
  }

  function fmtCompact(n) {
    n = num(n);
    var a = Math.abs(n);
    if (a >= 1e9) return trim(n / 1e9) + 'G';
    if (a >= 1e6) return trim(n / 1e6) + 'M';
    if (a >= 1e4) return trim(n / 1e3) + 'k';
    if (a >= 10 || n === Math.round(n)) return String(Math.round(n));
    return n.toFixed(a >= 1 ? 1 : 2);
  }
  function trim(x) { return (Math.abs(x) >= 100 ? Math.round(x) : Number(x.toFixed(1))).toString(); }

  function level(p) { p = num(p); return p > 95 ? 'crit' : p >= 80 ? 'warn' : 'ok'; }

  function now() { return Date.now() + S.skew; }

  function colorFor(name) {
    if (!S.colors.has(name)) S.colors.set(name, PALETTE[S.colors.size % PALETTE.length]);
    return S.colors.get(name);
  }

  function groupName(g) {
    if (!g) return '?';
    var k = Object.keys(g)[0];
    return k ? String(g[k]) : 'all';
  }

  function storageGet() { try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; } }
  function storageSet(v) { try { window.sessionStorage.setItem(TOKEN_KEY, v); } catch (e) { /* private mode: kept in memory only */ } }
  function storageDel() { try { window.sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing stored */ } }

  // ---------- API ----------

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }

  function api(path, method, body) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, FETCH_TIMEOUT_MS);
    var headers = { 'x-goog-api-key': S.token || '', 'accept': 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    var status = 0;
    return fetch(path, {
      method: method || 'GET', headers: headers, cache: 'no-store', credentials: 'omit', signal: ctrl.signal,
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (resp) {
      status = resp.status;
      return resp.text();
    }).then(function (text) {
      clearTimeout(timer);
      var data = null;
      try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
      if (status < 200 || status > 299) {
        throw new ApiError(status, data && data.error && data.error.message ? data.error.message : 'HTTP ' + status);
      }
      if (!data) throw new ApiError(status, 'the answer was not JSON');
      return data;
    }).catch(function (e) {
      clearTimeout(timer);
      if (e instanceof ApiError) throw e;
      throw new ApiError(0, e && e.name === 'AbortError' ? 'the proxy did not answer in time' : 'the proxy could not be reached');
    });
  }

  // A usage answer with every page's series: the proxy answers at most 50,000 points at once
  // and says where the next page starts (next_offset). At most 20 pages (the ledger names at
  // most 200 models, 34 a page over 24 h).
  function usageAll(path, acc, pages) {
    var url = acc ? path + '&offset=' + acc.next_offset : path;
    return api(url).then(function (r) {
      if (acc) {
        acc.series = acc.series.concat(Array.isArray(r.series) ? r.series : []);
        acc.next_offset = r.next_offset;
      } else {
        acc = r;
      }
      pages = (pages || 0) + 1;
      return acc.next_offset != null && pages < 20 ? usageAll(path, acc, pages) : acc;
    });
  }

  // ---------- sign-in ----------

  function showSignin(message) {
    $('#app').hidden = true;
    $('#signout').hidden = true;
    $('#signin-panel').hidden = false;
    $('#role').textContent = '';
    $('#role').className = 'role';
    $('#updated').textContent = '';
    $('#stale').textContent = '';
    $('#signin-error').textContent = message || '';
    var input = $('#token');
    input.value = '';
    input.focus();
  }

  function signIn(token, fromStorage) {
    S.token = token;
    var gen = S.gen;
    return api('/api/ai/whoami').then(function (who) {
      if (gen !== S.gen) return;
      storageSet(token);
      S.role = who && who.role === 'admin' ? 'admin' : 'client';
      enterApp();
    }, function (e) {
      if (gen !== S.gen) return;
      S.token = null;
      if (e.status === 401 || e.status === 403) {
        storageDel();
        showSignin(fromStorage
          ? 'The saved token was not accepted any more. Sign in again.'
          : 'This token was not accepted by the proxy. Check it and try again.');
      } else {
        showSignin('Could not sign in: ' + e.message + '.');
      }
    });
  }

  function enterApp() {
    $('#signin-panel').hidden = true;
    $('#signin-error').textContent = '';
    $('#token').value = '';
    $('#app').hidden = false;
    $('#signout').hidden = false;
    var role = $('#role');
    role.textContent = S.role === 'admin' ? 'admin' : 'client';
    role.className = 'role role-' + S.role;
    $('#zone-note').textContent = 'Times in your zone (' + localZone + '); the daily quota resets at midnight Pacific (' + PT + ').';
    var head = $('#keys thead tr');
    var th = $('#keys-actions-th');
    if (S.role === 'admin') {
      setupAdmin();
      if (!th) head.appendChild(el('th', { scope: 'col', id: 'keys-actions-th', text: 'Actions' }));
    } else if (th) {
      th.remove();
    }
    S.tick = 0;
    S.lastOk = null;
    S.staleSince = null;
    refresh(true);
    startClock();
  }

  function signOut(message) {
    S.gen++;
    S.token = null;
    S.role = null;
    S.status = S.hour = S.day = S.month = null;
    S.inflight = false;
    S.again = false;
    clearTimeout(S.timer);
    stopClock();
    storageDel();
    var admin = $('#admin');
    if (admin) admin.remove();
    var dlg = $('#confirm');
    if (dlg) { if (dlg.open) dlg.close(); dlg.remove(); }
    clear($('#keys tbody'));
    if (window.GQPClients) window.GQPClients.reset();
    ['#chart-hour', '#chart-day', '#chart-forecast', '#chart-cost', '#warnings', '#errors'].forEach(function (s) { clear($(s)); });
    document.querySelectorAll('#app .value, #cost-today, #cost-month, #cost-today-list, #cost-month-list, #health-detail, #reset-note').forEach(function (e) { e.textContent = ''; });
    $('#health .health-word').textContent = '…';
    $('#health').className = 'health health-unknown';
    $('#app').classList.remove('is-stale');
    showSignin(message || '');
  }

  // ---------- refresh loop ----------

  function refresh(full) {
    if (!S.token) return;
    if (S.inflight) { S.again = true; return; }
    S.inflight = true;
    clearTimeout(S.timer);
    var gen = S.gen;
    var slow = full || !S.day || !S.month || S.tick % SLOW_EVERY === 0;
    S.tick++;
    var reqs = [api('/api/ai/quota-status/'), usageAll('/api/ai/usage/?window=1h&group_by=model')];
    if (slow) {
      reqs.push(usageAll('/api/ai/usage/?window=24h&group_by=model'));
      reqs.push(usageAll('/api/ai/usage/?window=30d&group_by=model'));
    }
    Promise.all(reqs).then(function (r) {
      if (gen !== S.gen) return;
      S.status = r[0];
      S.hour = r[1];
      if (slow) { S.day = r[2]; S.month = r[3]; }
      var server = Date.parse(r[0].timestamp);
      var skew = isFinite(server) ? server - Date.now() : 0;
      S.skew = Math.abs(skew) > 2500 ? skew : 0;
      S.lastOk = new Date();
      S.staleSince = null;
      render();
    }, function (e) {
      if (gen !== S.gen) return;
      if (e.status === 401 || e.status === 403) {
        signOut('The token was not accepted any more (it may have been changed or removed). Sign in again.');
        return;
      }
      if (!S.staleSince) S.staleSince = S.lastOk || new Date();
      markStale(e.message);
    }).then(function () {
      if (gen !== S.gen) return;
      S.inflight = false;
      if (S.again) { S.again = false; refresh(true); } else schedule();
    });
  }

  function schedule() {
    clearTimeout(S.timer);
    if (!S.token || document.visibilityState !== 'visible') return;
    S.timer = setTimeout(function () { refresh(false); }, REFRESH_MS);
  }

  function markStale(why) {
    var st = $('#stale');
    st.textContent = 'stale since ' + fmtClock(S.staleSince);
    st.title = 'The last refresh failed: ' + why + '. The numbers shown are from ' + fmtClock(S.staleSince) + '; retrying every 5 s.';
    $('#app').classList.add('is-stale');
  }

  function startClock() {
    stopClock();
    tickClock();
    S.clock = setInterval(tickClock, 1000);
  }
  function stopClock() { if (S.clock) clearInterval(S.clock); S.clock = null; }

  // Live countdowns of the holds, and the time to the reset.
  function tickClock() {
    var t = now();
    document.querySelectorAll('[data-until]').forEach(function (e) {
      var until = Number(e.getAttribute('data-until'));
      var left = until - t;
      e.textContent = left > 0 ? fmtDuration(left) + ' left' : 'ended';
    });
    var rn = $('#reset-note');
    if (rn && S.status) {
      var at = resetAt();
      rn.textContent = 'Resets ' + fmtPacific(at) + ' (in ' + fmtShortDuration(at - t) + ')';
    }
  }

  document.addEventListener('visibilitychange', function () {
    if (!S.token) return;
    if (document.visibilityState === 'visible') {
      startClock();
      refresh(false);
    } else {
      clearTimeout(S.timer);
      stopClock();
    }
  });

  // ---------- rendering ----------

  function render() {
    var qs = (S.status && S.status.quota_status) || {};
    $('#app').classList.remove('is-stale');
    $('#stale').textContent = '';
    $('#stale').removeAttribute('title');
    $('#updated').textContent = 'Updated ' + fmtClock(S.lastOk);
    renderHealth(qs);
    renderUsage(qs);
    renderCost(qs);
    renderCacheSaved();
    renderKeys(qs);
    if (window.GQPClients) window.GQPClients.render(qs);
    if (S.role === 'admin') fillAdminSelects(qs);
    renderCharts();
    tickClock();
  }

  /** The pool per model, busiest first (the API sorts it). */
  function poolModels(qs) { return Array.isArray(qs.pool_by_model) ? qs.pool_by_model : []; }

  /** What the meters show: the busiest model's pool. A request spends one model's quota, so a
   *  sum across models (`usage`) is room no request can use; it is shown only before any use,
   *  when it is one generate model's room. */
  function busiestPool(qs) { var m = poolModels(qs); return m.length ? m[0] : (qs.usage || {}); }

  function renderHealth(qs) {
    var u = busiestPool(qs);
    var p = u.usage_percentage || {};
    var of = u.model ? ' of ' + u.model : '';
    var parts = [['requests per minute' + of, num(p.minute)], ['requests per day' + of, num(p.daily)], ['tokens per minute' + of, num(p.tokens)]];
    var worst = parts.reduce(function (a, b) { return b[1] > a[1] ? b : a; });
    var errors = Array.isArray(qs.errors) ? qs.errors : [];
    var warnings = Array.isArray(qs.warnings) ? qs.warnings : [];
    var lv = errors.length > 0 || worst[1] > 95 ? 'crit' : worst[1] >= 80 ? 'warn' : 'ok';
    var h = $('#health');
    h.className = 'health health-' + lv;
    $('.health-word', h).textContent = { ok: 'Healthy', warn: 'Warning', crit: 'Critical' }[lv];
    var detail = 'Busiest pool limit: ' + worst[0] + ' at ' + fmtPct(worst[1]) + '.';
    if (errors.length) detail += ' ' + errors.length + (errors.length === 1 ? ' error.' : ' errors.');
    var firing = (qs.alerts && typeof qs.alerts.firing === 'number') ? qs.alerts.firing : 0;
    if (firing) detail += ' ' + firing + (firing === 1 ? ' alert firing.' : ' alerts firing.');
    $('#health-detail').textContent = detail;
    fillList($('#errors'), errors, $('#errors-none'));
    fillList($('#warnings'), warnings, $('#warnings-none'));
    var st = qs.store || {};
    $('#store').textContent = 'Quota store: ' + (st.backend || '?') + (st.reachable === false ? ', unreachable' : ', reachable') + '.';
    $('#queue').textContent = queueLine(qs.queue);
    $('#live').textContent = liveLine(qs.live_sessions);
    $('#batches').textContent = batchesLine(qs.batches);
    $('#config').textContent = configLine(qs.config);
  }

  /** Which configuration serves: its generation, when and how it was loaded. */
  function configLine(c) {
    if (!c || typeof c.generation !== 'number') return '';
    var how = { start: 'at start', sighup: 'on SIGHUP', api: 'by the reload endpoint', file: 'after the file changed' }[c.source] || c.source;
    var line = 'Configuration: generation ' + c.generation + ', loaded at ' + fmtClock(new Date(c.loaded_at)) + ' (' + how + ').';
    var pending = Array.isArray(c.restart_required) ? c.restart_required : [];
    if (pending.length) line += ' Waiting for a restart: ' + pending.join(', ') + '.';
    return line;
  }

  /** The admission queue in one line: who waits for quota, and for how long the oldest has. */
  function queueLine(q) {
    if (!q) return '';
    if (!(q.max_wait_secs > 0)) return 'Waiting for quota: off (429 at once).';
    var lines = Array.isArray(q.models) ? q.models : [];
    if (!q.waiting) return 'Waiting for quota: none.';
    var oldest = lines.reduce(function (a, l) { return Math.max(a, num(l.oldest_wait_ms)); }, 0);
    var per = lines.slice(0, 3).map(function (l) { return l.model + ' ' + l.length; }).join(', ');
    if (lines.length > 3) per += ', ...';
    return 'Waiting for quota: ' + q.waiting + ' (' + per + '), the oldest for ' + Math.round(oldest / 1000) + ' s.';
  }

  /** Live API sessions open per project against its limit, in one line. */
  function liveLine(projects) {
    if (!Array.isArray(projects) || !projects.length) return '';
    return 'Live API sessions open: ' + projects.map(function (p) {
      return p.project + ' ' + num(p.open) + ' of ' + num(p.limit);
    }).join(', ') + '.';
  }

  /** Open Batch API jobs per project: how many of the limit, and their enqueued tokens by model. */
  function batchesLine(projects) {
    if (!Array.isArray(projects) || !projects.length) return '';
    return 'Batch jobs open: ' + projects.map(function (p) {
      var models = Object.keys(p.enqueued_tokens || {}).map(function (m) {
        return m + ' ' + num(p.enqueued_tokens[m]) + ' tokens';
      });
      return p.project + ' ' + num(p.jobs) + ' of ' + num(p.jobs_limit) +
        (models.length ? ' (' + models.join(', ') + ')' : '');
    }).join('; ') + '.';
  }

  function fillList(ul, items, none) {
    clear(ul);
    items.forEach(function (m) { ul.appendChild(el('li', { text: typeof m === 'string' ? m : JSON.stringify(m) })); });
    none.hidden = items.length > 0;
  }

  function renderUsage(qs) {
    var models = poolModels(qs);
    var u = busiestPool(qs);
    var p = u.usage_percentage || {};
    setMeter('#usage-minute', u.minute_requests, u.minute_limit, p.minute, u.minute_remaining, 'requests');
    setMeter('#usage-daily', u.daily_requests, u.daily_limit, p.daily, u.daily_remaining, 'requests');
    setMeter('#usage-tokens', u.minute_tokens, u.token_minute_limit, p.tokens, u.token_minute_remaining, 'tokens');
    var more = num(qs.pool_models_omitted);
    $('#usage-model').textContent = models.length
      ? 'Busiest model: ' + u.model + (models.length + more > 1 ? ' (of ' + (models.length + more) + ' models used).' : '.')
      : 'No model used yet: the room for one model.';
    var tbody = $('#pool-models tbody');
    clear(tbody);
    $('#pool-models-wrap').hidden = models.length < 2;
    models.forEach(function (m) {
      var mp = m.usage_percentage || {};
      var cell = function (used, limit, pct, label) {
        return el('td', { class: 'num lvl-' + level(pct), 'data-label': label, title: int(used) + ' / ' + int(limit) + ', ' + fmtPct(pct) + ' used', text: fmtCompact(used) + ' / ' + fmtCompact(limit) });
      };
      var tr = el('tr', { 'data-model': m.model });
      tr.appendChild(el('td', { class: 'mono', 'data-label': 'Model', text: m.model }));
      tr.appendChild(cell(m.minute_requests, m.minute_limit, mp.minute, 'Minute'));
      tr.appendChild(cell(m.daily_requests, m.daily_limit, mp.daily, 'Today'));
      tr.appendChild(cell(m.minute_tokens, m.token_minute_limit, mp.tokens, 'Tokens'));
      tbody.appendChild(tr);
    });
    if (more) tbody.appendChild(el('tr', null, el('td', { colspan: 4, class: 'muted', text: '+ ' + more + ' less busy models' })));
  }

  function setMeter(sel, used, limit, pct, remaining, unit) {
    var m = $(sel);
    $('.value', m).textContent = int(used) + ' / ' + int(limit);
    var fill = $('.fill', m);
    var w = Math.max(0, Math.min(100, num(pct)));
    fill.style.width = (w > 0 && w < 1 ? 1 : w) + '%';
    fill.className = 'fill lvl-' + level(pct);
    var bar = $('.bar', m);
    bar.setAttribute('role', 'meter');
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', int(limit));
    bar.setAttribute('aria-valuenow', int(used));
    bar.setAttribute('aria-label', $('.meter-label', m).textContent);
    var left = remaining === undefined || remaining === null ? Math.max(0, num(limit) - num(used)) : num(remaining);
    $('.pct', m).textContent = fmtPct(pct) + ' used · ' + groupFmt.format(left) + ' ' + unit + ' left';
  }

  function resetAt() {
    var pool = qs().forecast && qs().forecast.pool;
    if (Array.isArray(pool)) {
      for (var i = 0; i < pool.length; i++) {
        var t = Date.parse(pool[i].resets_at);
        if (isFinite(t)) return t;
      }
    }
    return nextPacificMidnight(now());
  }

  function qs() { return (S.status && S.status.quota_status) || {}; }

  function renderCost(q) {
    if (!q.cost) {
      // A client key is not shown what the pool spends (every client's usage adds up in it).
      ['#cost-today', '#cost-month', '#cost-today-list', '#cost-month-list'].forEach(function (s) { $(s).textContent = '—'; });
      $('#cost-note').textContent = 'The pool\'s spend is shown to the admin token only.';
      return;
    }
    var c = q.cost || {};
    var today = c.today || {}, month = c.month || {};
    $('#cost-today').textContent = fmtUSD(today.cost_usd);
    $('#cost-month').textContent = fmtUSD(month.cost_usd);
    $('#cost-today-list').textContent = 'at list price ' + fmtUSD(today.list_cost_usd);
    $('#cost-month-list').textContent = 'at list price ' + fmtUSD(month.list_cost_usd);
    var unpriced = num(c.unpriced_requests_today);
    $('#cost-note').textContent = unpriced > 0
      ? unpriced + ' request' + (unpriced === 1 ? '' : 's') + ' today had no configured price and count as $0.'
      : 'At the configured prices; free-tier projects count as $0.';
  }

  // Answers served from the response cache over the last 24 h: no quota spent, nothing billed.
  function renderCacheSaved() {
    var t = (S.day && S.day.totals) || {};
    var hits = num(t.cache_hits);
    $('#cache-saved-usd').textContent = fmtUSD(t.saved_cost_usd);
    $('#cache-saved-detail').textContent = hits > 0
      ? ' (' + fmtCompact(hits) + ' hit' + (hits === 1 ? '' : 's') + ', ' + fmtCompact(num(t.saved_tokens)) + ' tokens)'
      : ' (no cache hits)';
  }

  function renderKeys(q) {
    var tbody = $('#keys tbody');
    var keys = Array.isArray(q.keys) ? q.keys : [];
    var admin = S.role === 'admin';
    // Keep keyboard focus on a key's button across the rebuild.
    var focused = document.activeElement;
    var refocus = focused && tbody.contains(focused) ? focused.getAttribute('data-action') + '|' + focused.getAttribute('data-key-id') : null;
    clear(tbody);
    if (keys.length === 0) {
      tbody.appendChild(el('tr', null, el('td', { colspan: admin ? 7 : 6, class: 'muted', text: 'No keys configured.' })));
      return;
    }
    keys.forEach(function (k) {
      var st = String(k.state || 'active');
      var tr = el('tr', { 'data-key': k.id, class: 'st-' + st });
      tr.appendChild(el('td', { class: 'mono', 'data-label': 'Key', text: k.id }));
      tr.appendChild(el('td', { 'data-label': 'Name', text: k.name || '' }));
      tr.appendChild(el('td', { class: 'mono', 'data-label': 'Project', text: k.project || '' }));
      tr.appendChild(el('td', { class: 'state', text: st }));
      tr.appendChild(holdCell(k, st));
      tr.appendChild(modelsCell(k));
      if (admin) {
        var td = el('td', { 'data-label': 'Actions' });
        if (st === 'disabled') {
          td.appendChild(el('button', { type: 'button', class: 'btn btn-small', 'data-action': 'reenable', 'data-key-id': k.id, text: 'Re-enable' }));
        } else if (st === 'cooldown') {
          td.appendChild(el('button', { type: 'button', class: 'btn btn-small', 'data-action': 'clearhold', 'data-key-id': k.id, text: 'Clear hold' }));
        }
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    });
    if (refocus) {
      var again = Array.prototype.find.call(tbody.querySelectorAll('button[data-action]'), function (b) {
        return b.getAttribute('data-action') + '|' + b.getAttribute('data-key-id') === refocus;
      });
      if (again) again.focus();
    }
  }

  function holdCell(k, st) {
    var td = el('td', { 'data-label': 'Hold' });
    if (st === 'cooldown') {
      var until = Date.parse(k.cooldown_until);
      if (isFinite(until)) {
        td.appendChild(el('span', { class: 'countdown', 'data-until': until, title: 'until ' + fmtClock(new Date(until)) + ' (your time)' }));
        td.appendChild(el('div', { class: 'hold-reason', text: 'until ' + fmtClock(new Date(until)) }));
      }
      var model = k.cooldown_model === '*' ? 'all models' : k.cooldown_model ? k.cooldown_model : null;
      if (model) td.appendChild(el('div', { class: 'hold-reason', text: 'for ' + model }));
    }
    if (k.reason) td.appendChild(el('div', { class: 'hold-reason', text: String(k.reason) }));
    if (!td.firstChild) td.appendChild(el('span', { class: 'muted', text: '—' }));
    return td;
  }

  function modelsCell(k) {
    var td = el('td', { class: 'models-cell', 'data-label': 'Usage' });
    var models = k.models && typeof k.models === 'object' ? k.models : {};
    var names = Object.keys(models).sort(function (a, b) {
      return num(models[b].daily_requests) - num(models[a].daily_requests) || (a < b ? -1 : 1);
    });
    if (names.length === 0) {
      td.appendChild(el('span', { class: 'muted', text: 'no recent usage' }));
      return td;
    }
    var ul = el('ul', { class: 'models' });
    names.forEach(function (n) {
      var m = models[n] || {};
      var p = m.usage_percentage || {};
      ul.appendChild(el('li', null, [
        el('span', { class: 'm-name', text: n }),
        el('span', { class: 'm-stat lvl-' + level(p.minute), title: 'requests this minute', text: 'min ' + int(m.minute_requests) + '/' + int(m.minute_limit) }),
        el('span', { class: 'm-stat lvl-' + level(p.daily), title: 'requests today', text: 'day ' + int(m.daily_requests) + '/' + int(m.daily_limit) }),
        el('span', { class: 'm-stat lvl-' + level(p.tokens), title: 'input tokens this minute', text: 'tok ' + fmtCompact(m.minute_tokens) + '/' + fmtCompact(m.token_minute_limit) })
      ]));
    });
    if (num(k.models_omitted) > 0) ul.appendChild(el('li', { class: 'muted more', text: '+ ' + int(k.models_omitted) + ' more models' }));
    td.appendChild(ul);
    return td;
  }

  // ---------- charts ----------

  var resizeTimer = null;
  window.addEventListener('resize', function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (S.status) renderCharts(); }, 150);
  });

  function renderCharts() {
    renderWindow($('#chart-hour'), S.hour, 60, 60000);
    renderWindow($('#chart-day'), S.day, 1440, 60000);
    renderForecast($('#chart-forecast'));
    renderCostChart($('#chart-cost'));
  }

  // A usage answer as aligned arrays: times and one entry per group.
  function toSeries(resp, n, step) {
    var series = resp && Array.isArray(resp.series) ? resp.series : [];
    var times;
    if (series.length && Array.isArray(series[0].points) && series[0].points.length) {
      times = series[0].points.map(function (p) { return Date.parse(p.t); });
    } else {
      var ts = resp ? Date.parse(resp.timestamp) : NaN;
      var end = (isFinite(ts) ? ts : now());
      end -= end % step;
      times = [];
      for (var i = n - 1; i >= 0; i--) times.push(end - i * step);
    }
    var groups = series.map(function (s) {
      var pts = Array.isArray(s.points) ? s.points : [];
      var name = groupName(s.group);
      var g = { name: name, color: colorFor(name), req: [], tok: [], e429: [], ref: [], cost: [], total: 0 };
      pts.forEach(function (p) {
        g.req.push(num(p.requests));
        g.tok.push(num(p.input_tokens) + num(p.output_tokens) + num(p.thinking_tokens) + num(p.tool_tokens));
        g.e429.push(num(p.upstream_429));
        g.ref.push(num(p.refused));
        g.cost.push(num(p.cost_usd));
        g.total += num(p.requests) + num(p.refused);
      });
      return g;
    });
    groups.sort(function (a, b) { return b.total - a.total || (a.name < b.name ? -1 : 1); });
    return { times: times, groups: groups };
  }

  function renderWindow(box, resp, n, step) {
    clear(box);
    var d = toSeries(resp, n, step);
    var sum = function (key) {
      return d.times.map(function (_, i) {
        return d.groups.reduce(function (a, g) { return a + (g[key][i] || 0); }, 0);
      });
    };
    var m429 = sum('e429'), mref = sum('ref');
    var lines = function (key) { return d.groups.map(function (g) { return { name: g.name, color: g.color, values: g[key] }; }); };
    box.appendChild(chartBlock(box, 'Requests per minute', d.times, lines('req'), { m429: m429, mref: mref, unit: 'requests' }));
    box.appendChild(chartBlock(box, 'Tokens per minute (input + output + thinking + tool)', d.times, lines('tok'), { unit: 'tokens' }));
    var legend = el('div', { class: 'legend' });
    d.groups.forEach(function (g) { legend.appendChild(swatch(g.name, g.color)); });
    var n429 = m429.reduce(function (a, b) { return a + b; }, 0);
    var nref = mref.reduce(function (a, b) { return a + b; }, 0);
    legend.appendChild(el('span', { class: 'mk-429' }, ['▼ Google 429s (' + groupFmt.format(n429) + ')']));
    legend.appendChild(el('span', { class: 'mk-ref' }, ['◆ refused by the proxy (' + groupFmt.format(nref) + ')']));
    box.appendChild(legend);
  }

  function swatch(name, color, square) {
    var i = el('i', square ? { class: 'sq' } : null);
    i.style.background = color;
    return el('span', null, [i, name]);
  }

  // A y scale with round steps: { max, step }.
  function niceScale(v) {
    if (!(v > 0)) return { max: 1, step: 0.25 };
    var raw = v / 4;
    var e = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / e;
    var step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 && e >= 10 ? 2.5 : f <= 5 ? 5 : 10) * e;
    return { max: Math.max(step, Math.ceil(v / step - 1e-9) * step), step: step };
  }

  function yAxis(svg, sc, y, x1, x2, fmt) {
    for (var v = 0; v <= sc.max + sc.step / 1000; v += sc.step) {
      var yy = y(v);
      svg.appendChild(sv('line', { class: v === 0 ? 'axis' : 'grid', x1: x1, x2: x2, y1: yy, y2: yy }));
      svg.appendChild(sv('text', { class: 'tick', x: x1 - 6, y: yy + 4, 'text-anchor': 'end', text: fmt(v) }));
    }
  }

  function timeTicks(t0, t1, width) {
    var steps = [5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map(function (m) { return m * 60000; });
    var span = t1 - t0, maxTicks = Math.max(2, Math.floor(width / 80));
    var step = steps.find(function (s) { return span / s <= maxTicks; }) || steps[steps.length - 1];
    var out = [];
    var off = new Date(t0).getTimezoneOffset() * 60000; // align to local wall-clock steps
    var first = Math.ceil((t0 - off) / step) * step + off;
    for (var t = first; t <= t1; t += step) out.push(t);
    return { ticks: out, daily: step >= 1440 * 60000 };
  }

  function chartWidth(box) {
    var w = box.clientWidth || (box.parentNode && box.parentNode.clientWidth) || 560;
    return Math.max(260, Math.round(w));
  }

  // One line chart: time on x, the series as lines, optional 429/refusal markers along the top.
  function chartBlock(box, title, times, lines, opt) {
    var block = el('div', { class: 'chart-block' });
    block.appendChild(el('div', { class: 'chart-title', text: title }));
    var W = chartWidth(box), H = 170;
    var M = { l: 46, r: 10, t: opt.m429 ? 22 : 8, b: 22 };
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var t0 = times[0], t1 = times[times.length - 1];
    if (!(t1 > t0)) t1 = t0 + 60000;
    var max = 0;
    lines.forEach(function (s) { s.values.forEach(function (v) { if (v > max) max = v; }); });
    var sc = niceScale(max), ymax = sc.max;
    var x = function (t) { return M.l + (t - t0) / (t1 - t0) * pw; };
    var y = function (v) { return M.t + ph - v / ymax * ph; };
    var svg = sv('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': title });
    yAxis(svg, sc, y, M.l, W - M.r, fmtCompact);
    var tt = timeTicks(t0, t1, pw);
    tt.ticks.forEach(function (t) {
      var d = new Date(t);
      svg.appendChild(sv('line', { class: 'grid', x1: x(t), x2: x(t), y1: M.t, y2: M.t + ph }));
      svg.appendChild(sv('text', { class: 'tick', x: x(t), y: H - 6, 'text-anchor': 'middle', text: tt.daily ? dateFmt.format(d) : fmtHM(d) }));
    });
    lines.forEach(function (s) {
      var pts = s.values.map(function (v, i) { return x(times[i]).toFixed(1) + ',' + y(v).toFixed(1); }).join(' ');
      var pl = sv('polyline', { class: 'series', points: pts });
      pl.style.stroke = s.color;
      svg.appendChild(pl);
    });
    if (!lines.length) {
      svg.appendChild(sv('text', { class: 'note', x: M.l + pw / 2, y: M.t + ph / 2, 'text-anchor': 'middle', text: 'No traffic in this window' }));
    }
    if (opt.m429) {
      opt.m429.forEach(function (c, i) {
        if (c > 0) {
          var cx = x(times[i]);
          svg.appendChild(sv('path', { class: 'm429', d: 'M' + (cx - 4) + ',4 L' + (cx + 4) + ',4 L' + cx + ',11 Z' }, sv('title', { text: fmtHM(new Date(times[i])) + ': ' + c + " Google 429" + (c === 1 ? '' : 's') })));
        }
      });
      opt.mref.forEach(function (c, i) {
        if (c > 0) {
          var cx = x(times[i]);
          svg.appendChild(sv('path', { class: 'mref', d: 'M' + cx + ',12 L' + (cx + 4) + ',16 L' + cx + ',20 L' + (cx - 4) + ',16 Z' }, sv('title', { text: fmtHM(new Date(times[i])) + ': ' + c + ' refused by the proxy' })));
        }
      });
    }
    // Hover: a cursor and a readout of that minute.
    var readout = el('div', { class: 'readout' });
    var cursor = sv('line', { class: 'cursor', y1: M.t, y2: M.t + ph, x1: -10, x2: -10 });
    cursor.style.visibility = 'hidden';
    svg.appendChild(cursor);
    var overlay = sv('rect', { x: M.l, y: 0, width: pw, height: H - M.b, fill: 'transparent' });
    svg.appendChild(overlay);
    overlay.addEventListener('mousemove', function (ev) {
      var r = svg.getBoundingClientRect();
      var px = (ev.clientX - r.left) * (W / r.width);
      var t = t0 + (px - M.l) / pw * (t1 - t0);
      var i = Math.max(0, Math.min(times.length - 1, Math.round((t - t0) / (t1 - t0) * (times.length - 1))));
      var cx = x(times[i]);
      cursor.setAttribute('x1', cx);
      cursor.setAttribute('x2', cx);
      cursor.style.visibility = 'visible';
      var parts = [fmtHM(new Date(times[i]))];
      lines.forEach(function (s) { if (s.values[i]) parts.push(s.name + ' ' + groupFmt.format(s.values[i])); });
      if (lines.every(function (s) { return !s.values[i]; })) parts.push('no ' + opt.unit);
      if (opt.m429 && opt.m429[i]) parts.push(opt.m429[i] + ' × 429');
      if (opt.mref && opt.mref[i]) parts.push(opt.mref[i] + ' refused');
      readout.textContent = parts.join(' · ');
    });
    overlay.addEventListener('mouseleave', function () { cursor.style.visibility = 'hidden'; readout.textContent = ''; });
    block.appendChild(svg);
    block.appendChild(readout);
    return block;
  }

  function renderForecast(box) {
    clear(box);
    var q = qs();
    var pool = q.forecast && Array.isArray(q.forecast.pool) ? q.forecast.pool.slice() : [];
    pool.sort(function (a, b) { return num(b.used_today) - num(a.used_today) || (a.model < b.model ? -1 : 1); });
    var t = now();
    if (!pool.length) {
      var reset = resetAt();
      var W = chartWidth(box), H = 120;
      var svg = sv('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'Forecast' });
      svg.appendChild(sv('line', { class: 'axis', x1: 10, x2: W - 10, y1: H - 30, y2: H - 30 }));
      svg.appendChild(sv('text', { class: 'note', x: W / 2, y: H / 2 - 10, 'text-anchor': 'middle', text: 'No requests today yet: nothing to forecast.' }));
      svg.appendChild(sv('text', { class: 'tick', x: W / 2, y: H - 10, 'text-anchor': 'middle', text: 'The daily quota resets at ' + fmtPacific(reset) + ' (in ' + fmtShortDuration(reset - t) + ').' }));
      box.appendChild(svg);
      return;
    }
    var dayData = toSeries(S.day, 1440, 60000);
    var shown = pool.slice(0, 4);
    shown.forEach(function (f) { box.appendChild(forecastBlock(f, dayData, t)); });
    if (pool.length > shown.length) {
      box.appendChild(el('p', { class: 'fc-meta', text: '+ ' + (pool.length - shown.length) + ' more models with a smaller share of today\'s requests.' }));
    }
  }

  function forecastBlock(f, dayData, t) {
    var block = el('div', { class: 'chart-block' });
    var color = colorFor(f.model);
    var reset = Date.parse(f.resets_at);
    if (!isFinite(reset)) reset = nextPacificMidnight(t);
    var start = pacificDayStart(reset - 3600000);
    var limit = num(f.daily_limit), used = num(f.used_today);
    var proj = f.projected_requests === null || f.projected_requests === undefined ? null : num(f.projected_requests);
    var exhausted = f.exhausted_at ? Date.parse(f.exhausted_at) : NaN;
    var title = el('div', { class: 'chart-title' }, [swatch(f.model, color, true), ' · ' + groupFmt.format(used) + ' of ' + groupFmt.format(limit) + ' requests today']);
    block.appendChild(title);

    var W = chartWidth(block.parentNode || $('#chart-forecast')), H = 150;
    var M = { l: 46, r: 12, t: 10, b: 22 };
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var sc = niceScale(Math.max(limit, used, proj || 0, 1) * 1.05), ymax = sc.max;
    var x = function (tt) { return M.l + Math.max(0, Math.min(1, (tt - start) / (reset - start))) * pw; };
    var y = function (v) { return M.t + ph - Math.min(v, ymax) / ymax * ph; };
    var svg = sv('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'Requests today for ' + f.model + ' against the daily limit, with the forecast' });
    yAxis(svg, sc, y, M.l, W - M.r, fmtCompact);
    var tt = timeTicks(start, reset, pw);
    tt.ticks.forEach(function (tk) {
      svg.appendChild(sv('text', { class: 'tick', x: x(tk), y: H - 6, 'text-anchor': 'middle', text: fmtHM(new Date(tk)) }));
    });
    // The daily limit.
    svg.appendChild(sv('line', { class: 'limit', x1: M.l, x2: W - M.r, y1: y(limit), y2: y(limit) }));
    svg.appendChild(sv('text', { class: 'label-limit', x: M.l + 4, y: y(limit) - 4, text: 'daily limit ' + groupFmt.format(limit) }));
    // Today so far: the ledger's minutes, summed.
    var g = dayData.groups.find(function (s) { return s.name === f.model; });
    var pts = [];
    if (g) {
      var cum = 0;
      dayData.times.forEach(function (tm, i) {
        if (tm < start || tm > t) return;
        cum += g.req[i] || 0;
        pts.push(x(tm).toFixed(1) + ',' + y(cum).toFixed(1));
      });
    }
    if (!pts.length) pts.push(x(start).toFixed(1) + ',' + y(0).toFixed(1));
    pts.push(x(t).toFixed(1) + ',' + y(used).toFixed(1));
    var actual = sv('polyline', { class: 'series', points: pts.join(' ') });
    actual.style.stroke = color;
    actual.style.strokeWidth = '2.2';
    svg.appendChild(actual);
    // Now.
    svg.appendChild(sv('line', { class: 'now', x1: x(t), x2: x(t), y1: M.t, y2: M.t + ph }));
    var dot = sv('circle', { cx: x(t), cy: y(used), r: 3.5 });
    dot.style.fill = color;
    svg.appendChild(dot);
    // The forecast to the reset.
    if (proj !== null) {
      var fl = sv('polyline', { class: 'forecast', points: x(t).toFixed(1) + ',' + y(used).toFixed(1) + ' ' + x(reset).toFixed(1) + ',' + y(proj).toFixed(1) });
      fl.style.stroke = color;
      svg.appendChild(fl);
      svg.appendChild(sv('text', { class: 'tick', x: W - M.r, y: Math.max(M.t + 10, y(proj) - 6), 'text-anchor': 'end', text: 'projected ' + groupFmt.format(proj) }));
    } else {
      // Right-aligned to the plot's edge: centred in the span left to the reset, it ran past
      // the edge on a narrow screen.
      svg.appendChild(sv('text', { class: 'note-strong', x: W - M.r - 2, y: M.t + ph / 2, 'text-anchor': 'end', text: 'insufficient data' }));
    }
    if (isFinite(exhausted)) {
      svg.appendChild(sv('line', { class: 'limit', x1: x(exhausted), x2: x(exhausted), y1: M.t, y2: M.t + ph }));
      svg.appendChild(sv('text', { class: 'label-crit', x: x(exhausted) - 4, y: M.t + 12, 'text-anchor': 'end', text: 'runs out ' + fmtPacific(exhausted) }));
    }
    block.appendChild(svg);

    var meta = el('p', { class: 'fc-meta' });
    if (proj !== null) {
      append(meta, ['Projected ', el('strong', { text: groupFmt.format(proj) }), ' requests by the reset at ' + fmtPacific(reset)]);
      if (f.projected_cost_usd !== null && f.projected_cost_usd !== undefined) append(meta, ', about ' + fmtUSD(f.projected_cost_usd));
      append(meta, '.');
      if (isFinite(exhausted)) append(meta, [' ', el('span', { class: 'crit', text: 'The limit runs out at ' + fmtPacific(exhausted) + ' (' + fmtHM(new Date(exhausted)) + ' your time), ' + fmtShortDuration(reset - exhausted) + ' before the reset.' })]);
      if (f.method) append(meta, ' Method: ' + f.method + '.');
    } else {
      append(meta, ['Forecast: ', el('strong', { text: f.reason || 'insufficient data' }), ' (it needs 10 minutes of history). Resets at ' + fmtPacific(reset) + '.']);
    }
    block.appendChild(meta);
    return block;
  }

  function renderCostChart(box) {
    clear(box);
    var d = toSeries(S.month, 720, 3600000);
    var dayStart = pacificDayStart(now());
    // Days in the viewer's zone, oldest first.
    var days = [], index = new Map();
    d.times.forEach(function (t) {
      var dt = new Date(t);
      var k = dt.getFullYear() + '-' + dt.getMonth() + '-' + dt.getDate();
      if (!index.has(k)) { index.set(k, days.length); days.push({ t: new Date(dt.getFullYear(), dt.getMonth(), dt.getDate()).getTime(), label: dateFmt.format(dt) }); }
    });
    var rows = d.groups.map(function (g) {
      var perDay = days.map(function () { return 0; });
      var total = 0, today = 0;
      g.cost.forEach(function (c, i) {
        if (!c) return;
        var dt = new Date(d.times[i]);
        perDay[index.get(dt.getFullYear() + '-' + dt.getMonth() + '-' + dt.getDate())] += c;
        total += c;
        if (d.times[i] >= dayStart) today += c;
      });
      return { name: g.name, color: g.color, perDay: perDay, total: total, today: today };
    }).filter(function (r) { return r.total > 0; });
    rows.sort(function (a, b) { return b.total - a.total; });

    var W = chartWidth(box), H = 170;
    var M = { l: 52, r: 10, t: 10, b: 22 };
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var dayTotals = days.map(function (_, i) { return rows.reduce(function (a, r) { return a + r.perDay[i]; }, 0); });
    var sc = niceScale(Math.max.apply(null, dayTotals.concat([0]))), ymax = sc.max;
    var y = function (v) { return M.t + ph - v / ymax * ph; };
    var bw = pw / Math.max(1, days.length);
    var svg = sv('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'Cost per day by model, last 30 days' });
    var dec = 0;
    while (dec < 6 && Math.abs(Number(sc.step.toFixed(dec)) - sc.step) > 1e-12) dec++;
    if (sc.step < 1) dec = Math.max(2, dec);
    yAxis(svg, sc, y, M.l, W - M.r, function (v) { return rows.length ? '$' + v.toFixed(dec) : ''; });
    var every = Math.max(1, Math.ceil(days.length / Math.max(2, Math.floor(pw / 60))));
    days.forEach(function (day, di) {
      var x0 = M.l + di * bw;
      var acc = 0;
      rows.forEach(function (r) {
        var c = r.perDay[di];
        if (!c) return;
        var rect = sv('rect', { x: (x0 + bw * 0.15).toFixed(1), width: Math.max(1, bw * 0.7).toFixed(1), y: y(acc + c).toFixed(1), height: Math.max(0.5, y(acc) - y(acc + c)).toFixed(1) },
          sv('title', { text: day.label + ' · ' + r.name + ': ' + fmtUSD(c) }));
        rect.style.fill = r.color;
        svg.appendChild(rect);
        acc += c;
      });
      if ((days.length - 1 - di) % every === 0) {
        svg.appendChild(sv('text', { class: 'tick', x: x0 + bw / 2, y: H - 6, 'text-anchor': 'middle', text: day.label }));
      }
    });
    if (!rows.length) {
      svg.appendChild(sv('text', { class: 'note', x: M.l + pw / 2, y: M.t + ph / 2, 'text-anchor': 'middle', text: 'No cost recorded in the last 30 days' }));
    }
    box.appendChild(el('div', { class: 'chart-title', text: 'Cost per day (your days), by model' }));
    box.appendChild(svg);

    var table = el('table', { class: 'cost-table' });
    table.appendChild(el('thead', null, el('tr', null, [
      el('th', { scope: 'col', text: 'Model' }), el('th', { scope: 'col', class: 'num', text: 'Today' }), el('th', { scope: 'col', class: 'num', text: '30 days' })
    ])));
    var tb = el('tbody');
    var tToday = 0, tTotal = 0;
    rows.forEach(function (r) {
      var sw = el('i');
      sw.style.background = r.color;
      tb.appendChild(el('tr', null, [el('td', null, [sw, r.name]), el('td', { class: 'num', text: fmtUSD(r.today) }), el('td', { class: 'num', text: fmtUSD(r.total) })]));
      tToday += r.today;
      tTotal += r.total;
    });
    if (rows.length > 1 || !rows.length) {
      tb.appendChild(el('tr', null, [el('td', null, el('strong', { text: rows.length ? 'All models' : 'No priced usage yet' })), el('td', { class: 'num', text: fmtUSD(tToday) }), el('td', { class: 'num', text: fmtUSD(tTotal) })]));
    }
    table.appendChild(tb);
    box.appendChild(table);
  }

  // ---------- admin ----------

  var RESET_TEXT = {
    minute: 'the minute window (requests and input tokens counted in the last 60 seconds)',
    tokens: 'the input tokens counted in the last 60 seconds (request counts stay)',
    daily: "today's request counts (the daily quota)",
    all: "the minute window and today's request counts",
    cooldowns: 'the cooldown holds'
  };

  function setupAdmin() {
    if ($('#admin')) return;
    var frag = $('#admin-tpl').content.cloneNode(true);
    var section = frag.querySelector('#admin');
    var dialog = frag.querySelector('#confirm');
    $('#admin-slot').appendChild(section);
    document.body.appendChild(dialog);
    section.addEventListener('click', function (ev) {
      var b = ev.target.closest('button[data-reset]');
      if (!b) return;
      askReset(b.getAttribute('data-reset'), $('#reset-key').value || null, $('#reset-model').value || null, b);
    });
    $('#confirm-no').addEventListener('click', function () { dialog.close(); });
    $('#confirm-yes').addEventListener('click', doReset);
    dialog.addEventListener('close', function () {
      S.pending = null;
      if (S.opener && document.contains(S.opener)) S.opener.focus();
      S.opener = null;
    });
  }

  $('#keys').addEventListener('click', function (ev) {
    var b = ev.target.closest('button[data-action]');
    if (!b || S.role !== 'admin') return;
    askReset('cooldowns', b.getAttribute('data-key-id'), null, b);
  });

  function keyLabel(id) {
    var k = (qs().keys || []).find(function (x) { return x.id === id; });
    return k ? id + (k.name ? ' (' + k.name + ', project ' + k.project + ')' : '') : id;
  }

  function askReset(type, key, model, opener) {
    var dialog = $('#confirm');
    if (!dialog || !RESET_TEXT[type]) return;
    S.pending = { quota_type: type, key: key, model: model };
    S.opener = opener || null;
    var what = RESET_TEXT[type];
    var text;
    if (type === 'cooldowns' && key) {
      text = 'This clears the holds on the project of key ' + keyLabel(key) + (model ? ' for model ' + model : '') +
        ' and re-enables the key if it is disabled. The proxy sends requests through it again at once; if Google still rejects the key, it is disabled again.';
    } else if (type === 'cooldowns') {
      text = 'This clears every cooldown hold' + (model ? ' for model ' + model : '') + ' and re-enables every disabled key. The proxy sends requests through them again at once.';
    } else {
      var scope = key ? ' for the project of key ' + keyLabel(key) : ' for every project';
      scope += model ? ', model ' + model + ' only' : ', all models';
      text = 'This clears ' + what + scope + '. The proxy admits requests against the freed quota at once; Google\'s own counters are not changed.';
    }
    $('#confirm-text').textContent = text;
    var k = key && (qs().keys || []).find(function (x) { return x.id === key; });
    var disabled = k && k.state === 'disabled';
    $('#confirm-title').textContent = type !== 'cooldowns' ? 'Reset the ' + type + ' quota?'
      : !key ? 'Clear every hold?' : disabled ? 'Re-enable key ' + key + '?' : 'Clear the holds of key ' + key + '?';
    var yes = $('#confirm-yes');
    yes.textContent = type !== 'cooldowns' ? 'Reset ' + type : !key ? 'Clear holds' : disabled ? 'Re-enable' : 'Clear holds';
    yes.disabled = false;
    dialog.showModal();
    $('#confirm-no').focus();
  }

  function doReset() {
    var p = S.pending;
    var dialog = $('#confirm');
    if (!p || !dialog) return;
    var body = { quota_type: p.quota_type };
    if (p.key) body.key = p.key;
    if (p.model) body.model = p.model;
    var yes = $('#confirm-yes');
    yes.disabled = true;
    var gen = S.gen;
    var out = $('#admin-result');
    api('/api/ai/quota-status/', 'POST', body).then(function () {
      if (gen !== S.gen) return;
      out.className = 'small ok';
      out.textContent = 'Done at ' + fmtClock(new Date()) + ': ' + (p.quota_type === 'cooldowns' ? 'holds cleared' : p.quota_type + ' reset') +
        (p.key ? ' for key ' + p.key : ' for every key') + (p.model ? ', model ' + p.model : '') + '.';
      dialog.close();
      refresh(true);
    }, function (e) {
      if (gen !== S.gen) return;
      out.className = 'small err';
      out.textContent = 'The reset failed: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '') + '.';
      dialog.close();
    });
  }

  function fillAdminSelects(q) {
    var ks = $('#reset-key'), ms = $('#reset-model');
    if (!ks || !ms) return;
    var keys = (Array.isArray(q.keys) ? q.keys : []).map(function (k) {
      return [k.id, k.id + (k.name ? ' · ' + k.name : '') + (k.state && k.state !== 'active' ? ' (' + k.state + ')' : '')];
    });
    var models = new Set();
    (q.keys || []).forEach(function (k) { Object.keys(k.models || {}).forEach(function (m) { models.add(m); }); });
    var fc = q.forecast || {};
    (fc.pool || []).concat(fc.pairs || []).forEach(function (f) { if (f.model) models.add(f.model); });
    fillSelect(ks, keys, 'All keys');
    fillSelect(ms, Array.from(models).sort().map(function (m) { return [m, m]; }), 'All models');
  }

  function fillSelect(sel, items, allLabel) {
    var sig = JSON.stringify(items);
    if (sel.getAttribute('data-sig') === sig) return;
    var keep = sel.value;
    clear(sel);
    sel.appendChild(el('option', { value: '', text: allLabel }));
    items.forEach(function (it) { sel.appendChild(el('option', { value: it[0], text: it[1] })); });
    sel.value = items.some(function (it) { return it[0] === keep; }) ? keep : '';
    sel.setAttribute('data-sig', sig);
  }

  // What clients.js (the clients table) uses of this file.
  window.GQP = {
    api: api, el: el, clear: clear, num: num, int: int, fmtUSD: fmtUSD, fmtCompact: fmtCompact, level: level,
    role: function () { return S.role; },
    signedIn: function () { return !!S.token; },
    refresh: function () { refresh(true); }
  };

  // ---------- start ----------

  $('#signin').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var input = $('#token');
    var token = input.value.trim();
    var err = $('#signin-error');
    if (!token) { err.textContent = 'Enter a client key or the admin token.'; input.focus(); return; }
    err.textContent = '';
    var btn = $('#signin button[type=submit]');
    btn.disabled = true;
    signIn(token, false).then(function () { btn.disabled = false; });
  });

  $('#signout').addEventListener('click', function () { signOut(''); });

  var saved = storageGet();
  if (saved) {
    $('#signin-panel').hidden = true;
    signIn(saved, true);
  } else {
    $('#token').focus();
  }
})();
