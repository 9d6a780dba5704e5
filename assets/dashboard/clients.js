// gemini-quota-proxy dashboard: the clients table (each client's usage today, its budget and
// limits, its refusals) and, for the admin, creating, rotating and revoking runtime clients.
// A new key is shown once, in the key box, with a copy button. Uses app.js's helpers (window.GQP).
(function () {
  'use strict';

  var REVOKE_ARM_MS = 5000;
  var C = { armed: null, armedUntil: 0, rows: [] };

  function G() { return window.GQP; }
  function $(sel) { return document.querySelector(sel); }

  function limitsText(l) {
    if (!l) return '';
    var parts = [];
    ['rpm', 'tpm', 'rpd', 'max_concurrent'].forEach(function (k) { if (l[k] != null) parts.push(k + ' ' + G().fmtCompact(l[k])); });
    if (l.monthly_budget_usd != null) parts.push('month ' + G().fmtUSD(l.monthly_budget_usd));
    if (Array.isArray(l.models)) parts.push('models ' + l.models.join(', '));
    if (l.weight != null) parts.push('weight ' + l.weight);
    if (l.max_wait_secs != null) parts.push('wait ≤ ' + l.max_wait_secs + ' s');
    if (l.timezone) parts.push(l.timezone);
    return parts.length ? parts.join(' · ') : 'none';
  }

  function budgetCell(r) {
    var el = G().el;
    var td = el('td', { class: 'budget', 'data-label': 'Budget' });
    var l = r.limits || {};
    // The spend the budget enforces (list price, in-flight estimates included), not the billed
    // cost: a free-tier project bills nothing while the client's budget still runs down.
    var spent = r.budget_used_usd || {};
    var lines = [['daily_budget_usd', spent.daily, 'today'], ['monthly_budget_usd', spent.monthly, 'month']];
    lines.forEach(function (x) {
      var budget = l[x[0]];
      if (budget == null) return;
      var used = x[1] != null ? G().num(x[1]) : 0;
      var pct = budget > 0 ? Math.min(100, used / budget * 100) : 0;
      var fill = el('div', { class: 'fill lvl-' + G().level(pct) });
      fill.style.width = pct.toFixed(1) + '%';
      td.appendChild(el('div', { class: 'small', text: G().fmtUSD(used) + ' of ' + G().fmtUSD(budget) + ' ' + x[2] }));
      td.appendChild(el('div', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(pct), 'aria-label': x[2] + ' budget used' }, fill));
    });
    if (!td.firstChild) td.appendChild(el('span', { class: 'muted', text: '—' }));
    return td;
  }

  function render(qs) {
    var g = G();
    if (!g) return;
    var rows = Array.isArray(qs.clients) ? qs.clients : [];
    C.rows = rows;
    var admin = g.role() === 'admin';
    $('#clients-card').hidden = !rows.length && !admin;
    $('#client-create').hidden = !admin;
    var head = $('#clients thead tr');
    var th = $('#clients-actions-th');
    if (admin && !th) head.appendChild(g.el('th', { scope: 'col', id: 'clients-actions-th', text: 'Actions' }));
    if (!admin && th) th.remove();
    var tbody = $('#clients tbody');
    g.clear(tbody);
    if (!rows.length) {
      tbody.appendChild(g.el('tr', null, g.el('td', { colspan: admin ? 8 : 7, class: 'muted', text: 'No clients yet.' })));
      return;
    }
    if (C.armed && Date.now() > C.armedUntil) C.armed = null;
    rows.forEach(function (r) {
      var el = g.el;
      var t = r.today || {};
      var tr = el('tr', { 'data-client': r.name });
      tr.appendChild(el('td', { 'data-label': 'Client' }, [el('strong', { text: r.name }), el('span', { class: 'origin', text: r.origin })]));
      tr.appendChild(el('td', { class: 'num', 'data-label': 'Requests', text: g.int(t.requests) }));
      tr.appendChild(el('td', { class: 'num', 'data-label': 'Tokens', title: String(g.num(t.tokens)), text: g.fmtCompact(t.tokens) }));
      tr.appendChild(el('td', { class: 'num', 'data-label': 'Cost', text: g.fmtUSD(t.cost_usd) }));
      tr.appendChild(budgetCell(r));
      tr.appendChild(el('td', { class: 'limits', 'data-label': 'Limits', text: limitsText(r.limits) }));
      var refused = el('td', { class: 'num refused', 'data-label': 'Refused', text: g.int(r.refused) });
      if (r.refused_limit) refused.title = 'last by ' + r.refused_limit + (r.limited_secs != null ? ', refused for ' + r.limited_secs + ' s now' : '');
      tr.appendChild(refused);
      if (admin) {
        var td = el('td', { class: 'actions', 'data-label': 'Actions' });
        if (r.origin === 'runtime') {
          td.appendChild(el('button', { type: 'button', class: 'btn btn-small', 'data-client-action': 'rotate', 'data-client-name': r.name, text: 'Rotate key' }));
          var armed = C.armed === r.name;
          td.appendChild(el('button', { type: 'button', class: 'btn btn-small' + (armed ? ' btn-danger' : ''), 'data-client-action': 'revoke', 'data-client-name': r.name, text: armed ? 'Confirm revoke' : 'Revoke' }));
        } else {
          td.appendChild(el('span', { class: 'muted small', text: 'in the config' }));
        }
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    });
  }

  function say(text, ok) {
    var out = $('#client-result');
    out.className = 'small ' + (ok ? 'ok' : 'err');
    out.textContent = text;
  }

  function showKey(name, key) {
    $('#client-key-name').textContent = name;
    $('#client-new-key').textContent = key;
    $('#client-copy').textContent = 'Copy';
    $('#client-key-box').hidden = false;
  }

  function hideKey() {
    $('#client-new-key').textContent = '';
    $('#client-key-name').textContent = '';
    $('#client-key-box').hidden = true;
  }

  function reset() {
    hideKey();
    C.armed = null;
    C.rows = [];
    $('#client-result').textContent = '';
    G() && G().clear($('#clients tbody'));
    $('#clients-card').hidden = true;
  }

  function fail(what) {
    return function (e) { say(what + ' failed: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '') + '.', false); };
  }

  $('#client-create').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var g = G();
    if (!g || g.role() !== 'admin') return;
    var body = { name: $('#client-name').value.trim() };
    [['#client-rpm', 'rpm', true], ['#client-daily', 'daily_budget_usd', false], ['#client-monthly', 'monthly_budget_usd', false]].forEach(function (f) {
      var v = $(f[0]).value.trim();
      if (v !== '') body[f[1]] = f[2] ? parseInt(v, 10) : Number(v);
    });
    var btn = $('#client-create button[type=submit]');
    btn.disabled = true;
    g.api('/api/ai/clients', 'POST', body).then(function (r) {
      btn.disabled = false;
      $('#client-create').reset();
      showKey(r.name, r.key);
      say('Client ' + r.name + ' created.', true);
      g.refresh();
    }, function (e) { btn.disabled = false; fail('Creating the client')(e); });
  });

  $('#clients').addEventListener('click', function (ev) {
    var b = ev.target.closest('button[data-client-action]');
    var g = G();
    if (!b || !g || g.role() !== 'admin') return;
    var name = b.getAttribute('data-client-name');
    var action = b.getAttribute('data-client-action');
    var path = '/api/ai/clients/' + encodeURIComponent(name);
    if (action === 'rotate') {
      b.disabled = true;
      g.api(path + '/rotate', 'POST', {}).then(function (r) {
        showKey(r.name, r.key);
        say('Key of ' + r.name + ' rotated: the old key works for ' + Math.round(r.old_key_valid_for_secs / 60) + ' more minutes.', true);
        g.refresh();
      }, fail('Rotating the key'));
    } else if (action === 'revoke') {
      if (C.armed !== name || Date.now() > C.armedUntil) {
        // First click arms the button; a second within a few seconds revokes.
        C.armed = name;
        C.armedUntil = Date.now() + REVOKE_ARM_MS;
        b.classList.add('btn-danger');
        b.textContent = 'Confirm revoke';
        return;
      }
      C.armed = null;
      b.disabled = true;
      g.api(path, 'DELETE').then(function () {
        say('Client ' + name + ' revoked: its keys no longer work.', true);
        g.refresh();
      }, fail('Revoking the client'));
    }
  });

  $('#client-copy').addEventListener('click', function () {
    var key = $('#client-new-key').textContent;
    var done = function () { $('#client-copy').textContent = 'Copied'; };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(key).then(done, function () { selectKey(); });
    } else {
      selectKey();
    }
  });

  function selectKey() {
    var range = document.createRange();
    range.selectNodeContents($('#client-new-key'));
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $('#client-copy').textContent = 'Selected: press Ctrl+C';
  }

  $('#client-key-done').addEventListener('click', hideKey);

  window.GQPClients = { render: render, reset: reset };
})();
