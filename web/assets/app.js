// Voltshare dashboard. Plain JS, no libraries, no external requests; every
// chart is SVG drawn here.
//
// Pages are hash routes (#/overview, #/market, #/settlements,
// #/interval/<start>, #/household, #/devices, #/admin, #/login) of this one
// document, so the live stream keeps running while the user moves around.
// Data (same origin only):
//   /api/stream         server-sent `live` events: {live, summary, book_stale}
//   /api/live + /api/summary   polled instead when the stream fails
//   everything else     fetched when its page is shown, then every few seconds
// Money arrives as integer micro-units and is divided by 1e6 for display
// only. Grid power: + import from the grid, - export to it.
(function () {
  'use strict';

  var POLL_MS = 2000;          // live polling period when the stream is down
  var PAGE_MS = 5000;          // refresh period of the visible page's data
  var STREAM_STALL_MS = 5000;  // no event for this long: fall back to polling
  var STREAM_RETRY_MS = 30000; // try the stream again after falling back
  var CHART_INTERVALS = 96;    // one day of 15-minute intervals
  var TABLE_ROWS = 24;

  var state = {
    currency: 'EUR',
    me: null,
    summary: null,
    summaryAt: 0,
    intervals: [],
    book: null,
    bills: null,
    page: 'overview',
    arg: null,
    mode: 'wait',
    stream: null,
    streamErrors: 0,
    lastEventAt: 0,
    pollTimer: null,
    retryTimer: null,
    pageTimer: null
  };

  function $(id) { return document.getElementById(id); }

  // ---- formatting ---------------------------------------------------------

  var moneyFmtCache = {};
  function moneyFormat(minFrac, maxFrac) {
    var key = state.currency + ':' + minFrac + ':' + maxFrac;
    if (!moneyFmtCache[key]) {
      try {
        moneyFmtCache[key] = new Intl.NumberFormat(undefined, {
          style: 'currency', currency: state.currency,
          minimumFractionDigits: minFrac, maximumFractionDigits: maxFrac
        });
      } catch (e) {
        var nf = new Intl.NumberFormat(undefined, { minimumFractionDigits: minFrac, maximumFractionDigits: maxFrac });
        var code = state.currency;
        moneyFmtCache[key] = { format: function (v) { return nf.format(v) + ' ' + code; } };
      }
    }
    return moneyFmtCache[key];
  }
  function fmtPrice(micros) {
    if (micros === null || micros === undefined) return '–';
    return moneyFormat(4, 4).format(micros / 1e6);
  }
  function fmtPriceShort(micros) { return moneyFormat(2, 3).format(micros / 1e6); }
  function fmtMoney(micros) {
    if (micros === null || micros === undefined) return '–';
    return moneyFormat(2, 2).format(micros / 1e6);
  }
  var numFmt2 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var intFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  function fmtPower(w) {
    var a = Math.abs(w);
    return a >= 1000 ? numFmt2.format(a / 1000) + ' kW' : intFmt.format(a) + ' W';
  }
  function fmtSignedPower(w) {
    if (w === 0) return '0 W';
    return (w > 0 ? '+' : '\u2212') + fmtPower(w);
  }
  function fmtEnergy(wh) {
    return Math.abs(wh) >= 1000 ? numFmt2.format(wh / 1000) + ' kWh' : intFmt.format(wh) + ' Wh';
  }
  var dateTimeFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  var timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  var timeSecFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  function fmtDateTime(ms) { return dateTimeFmt.format(new Date(ms)); }
  function fmtTime(ms) { return timeFmt.format(new Date(ms)); }
  function fmtTimeSec(ms) { return timeSecFmt.format(new Date(ms)); }
  function fmtCount(n) { return intFmt.format(n); }
  function fmtAge(ms) {
    if (ms === null || ms === undefined) return 'never';
    var s = Math.round(ms / 1000);
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    return Math.round(s / 3600) + ' h ago';
  }
  function shortHash(h) {
    if (!h) return '–';
    var s = h.indexOf('0x') === 0 ? h.slice(2) : h;
    return s.length > 12 ? s.slice(0, 12) + '…' : s;
  }

  // ---- DOM helpers --------------------------------------------------------

  // Text always goes through textContent: no HTML injection from data.
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function setText(id, text) {
    var e = $(id);
    if (e && e.textContent !== text) e.textContent = text;
  }
  function fillBody(tableId, rows, emptyText, cols) {
    var tbody = $(tableId).tBodies[0];
    var frag = document.createDocumentFragment();
    if (rows.length === 0) {
      var tr = el('tr', 'empty');
      var td = el('td', null, emptyText);
      td.colSpan = cols;
      tr.appendChild(td);
      frag.appendChild(tr);
    } else {
      rows.forEach(function (r) { frag.appendChild(r); });
    }
    tbody.replaceChildren(frag);
  }
  function row(cells) {
    var tr = el('tr');
    cells.forEach(function (c) {
      if (c instanceof Node) tr.appendChild(c); else tr.appendChild(el('td', c[0], c[1]));
    });
    return tr;
  }
  function showError(msg) {
    var b = $('error-banner');
    if (msg) { b.textContent = msg; b.hidden = false; } else { b.hidden = true; b.textContent = ''; }
  }
  function setMode(mode) {
    state.mode = mode;
    var b = $('conn-status');
    b.textContent = { live: 'live', poll: 'polling', wait: 'connecting…', off: 'offline' }[mode];
    b.className = 'badge badge-' + mode;
  }

  // ---- data ---------------------------------------------------------------

  function csrfToken() {
    var m = document.cookie.match(/(?:^|;\s*)vs_csrf=([0-9a-f]+)/);
    return m ? m[1] : (state.me ? state.me.csrf_token : '');
  }

  function request(method, path, body) {
    var opts = { method: method, headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin' };
    if (method !== 'GET') {
      opts.headers['X-CSRF-Token'] = csrfToken();
      if (body !== undefined) {
        opts.headers['Content-Type'] = 'application/json';
        opts.body = JSON.stringify(body);
      }
    }
    return fetch(path, opts).then(function (r) {
      if (r.status === 204) return null;
      return r.json().catch(function () { return null; }).then(function (data) {
        if (!r.ok) {
          var err = new Error(data && data.error && data.error.message ? data.error.message : ('HTTP ' + r.status));
          err.status = r.status;
          throw err;
        }
        return data;
      });
    });
  }
  function getJson(path) { return request('GET', path); }

  // ---- SVG charts ---------------------------------------------------------

  var SVG_NS = 'http://www.w3.org/2000/svg';
  function svgEl(tag, attrs, text) {
    var e = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // Prepares an SVG for drawing at its real pixel size; returns the frame.
  function chartFrame(svg, narrowLeft) {
    var W = Math.max(Math.round(svg.clientWidth || 640), 200);
    var H = Math.max(Math.round(svg.clientHeight || 200), 120);
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    var narrow = W < 420;
    var m = { l: narrow ? (narrowLeft || 48) : 66, r: 14, t: 12, b: 24 };
    return { W: W, H: H, m: m, iw: W - m.l - m.r, ih: H - m.t - m.b, narrow: narrow };
  }
  function chartStart(svg) {
    var frag = document.createDocumentFragment();
    var title = svg.querySelector('title');
    if (title) frag.appendChild(title);
    return frag;
  }
  function emptyChart(svg, text) {
    var f = chartFrame(svg);
    var frag = chartStart(svg);
    frag.appendChild(svgEl('text', { x: f.W / 2, y: f.H / 2, 'text-anchor': 'middle', 'class': 'chart-empty' }, text));
    svg.replaceChildren(frag);
    svg.setAttribute('data-points', '0');
  }
  function axes(frag, f, yTop, yBottom) {
    frag.appendChild(svgEl('line', { x1: f.m.l, y1: f.m.t + f.ih, x2: f.W - f.m.r, y2: f.m.t + f.ih, 'class': 'axis' }));
    frag.appendChild(svgEl('line', { x1: f.m.l, y1: f.m.t, x2: f.W - f.m.r, y2: f.m.t, 'class': 'axis grid' }));
    frag.appendChild(svgEl('text', { x: f.m.l - 4, y: f.m.t + 10, 'text-anchor': 'end', 'class': 'axis-text' }, yTop));
    frag.appendChild(svgEl('text', { x: f.m.l - 4, y: f.m.t + f.ih, 'text-anchor': 'end', 'class': 'axis-text' }, yBottom));
  }
  function timeLabels(frag, f, points, x) {
    if (points.length === 0) return;
    var idx = f.narrow ? [0, points.length - 1] : [0, Math.floor((points.length - 1) / 2), points.length - 1];
    idx.filter(function (v, i, a) { return a.indexOf(v) === i; }).forEach(function (i, k, arr) {
      var anchor = arr.length === 1 ? 'middle' : (k === 0 ? 'start' : (k === arr.length - 1 ? 'end' : 'middle'));
      frag.appendChild(svgEl('text', { x: x(i), y: f.H - 6, 'text-anchor': anchor, 'class': 'axis-text' }, fmtTime(points[i].interval_start)));
    });
  }

  // Price history: a line with gaps where an interval had no trades.
  function renderPriceChart(points) {
    var svg = $('price-chart');
    var priced = points.filter(function (p) { return p.clearing_price !== null; });
    if (priced.length === 0) { emptyChart(svg, 'No trades yet'); return; }
    var f = chartFrame(svg);
    var frag = chartStart(svg);
    var max = 0, min = Infinity;
    priced.forEach(function (p) { max = Math.max(max, p.clearing_price); min = Math.min(min, p.clearing_price); });
    // Pad the range (at least 5 % of the price) so that a flat price sits
    // mid-chart with two distinct axis labels.
    var pad = Math.max((max - min) * 0.1, max * 0.05, 1);
    var lo = Math.max(0, min - pad), hi = max + pad;
    var step = f.iw / Math.max(points.length, 1);
    function x(i) { return f.m.l + step * i + step / 2; }
    function y(v) { return f.m.t + f.ih - ((v - lo) / (hi - lo)) * f.ih; }
    axes(frag, f, fmtPriceShort(hi), fmtPriceShort(lo));
    var d = '', pen = false;
    points.forEach(function (p, i) {
      if (p.clearing_price === null) { pen = false; return; }
      d += (pen ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(p.clearing_price).toFixed(1) + ' ';
      pen = true;
    });
    frag.appendChild(svgEl('path', { d: d.trim(), 'class': 'price-line' }));
    points.forEach(function (p, i) {
      if (p.clearing_price === null) return;
      var c = svgEl('circle', { cx: x(i), cy: y(p.clearing_price), r: points.length <= 48 ? 2.5 : 1.5, 'class': 'price-dot' });
      c.appendChild(svgEl('title', {}, fmtDateTime(p.interval_start) + ': ' + fmtPrice(p.clearing_price) + '/kWh'));
      frag.appendChild(c);
    });
    timeLabels(frag, f, points, x);
    svg.replaceChildren(frag);
    svg.setAttribute('data-points', String(priced.length));
  }

  function renderVolumeChart(points) {
    var svg = $('volume-chart');
    if (points.length === 0) { emptyChart(svg, 'No cleared intervals yet'); return; }
    var f = chartFrame(svg);
    var frag = chartStart(svg);
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p.volume_wh); });
    var step = f.iw / points.length, barW = Math.max(1, step * 0.7);
    function x(i) { return f.m.l + step * i + step / 2; }
    axes(frag, f, fmtEnergy(max), '0');
    points.forEach(function (p, i) {
      var h = (p.volume_wh / max) * f.ih;
      var bar = svgEl('rect', { x: x(i) - barW / 2, y: f.m.t + f.ih - h, width: barW, height: Math.max(0, h), 'class': 'volume-bar' });
      bar.appendChild(svgEl('title', {}, fmtDateTime(p.interval_start) + ': ' + fmtEnergy(p.volume_wh)));
      frag.appendChild(bar);
    });
    timeLabels(frag, f, points, x);
    svg.replaceChildren(frag);
    svg.setAttribute('data-points', String(points.length));
  }

  // Supply and demand as step curves: x = cumulative energy, y = price.
  function renderBookChart(book) {
    var svg = $('book-chart');
    if (!book || (book.supply.length === 0 && book.demand.length === 0)) {
      emptyChart(svg, 'No orders in the book');
      return;
    }
    var f = chartFrame(svg);
    var frag = chartStart(svg);
    var maxQ = 1, maxP = 1, minP = Infinity;
    book.supply.concat(book.demand).forEach(function (p) {
      maxQ = Math.max(maxQ, p.cumulative_wh); maxP = Math.max(maxP, p.price); minP = Math.min(minP, p.price);
    });
    var pad = Math.max((maxP - minP) * 0.1, maxP * 0.05, 1);
    var lo = Math.max(0, minP - pad), hi = maxP + pad;
    function x(q) { return f.m.l + (q / maxQ) * f.iw; }
    function y(p) { return f.m.t + f.ih - ((p - lo) / (hi - lo)) * f.ih; }
    axes(frag, f, fmtPriceShort(hi), fmtPriceShort(lo));
    frag.appendChild(svgEl('text', { x: f.W - f.m.r, y: f.H - 6, 'text-anchor': 'end', 'class': 'axis-text' }, fmtEnergy(maxQ)));
    frag.appendChild(svgEl('text', { x: f.m.l, y: f.H - 6, 'text-anchor': 'start', 'class': 'axis-text' }, '0 Wh'));
    function steps(points, cls) {
      if (points.length === 0) return;
      var d = 'M' + x(0).toFixed(1) + ' ' + y(points[0].price).toFixed(1);
      var prevQ = 0;
      points.forEach(function (p, i) {
        if (i > 0) d += ' L' + x(prevQ).toFixed(1) + ' ' + y(p.price).toFixed(1);
        d += ' L' + x(p.cumulative_wh).toFixed(1) + ' ' + y(p.price).toFixed(1);
        prevQ = p.cumulative_wh;
      });
      frag.appendChild(svgEl('path', { d: d, 'class': cls }));
    }
    steps(book.supply, 'supply-line');
    steps(book.demand, 'demand-line');
    svg.replaceChildren(frag);
    svg.setAttribute('data-points', String(book.supply.length + book.demand.length));
  }

  // Daily net with the market against the utility alone: paired bars.
  function renderBillChart(days) {
    var svg = $('bill-chart');
    var pts = days.slice(0, 14).reverse();
    if (pts.length === 0) { emptyChart(svg, 'No settled intervals yet'); return; }
    var f = chartFrame(svg);
    var frag = chartStart(svg);
    var hi = 0, lo = 0;
    pts.forEach(function (d) {
      hi = Math.max(hi, d.total_micros, d.utility_only_micros);
      lo = Math.min(lo, d.total_micros, d.utility_only_micros);
    });
    if (hi === lo) hi = lo + 1;
    function y(v) { return f.m.t + f.ih - ((v - lo) / (hi - lo)) * f.ih; }
    axes(frag, f, fmtMoney(hi), fmtMoney(lo));
    frag.appendChild(svgEl('line', { x1: f.m.l, y1: y(0), x2: f.W - f.m.r, y2: y(0), 'class': 'axis' }));
    var step = f.iw / pts.length, bw = Math.max(2, step * 0.35);
    pts.forEach(function (d, i) {
      var cx = f.m.l + step * i + step / 2;
      [[d.total_micros, 'bill-market', -bw], [d.utility_only_micros, 'bill-utility', 0]].forEach(function (b) {
        var top = Math.min(y(0), y(b[0])), h = Math.abs(y(b[0]) - y(0));
        var r = svgEl('rect', { x: cx + b[2], y: top, width: bw, height: Math.max(1, h), 'class': b[1] });
        r.appendChild(svgEl('title', {}, d.period + ': ' + fmtMoney(b[0])));
        frag.appendChild(r);
      });
      if (!f.narrow || i === 0 || i === pts.length - 1) {
        frag.appendChild(svgEl('text', { x: cx, y: f.H - 6, 'text-anchor': 'middle', 'class': 'axis-text' }, d.period.slice(5)));
      }
    });
    svg.replaceChildren(frag);
    svg.setAttribute('data-points', String(pts.length));
  }

  // Energy flow picture: solar → homes ⇄ neighbours, feeder ⇄ utility grid.
  function renderFlow(s) {
    var svg = $('flow-svg');
    var W = Math.max(Math.round(svg.clientWidth || 640), 280);
    var H = 200;
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    var frag = chartStart(svg);
    var net = s.net_grid_w;
    var maxW = Math.max(s.pv_w, s.import_w, s.export_w, Math.abs(net), 1);
    function width(w) { return 2 + 10 * Math.min(1, Math.abs(w) / maxW); }
    var nodes = {
      sun: { x: W * 0.14, y: 50, label: 'Solar', value: fmtPower(s.pv_w), cls: 'node-pv' },
      homes: { x: W * 0.5, y: 120, label: 'Homes', value: fmtCount(s.households_online) + ' online', cls: 'node-home' },
      grid: { x: W * 0.86, y: 50, label: 'Utility grid', value: fmtSignedPower(net), cls: net > 0 ? 'node-import' : 'node-export' }
    };
    function link(a, b, w, cls, label) {
      var A = nodes[a], B = nodes[b];
      var p = svgEl('path', { d: 'M' + A.x + ' ' + A.y + ' Q ' + ((A.x + B.x) / 2) + ' ' + (Math.min(A.y, B.y) - 10) + ' ' + B.x + ' ' + B.y, 'class': 'flow-link ' + cls + (w > 0 ? ' active' : '') });
      p.setAttribute('stroke-width', width(w).toFixed(1));
      frag.appendChild(p);
      frag.appendChild(svgEl('text', { x: (A.x + B.x) / 2, y: Math.min(A.y, B.y) - 16, 'text-anchor': 'middle', 'class': 'flow-label' }, label));
    }
    link('sun', 'homes', s.pv_w, 'pv', fmtPower(s.pv_w));
    link('homes', 'grid', net, net > 0 ? 'import' : 'export', (net > 0 ? '← ' : '→ ') + fmtPower(Math.abs(net)));
    var shared = svgEl('path', { d: 'M' + (nodes.homes.x - 46) + ' ' + (nodes.homes.y + 34) + ' q 46 40 92 0', 'class': 'flow-link shared' + (s.shared_w > 0 ? ' active' : '') });
    shared.setAttribute('stroke-width', width(s.shared_w).toFixed(1));
    frag.appendChild(shared);
    frag.appendChild(svgEl('text', { x: nodes.homes.x, y: nodes.homes.y + 72, 'text-anchor': 'middle', 'class': 'flow-label' }, 'shared between neighbours ' + fmtPower(s.shared_w)));
    Object.keys(nodes).forEach(function (k) {
      var n = nodes[k];
      frag.appendChild(svgEl('circle', { cx: n.x, cy: n.y, r: 24, 'class': 'flow-node ' + n.cls }));
      frag.appendChild(svgEl('text', { x: n.x, y: n.y + 4, 'text-anchor': 'middle', 'class': 'flow-icon' }, k === 'sun' ? '☀' : (k === 'homes' ? '⌂' : '⚡')));
      frag.appendChild(svgEl('text', { x: n.x, y: n.y - 30, 'text-anchor': 'middle', 'class': 'flow-name' }, n.label));
      if (k !== 'homes') frag.appendChild(svgEl('text', { x: n.x, y: n.y + 40, 'text-anchor': 'middle', 'class': 'flow-value', id: 'flow-' + k + '-value' }, n.value));
    });
    svg.replaceChildren(frag);
    var text;
    if (s.export_w === 0 && s.import_w === 0) text = 'The feeder is balanced: no household is importing or exporting right now.';
    else if (s.export_w === 0) text = 'No household is exporting: all ' + fmtPower(s.import_w) + ' of imports come from the utility grid.';
    else text = 'Exporting homes feed in ' + fmtPower(s.export_w) + '; ' + fmtPower(s.shared_w) + ' of it is used by neighbours on the feeder' +
      (net < 0 ? ' and ' + fmtPower(-net) + ' flows on to the utility grid.' : (net > 0 ? ', and another ' + fmtPower(net) + ' comes from the utility grid.' : '.'));
    setText('flow-text', text);
  }

  // ---- live part ----------------------------------------------------------

  function renderSummary(s, bookStale) {
    state.summary = s;
    state.summaryAt = Date.now();
    if (s.currency && s.currency !== state.currency) state.currency = s.currency;
    setText('grid-name', s.grid || '');
    setText('s-online', fmtCount(s.households_online) + ' / ' + fmtCount(s.households));
    setText('s-pv', fmtPower(s.pv_w));
    setText('s-import', fmtPower(s.import_w));
    setText('s-export', fmtPower(s.export_w));
    if (s.last_interval_start === null || s.last_interval_start === undefined) {
      setText('s-price', '–');
      setText('s-price-at', 'no interval cleared yet');
    } else {
      setText('s-price', s.last_clearing_price === null ? 'no trades' : fmtPrice(s.last_clearing_price));
      setText('s-price-at', 'per kWh · ' + fmtTime(s.last_interval_start) +
        (s.last_volume_wh ? ' · ' + fmtEnergy(s.last_volume_wh) : '') + (bookStale ? ' · stale' : ''));
    }
    setText('s-gate-at', 'for the interval at ' + fmtTime(s.next_gate_closure));
    renderCountdown();
    if (state.page === 'overview') renderFlow(s);
  }

  // Counts down in real seconds between events: the summary's clock may run
  // faster than real time (the demo), so divide by its speed.
  function renderCountdown() {
    var s = state.summary;
    if (!s) return;
    var simLeft = s.next_gate_closure - s.as_of;
    var realLeft = Math.max(0, simLeft / Math.max(s.clock_speed, 1) - (Date.now() - state.summaryAt));
    var secs = Math.ceil(realLeft / 1000);
    setText('s-countdown', secs >= 60 ? Math.floor(secs / 60) + ' min ' + (secs % 60) + ' s' : secs + ' s');
  }

  function households(live) {
    var map = {}, order = [];
    live.forEach(function (r) {
      var key = r.household === 'neighbour' ? 'neighbour-' + order.length : r.household;
      var h = map[key];
      if (!h) { h = map[key] = { id: r.household, grid: 0, pv: null, ts: 0 }; order.push(h); }
      h.grid += r.grid_power_w;
      if (r.pv_power_w !== null && r.pv_power_w !== undefined) h.pv = (h.pv || 0) + r.pv_power_w;
      h.ts = Math.max(h.ts, r.ts);
    });
    return order;
  }

  function renderLive(live, summary) {
    var windowMs = summary ? summary.online_window_ms : Infinity;
    var now = summary ? summary.as_of : 0;
    var member = state.me && state.me.authenticated;
    $('households-public').hidden = !!member;
    var rows = households(live).map(function (h) {
      var online = h.ts + windowMs >= now;
      var tr = el('tr', online ? null : 'offline');
      var name = el('td');
      var dot = el('span', 'dot' + (online ? ' on' : ''));
      dot.title = online ? 'online' : 'offline';
      name.appendChild(dot);
      name.appendChild(document.createTextNode(h.id));
      tr.appendChild(name);
      tr.appendChild(el('td', 'num ' + (h.grid > 0 ? 'import' : (h.grid < 0 ? 'export' : '')), fmtSignedPower(h.grid)));
      tr.appendChild(el('td', 'num pv', h.pv === null ? '–' : fmtPower(h.pv)));
      tr.appendChild(el('td', 'hide-sm muted', fmtTimeSec(h.ts)));
      return tr;
    });
    fillBody('households', rows, member ? 'Waiting for live readings…' : 'Totals only for visitors.', 4);
    setText('updated', fmtTimeSec(Date.now()));
  }

  function onLive(live, summary, bookStale) {
    renderSummary(summary, bookStale);
    renderLive(live, summary);
    showError(null);
  }

  function pollLive() {
    var member = state.me && state.me.authenticated;
    return Promise.all([member ? getJson('/api/live') : Promise.resolve([]), getJson('/api/summary')])
      .then(function (res) { onLive(res[0], res[1], false); if (state.mode !== 'live') setMode('poll'); })
      .catch(function (e) {
        if (e.status === 401) { setMode('off'); return; }
        if (state.mode !== 'live') setMode('off');
        showError('Cannot reach the clearing engine (' + e.message + '); retrying.');
      });
  }
  function startPolling() {
    if (!state.pollTimer) {
      setMode('poll');
      pollLive();
      state.pollTimer = setInterval(function () { if (!document.hidden) pollLive(); }, POLL_MS);
    }
    if (!state.retryTimer && window.EventSource) {
      state.retryTimer = setTimeout(function () { state.retryTimer = null; startStream(); }, STREAM_RETRY_MS);
    }
  }
  function stopPolling() {
    if (state.pollTimer) { clearInterval(state.pollTimer); state.pollTimer = null; }
  }
  function closeStream() {
    if (state.stream) { state.stream.close(); state.stream = null; }
  }
  function startStream() {
    if (!window.EventSource) { startPolling(); return; }
    closeStream();
    state.streamErrors = 0;
    var es = new EventSource('/api/stream');
    state.stream = es;
    es.addEventListener('live', function (e) {
      var data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      state.lastEventAt = Date.now();
      state.streamErrors = 0;
      stopPolling();
      setMode('live');
      onLive(data.live || [], data.summary, data.book_stale);
    });
    es.onerror = function () {
      state.streamErrors += 1;
      if (es.readyState === EventSource.CLOSED || state.streamErrors >= 3) {
        closeStream();
        startPolling();
      } else if (state.mode === 'live') {
        setMode('wait');
      }
    };
  }
  function watchdog() {
    if (state.stream && state.mode === 'live' && Date.now() - state.lastEventAt > STREAM_STALL_MS) {
      closeStream();
      startPolling();
    }
    renderCountdown();
  }

  // ---- pages --------------------------------------------------------------

  function statusBadge(status) {
    return el('span', 'status status-' + String(status).replace(/[^a-z]/g, ''), status);
  }

  var MECHANISMS = { uniform: 'uniform price', pay_as_bid: 'pay as bid', mcafee: 'McAfee' };
  function paramItems(p) {
    return [
      ['Mechanism', MECHANISMS[p.mechanism] || p.mechanism],
      ['Price rule', p.mechanism === 'uniform' ? p.price_rule : '–'],
      ['Price floor (feed-in)', fmtPrice(p.feed_in_tariff)],
      ['Price ceiling (retail)', fmtPrice(p.retail_tariff)],
      ['Grid fee', fmtPrice(p.grid_fee)],
      ['Feeder capacity', p.capacity_wh === null ? 'no limit' : fmtEnergy(p.capacity_wh)],
      ['Gate closes', p.gate_lead_ms === 0 ? 'at interval start' : fmtCount(p.gate_lead_ms / 1000) + ' s before']
    ];
  }
  function paramSummary(p) {
    return paramItems(p).filter(function (kvp) { return kvp[1] !== '–'; }).map(function (kvp) { return kvp[0].toLowerCase() + ' ' + kvp[1]; }).join(', ');
  }
  function loadMarketParams() {
    return getJson('/api/market/params').then(function (mp) {
      var dl = $('market-params');
      var frag = document.createDocumentFragment();
      paramItems(mp.in_force).forEach(function (kvp) {
        var d = el('div');
        d.appendChild(el('dt', null, kvp[0]));
        d.appendChild(el('dd', null, kvp[1]));
        frag.appendChild(d);
      });
      dl.replaceChildren(frag);
      setText('mp-since', mp.in_force_since === null ? 'as configured' : 'since ' + fmtDateTime(mp.in_force_since));
      setText('mp-scheduled', mp.scheduled.map(function (c) {
        return 'From ' + fmtDateTime(c.effective_from) + ': ' + paramSummary(c.params) + '.';
      }).join(' '));
    }).catch(function (e) {
      // An engine that shows no parameters (404) leaves the section empty.
      if (e.status !== 404) throw e;
    });
  }

  function loadMarket() {
    return Promise.all([getJson('/api/market/book'), getJson('/api/intervals?limit=' + CHART_INTERVALS), loadMarketParams()]).then(function (res) {
      var book = res[0], list = res[1];
      state.book = book;
      state.intervals = list;
      setText('book-interval', book.interval_start === null ? '' :
        (book.cleared ? 'last cleared, ' : 'for ') + fmtDateTime(book.interval_start));
      renderBookChart(book);
      var pts = list.slice(0, CHART_INTERVALS).reverse();
      renderPriceChart(pts);
      renderVolumeChart(pts);
      fillBody('intervals', list.slice(0, TABLE_ROWS).map(function (r) {
        var a = el('a', null, fmtDateTime(r.interval_start) + '–' + fmtTime(r.interval_end));
        a.href = '#/interval/' + r.interval_start;
        var td = el('td'); td.appendChild(a);
        return row([td, ['num', r.clearing_price === null ? 'no trades' : fmtPrice(r.clearing_price)],
          ['num', fmtEnergy(r.volume_wh)], ['num', fmtCount(r.trades)], ['num hide-sm', fmtCount(r.orders)]]);
      }), 'No cleared intervals yet.', 5);
    });
  }

  function loadSettlements() {
    return getJson('/api/settlements?limit=50').then(function (list) {
      fillBody('settlements', list.map(function (s) {
        var a = el('a', null, fmtDateTime(s.interval_start));
        a.href = '#/interval/' + s.interval_start;
        var t = el('td'); t.appendChild(a);
        var st = el('td'); st.appendChild(statusBadge(s.status));
        var h = el('td', 'hash', shortHash(s.hash)); h.title = s.hash;
        var tx = el('td', 'hash hide-sm');
        if (s.tx_hash && s.tx_url) {
          var l = el('a', null, shortHash(s.tx_hash)); l.href = s.tx_url; l.rel = 'noopener noreferrer'; l.target = '_blank';
          tx.appendChild(l);
        } else {
          tx.textContent = s.tx_hash ? shortHash(s.tx_hash) : 'ledger';
        }
        return row([t, st, h, tx, ['num', fmtMoney(s.traded_micros)]]);
      }), 'No settlements yet.', 5);
    });
  }

  function kv(dl, key, value) {
    dl.appendChild(el('dt', null, key));
    dl.appendChild(el('dd', 'hash', value));
  }

  function loadInterval(start) {
    return getJson('/api/intervals/' + encodeURIComponent(start)).then(function (d) {
      setText('iv-title', fmtDateTime(d.interval_start) + '–' + fmtTime(d.interval_end));
      setText('iv-price', d.clearing_price === null ? 'no trades' : fmtPrice(d.clearing_price));
      setText('iv-volume', fmtEnergy(d.volume_wh));
      setText('iv-orders', fmtCount(d.orders));
      var st = $('iv-status'); st.replaceChildren(statusBadge(d.settlement ? d.settlement.status : 'pending'));
      var dl = $('iv-roots'); dl.replaceChildren();
      kv(dl, 'Orders root', d.orders_root);
      kv(dl, 'Trades root', d.trades_root);
      if (d.settlement) {
        kv(dl, 'Readings root', d.settlement.readings_root);
        kv(dl, 'Batch hash', d.settlement.hash);
        kv(dl, 'Previous batch', d.settlement.prev_hash);
        if (d.settlement.tx_hash) kv(dl, 'Transaction', d.settlement.tx_hash);
      }
      fillBody('iv-trades', d.trades.map(function (t) {
        return row([['num', String(t.idx + 1)], [null, t.seller], [null, t.buyer], ['num', fmtEnergy(t.quantity_wh)], ['num', fmtPrice(t.price)]]);
      }), 'No trades.', 5);
      fillBody('iv-transfers', d.settlement ? d.settlement.transfers.map(function (t) {
        return row([[null, t.household], ['num', fmtEnergy(t.delivered_wh)], ['num', fmtEnergy(t.received_wh)],
          ['num ' + (t.amount >= 0 ? 'export' : 'import'), fmtMoney(t.amount)]]);
      }) : [], d.settlement ? 'No transfers you may see.' : 'Not settled yet.', 4);
    });
  }

  function verifyInterval() {
    var start = state.arg;
    setText('verify-summary', 'verifying…');
    $('verify-results').replaceChildren();
    getJson('/api/intervals/' + encodeURIComponent(start) + '/verify').then(function (r) {
      setText('verify-summary', r.ok ? '✓ every check passed' : '✗ a check failed');
      $('verify-summary').className = 'small ' + (r.ok ? 'export' : 'import');
      var frag = document.createDocumentFragment();
      r.checks.forEach(function (c) {
        var li = el('li', c.ok ? 'ok' : 'bad');
        li.appendChild(el('strong', null, (c.ok ? '✓ ' : '✗ ') + c.name.replace(/_/g, ' ')));
        li.appendChild(el('span', 'small muted', ' ' + c.detail));
        frag.appendChild(li);
      });
      $('verify-results').replaceChildren(frag);
    }).catch(function (e) { setText('verify-summary', 'verification failed: ' + e.message); });
  }

  function loadHousehold() {
    var h = state.me && state.me.household;
    if (!h) {
      setText('hh-name', state.me && state.me.role === 'operator' ? '(operators have no household)' : '');
      return Promise.resolve();
    }
    var base = '/api/households/' + encodeURIComponent(h);
    setText('hh-name', h);
    return Promise.all([getJson(base + '/bills'), getJson(base + '/trades?limit=12'), getJson(base + '/orders?limit=12'), getJson(base + '/readings?limit=12')]).then(function (res) {
      var bills = res[0];
      state.bills = bills;
      if (bills.currency) state.currency = bills.currency;
      var month = bills.months[0];
      setText('hh-month', month ? fmtMoney(month.total_micros) : '–');
      setText('hh-month-hint', month ? (month.total_micros >= 0 ? 'you receive · ' : 'you pay · ') + month.period : 'no settled intervals yet');
      setText('hh-savings', month ? fmtMoney(month.savings_micros) : '–');
      setText('hh-bought', month ? fmtEnergy(month.bought_from_neighbours_wh) : '–');
      setText('hh-sold', month ? fmtEnergy(month.sold_to_neighbours_wh) : '–');
      renderBillChart(bills.days);
      function billRows(lines) {
        return lines.map(function (b) {
          return row([[null, b.period], ['num bill-total', fmtMoney(b.total_micros)], ['num', fmtMoney(b.utility_only_micros)],
            ['num ' + (b.savings_micros >= 0 ? 'export' : 'import'), fmtMoney(b.savings_micros)], ['num hide-sm', fmtCount(b.intervals)]]);
        });
      }
      fillBody('bills-days', billRows(bills.days.slice(0, 31)), 'No settled intervals yet.', 5);
      fillBody('bills-months', billRows(bills.months), 'No settled intervals yet.', 5);
      fillBody('hh-trades', res[1].map(function (t) {
        var buy = t.buyer === h;
        return row([[null, fmtDateTime(t.interval_start)], [buy ? 'import' : 'export', buy ? 'bought' : 'sold'],
          ['num', fmtEnergy(t.quantity_wh)], ['num', fmtPrice(buy ? t.buyer_price : t.price)]]);
      }), 'No trades yet.', 4);
      fillBody('hh-orders', res[2].map(function (o) {
        return row([[null, fmtDateTime(o.interval_start)], [o.side === 'buy' ? 'import' : 'export', o.side],
          ['num', fmtEnergy(o.quantity_wh)], ['num', fmtPrice(o.limit_price)], ['num hide-sm', String(o.nonce)]]);
      }), 'No orders yet.', 5);
      fillBody('hh-readings', res[3].map(function (r) {
        return row([[null, fmtTimeSec(r.ts)], ['num', fmtSignedPower(r.grid_power_w)], ['num pv', r.pv_power_w === null ? '–' : fmtPower(r.pv_power_w)],
          ['num hide-sm', fmtEnergy(r.import_wh)], ['num hide-sm', fmtEnergy(r.export_wh)]]);
      }), 'No readings yet.', 5);
    });
  }

  function loadDevices() {
    return getJson('/api/devices').then(function (d) {
      fillBody('devices', d.devices.map(function (m) {
        var h = el('td'); h.appendChild(el('span', 'status health-' + m.health, m.health));
        var rj = el('td', 'num' + (m.rejected > 0 ? ' import' : ''), fmtCount(m.rejected));
        rj.title = Object.keys(m.rejects).map(function (k) { return k.replace(/_/g, ' ') + ': ' + m.rejects[k]; }).join(', ');
        return row([[null, m.meter], [null, m.household], h, ['num', fmtAge(m.last_reading_age_ms)], rj, ['num hide-sm', m.last_seq === null ? '–' : String(m.last_seq)]]);
      }), 'No meters you may see.', 6);
      fillBody('order-rejects', d.order_rejects.map(function (o) {
        var total = 0;
        var why = Object.keys(o.rejects).map(function (k) { total += o.rejects[k]; return k.replace(/_/g, ' ') + ' ' + o.rejects[k]; }).join(', ');
        return row([[null, o.household], [null, why], ['num', fmtCount(total)]]);
      }), 'No orders rejected.', 3);
      var reasons = Object.keys(d.rejects);
      fillBody('rejects', reasons.map(function (k) { return row([[null, k.replace(/_/g, ' ')], ['num', fmtCount(d.rejects[k])]]); }), 'Nothing rejected.', 2);
    });
  }

  var PARAM_FIELDS = ['mechanism', 'price_rule', 'feed_in_tariff', 'retail_tariff', 'grid_fee', 'capacity_wh', 'gate_lead_ms'];
  // The form's inputs are named #p-<field> (web/tests/page.rs lists them).
  function paramInput(f) { return document.getElementById('p-' + f); }
  function fillParamsForm(p) {
    if ($('params-form').contains(document.activeElement)) return;
    PARAM_FIELDS.forEach(function (f) { paramInput(f).value = p[f] === null ? '' : String(p[f]); });
  }
  function loadParamsAdmin() {
    return Promise.all([getJson('/api/market/params'), getJson('/api/params/changes')]).then(function (res) {
      var mp = res[0];
      // The form starts from the newest set: scheduled if any, else in force.
      fillParamsForm(mp.scheduled.length ? mp.scheduled[mp.scheduled.length - 1].params : mp.in_force);
      fillBody('param-changes', res[1].map(function (c) {
        var what = PARAM_FIELDS.filter(function (f) { return c.old[f] !== c.new[f]; }).map(function (f) {
          return f.replace(/_/g, ' ') + ' ' + (c.old[f] === null ? 'none' : c.old[f]) + ' → ' + (c.new[f] === null ? 'none' : c.new[f]);
        }).join('; ');
        return row([['hide-sm', fmtDateTime(c.changed_at)], [null, c.changed_by], [null, fmtDateTime(c.effective_from)], ['wrap', what || 'no change']]);
      }), 'No changes.', 4);
    }).catch(function (e) { if (e.status !== 404) throw e; });
  }
  function onParams(ev) {
    ev.preventDefault();
    var body = {};
    PARAM_FIELDS.forEach(function (f) {
      var v = paramInput(f).value.trim();
      if (f === 'mechanism' || f === 'price_rule') body[f] = v;
      else if (f === 'capacity_wh' && v === '') body[f] = null;
      else body[f] = Number(v);
    });
    setText('params-msg', 'applying…');
    request('POST', '/api/params', body).then(function (c) {
      setText('params-msg', 'applies from ' + fmtDateTime(c.effective_from));
      document.activeElement.blur();
      return loadParamsAdmin();
    }).catch(function (e) { setText('params-msg', e.message); });
  }

  function onEnrol(ev) {
    ev.preventDefault();
    var file;
    try { file = JSON.parse($('enrol-file').value); } catch (e) { setText('enrol-msg', 'not a request file: ' + e.message); return; }
    setText('enrol-msg', 'checking…');
    request('POST', '/api/enrolments', file).then(function (c) {
      setText('enrol-msg', 'request ' + c.id + ' for ' + c.household + ' filed');
      $('enrol-file').value = '';
      return loadAdmin();
    }).catch(function (e) { setText('enrol-msg', e.message); });
  }

  function loadAdmin() {
    return Promise.all([getJson('/api/settings'), getJson('/api/enrolments'), loadParamsAdmin()]).then(function (res) {
      var s = res[0];
      if (document.activeElement !== $('set-explorer')) {
        $('set-public').checked = !!s.public_aggregates;
        $('set-explorer').value = s.explorer_tx_url || '';
      }
      fillBody('enrolments', res[1].map(function (e) {
        var act = el('td');
        if (e.status === 'pending') {
          ['approve', 'reject'].forEach(function (what) {
            var b = el('button', 'btn btn-small', what);
            b.type = 'button';
            b.setAttribute('data-action', what);
            b.setAttribute('data-household', e.household);
            b.addEventListener('click', function () {
              request('POST', '/api/enrolments/' + e.id + '/' + what).then(loadAdmin).catch(function (err) { showError(err.message); });
            });
            act.appendChild(b);
          });
        }
        var st = el('td'); st.appendChild(statusBadge(e.status));
        return row([[null, e.household], [null, e.meters.join(', ')], ['hash hide-sm', shortHash(e.public_key)], st, act]);
      }), 'No requests.', 5);
    });
  }

  var PAGES = {
    overview: { load: function () { if (state.summary) renderFlow(state.summary); return Promise.resolve(); } },
    market: { load: loadMarket },
    settlements: { load: loadSettlements },
    interval: { load: function () { return loadInterval(state.arg); } },
    household: { load: loadHousehold, needs: 'household' },
    devices: { load: loadDevices, needs: 'member' },
    admin: { load: loadAdmin, needs: 'operator' },
    login: { load: function () { return Promise.resolve(); } }
  };

  function allowed(needs) {
    var me = state.me;
    if (!needs) return true;
    if (!me || !me.authenticated) return false;
    if (needs === 'operator') return me.role === 'operator';
    if (needs === 'household') return !!me.household;
    return true;
  }

  function loadPage() {
    var p = PAGES[state.page];
    if (!p || document.hidden) return;
    p.load().then(function () { showError(null); }).catch(function (e) {
      if (e.status === 401) { location.hash = '#/login'; return; }
      showError('Could not load this page (' + e.message + '); retrying.');
    });
  }

  function route() {
    var parts = (location.hash || '#/overview').replace(/^#\/?/, '').split('/');
    var page = PAGES[parts[0]] ? parts[0] : 'overview';
    if (!allowed(PAGES[page].needs)) page = state.me && state.me.authenticated ? 'overview' : 'login';
    state.page = page;
    state.arg = parts[1] || null;
    $('login-expired').hidden = !(page === 'login' && parts[1] === 'expired');
    Object.keys(PAGES).forEach(function (k) { document.getElementById('page-' + k).hidden = k !== page; });
    document.querySelectorAll('.tabs a').forEach(function (a) {
      var on = a.getAttribute('data-page') === page || (page === 'interval' && a.getAttribute('data-page') === 'settlements');
      if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    if (page === 'interval') { $('verify-results').replaceChildren(); setText('verify-summary', ''); }
    document.title = 'Voltshare · ' + page;
    clearInterval(state.pageTimer);
    loadPage();
    if (page !== 'login' && page !== 'interval' && page !== 'admin') state.pageTimer = setInterval(loadPage, PAGE_MS);
  }

  function renderMe() {
    var me = state.me || {};
    var authed = !!me.authenticated;
    setText('who', authed ? me.username + (me.role === 'operator' ? ' (operator)' : '') : '');
    $('login-link').hidden = authed || !me.accounts_enabled;
    $('logout-btn').hidden = !authed;
    document.querySelectorAll('.tabs a[data-needs]').forEach(function (a) { a.hidden = !allowed(a.getAttribute('data-needs')); });
  }

  function loadMe() {
    return getJson('/api/me').then(function (me) { state.me = me; renderMe(); });
  }

  function restartLive() {
    closeStream();
    stopPolling();
    startStream();
  }

  function onLogin(ev) {
    ev.preventDefault();
    setText('login-msg', 'logging in…');
    request('POST', '/api/login', { username: $('login-user').value, password: $('login-pass').value }).then(function (me) {
      state.me = me;
      $('login-pass').value = '';
      setText('login-msg', '');
      renderMe();
      restartLive();
      location.hash = me.household ? '#/household' : '#/overview';
    }).catch(function (e) {
      setText('login-msg', e.status === 401 ? 'Wrong username or password.' : 'Login failed: ' + e.message);
    });
  }

  function onLogout() {
    request('POST', '/api/logout').then(loadMe).then(function () {
      restartLive();
      location.hash = '#/overview';
      route();
    }).catch(function (e) { showError('Logout failed: ' + e.message); });
  }

  function onSettings(ev) {
    ev.preventDefault();
    var url = $('set-explorer').value.trim();
    request('POST', '/api/settings', { public_aggregates: $('set-public').checked, explorer_tx_url: url === '' ? null : url })
      .then(function () { setText('settings-msg', 'saved'); })
      .catch(function (e) { setText('settings-msg', e.message); });
  }

  var resizeTimer = null;
  function onResize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (state.page === 'overview' && state.summary) renderFlow(state.summary);
      if (state.page === 'market') {
        var pts = state.intervals.slice(0, CHART_INTERVALS).reverse();
        renderPriceChart(pts); renderVolumeChart(pts); renderBookChart(state.book);
      }
      if (state.page === 'household' && state.bills) renderBillChart(state.bills.days);
    }, 150);
  }

  function init() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout-btn').addEventListener('click', onLogout);
    $('settings-form').addEventListener('submit', onSettings);
    $('params-form').addEventListener('submit', onParams);
    $('enrol-form').addEventListener('submit', onEnrol);
    $('verify-btn').addEventListener('click', verifyInterval);
    window.addEventListener('hashchange', route);
    window.addEventListener('resize', onResize);
    document.addEventListener('visibilitychange', function () { if (!document.hidden) loadPage(); });
    loadMe().catch(function (e) { showError('Cannot reach the dashboard (' + e.message + ').'); })
      .then(function () {
        route();
        startStream();
        setInterval(watchdog, 1000);
      });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
