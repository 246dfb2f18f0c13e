# ruff: noqa: E501  (an embedded web page)
"""The dashboard's single page: plain HTML, CSS and JavaScript, no CDN, no build step.

It polls ``/api/state`` every second and redraws numbers, verdict badges and SVG charts in
place (no page reload). Element ids are what the Chromium test reads.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rowcast — live</title>
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#0f1419;color:#e6e6e6}
 header{padding:12px 20px;background:#1a2029;display:flex;gap:24px;align-items:baseline}
 h1{font-size:18px;margin:0} .muted{color:#8b949e}
 main{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;padding:14px 20px}
 .card{background:#1a2029;border-radius:8px;padding:12px 14px}
 .big{font-size:26px;font-weight:600} .wide{grid-column:span 3}
 .badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;margin-left:6px}
 .OK{background:#1f6f3f}.WARN{background:#9a6700}.STALL{background:#b35900}
 .STOP,.ERROR{background:#b62324}.UNKNOWN{background:#444}
 svg{width:100%;height:90px;background:#11161d;border-radius:4px}
 table{width:100%;border-collapse:collapse} td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #2a313c}
 tr.failed td{color:#ff7b72} tr.paused td{color:#d29922}
</style></head>
<body data-updated="">
<header><h1>rowcast</h1><span class="muted" id="clock">waiting for data…</span></header>
<main>
 <div class="card"><div class="muted">predictions written</div><div class="big" id="scored-total">–</div>
   <div class="muted"><span id="throughput">–</span> rows/s (last 10 s)</div></div>
 <div class="card"><div class="muted">commit → prediction (last 5 min)</div>
   <div class="big"><span id="p50">–</span> ms</div>
   <div class="muted">p95 <span id="p95">–</span> ms · p99 <span id="p99">–</span> ms</div></div>
 <div class="card"><div class="muted">replication slot<span class="badge UNKNOWN" id="verdict-slot">–</span></div>
   <div class="big"><span id="slot-seconds">–</span> s</div>
   <div class="muted"><span id="slot-bytes">–</span> bytes behind · <span id="slot-retained">–</span> retained</div></div>
 <div class="card"><div class="muted">scorer lag<span class="badge UNKNOWN" id="verdict-scorer">–</span></div>
   <div class="big" id="lag-scorer">–</div><div class="muted">oldest waiting <span id="oldest-scorer">–</span> s</div><svg id="chart-scorer"></svg></div>
 <div class="card"><div class="muted">learner lag (labels not yet learned)<span class="badge UNKNOWN" id="verdict-learner">–</span></div>
   <div class="big" id="lag-learner">–</div><div class="muted">oldest waiting <span id="oldest-learner">–</span> s</div><svg id="chart-learner"></svg></div>
 <div class="card"><div class="muted">sink lag<span class="badge UNKNOWN" id="verdict-sink">–</span></div>
   <div class="big" id="lag-sink">–</div><div class="muted">oldest waiting <span id="oldest-sink">–</span> s</div><svg id="chart-sink"></svg></div>
 <div class="card"><div class="muted">throughput (rows/s) and p99 latency (ms)</div>
   <svg id="chart-throughput"></svg><svg id="chart-p99"></svg></div>
 <div class="card"><div class="muted">online metric <span id="metric-name">–</span></div>
   <div class="big" id="metric-value">–</div><svg id="chart-metric"></svg></div>
 <div class="card wide"><div class="muted">deployments</div>
   <table><thead><tr><th>name</th><th>table</th><th>model</th><th>model version</th><th>learned</th><th>online metric</th><th>target</th></tr></thead>
   <tbody id="deployments"></tbody></table></div>
 <div class="card wide"><div class="muted">champion and challengers (same labels, same order)</div>
   <table><thead><tr><th>deployment</th><th>model</th><th>role</th><th>labels</th><th>whole stream</th><th>recent window</th><th>verdict</th></tr></thead>
   <tbody id="challengers"></tbody></table></div>
</main>
<script>
const $ = id => document.getElementById(id);
function spark(svg, values, color) {
  const w = svg.clientWidth || 300, h = svg.clientHeight || 90;
  const vs = values.map(v => v == null ? 0 : v), max = Math.max(1, ...vs);
  const pts = vs.map((v, i) => `${(i / Math.max(1, vs.length - 1)) * w},${h - 4 - (v / max) * (h - 12)}`);
  svg.innerHTML = `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.join(' ')}"/>` +
    `<text x="4" y="12" fill="#8b949e" font-size="10">max ${Math.round(max)}</text>`;
}
function markers(svg, counts) {  // a red line where a deployment's drift count grew
  const w = svg.clientWidth || 300, h = svg.clientHeight || 90;
  counts.forEach((c, i) => {
    if (i > 0 && c > counts[i - 1]) {
      const x = (i / Math.max(1, counts.length - 1)) * w;
      svg.insertAdjacentHTML('beforeend', `<line class="drift" x1="${x}" x2="${x}" y1="0" y2="${h}" stroke="#f85149" stroke-dasharray="3,2"><title>drift detected</title></line>`);
    }
  });
}
function badge(el, verdict) { el.textContent = verdict; el.className = 'badge ' + verdict; }
async function refresh() {
  const token = new URLSearchParams(location.search).get('token');
  const r = await fetch('/api/state' + (token ? '?token=' + encodeURIComponent(token) : ''));
  if (!r.ok) return;
  const s = await r.json(), now = s.latest;
  if (!now) return;
  $('clock').textContent = 'updated ' + new Date(now.at * 1000).toLocaleTimeString();
  $('scored-total').textContent = now.predictions.total;
  $('throughput').textContent = now.predictions.per_second.toFixed(1);
  for (const p of ['p50', 'p95', 'p99']) $(p).textContent = now.latency_ms[p] ?? '–';
  if (now.slot) {
    $('slot-seconds').textContent = now.slot.behind_seconds;
    $('slot-bytes').textContent = now.slot.behind_bytes;
    $('slot-retained').textContent = now.slot.retained_bytes;
    badge($('verdict-slot'), now.slot.verdict);
  }
  for (const st of now.stages) {
    badge($('verdict-' + st.stage), st.verdict);
    $('lag-' + st.stage).textContent = st.lag ?? '?';
    $('oldest-' + st.stage).textContent = st.oldest_unconsumed_s ?? '–';
    spark($('chart-' + st.stage), s.history.map(h => (h.stages.find(x => x.stage === st.stage) || {}).lag), '#58a6ff');
  }
  spark($('chart-throughput'), s.history.map(h => h.predictions.per_second), '#3fb950');
  spark($('chart-p99'), s.history.map(h => h.latency_ms.p99), '#d29922');
  const first = now.deployments.find(d => Object.keys(d.metrics || {}).length);
  if (first) {  // the first deployment with a metric: its first metric over time
    const name = ['MAE', 'Accuracy'].find(k => k in first.metrics) || Object.keys(first.metrics)[0];
    $('metric-name').textContent = first.name + ' ' + name;
    $('metric-value').textContent = first.metrics[name].toPrecision(4);
    spark($('chart-metric'), s.history.map(h => (((h.deployments || []).find(d => d.name === first.name) || {}).metrics || {})[name]), '#bc8cff');
    markers($('chart-metric'), s.history.map(h => ((((h.deployments || []).find(d => d.name === first.name) || {}).drift) || {}).count || 0));
  }
  const rows = [];
  for (const d of now.deployments) {
    const entries = Object.entries(d.challengers || {});
    if (!entries.length) continue;
    rows.push([d.name, d.model, 'champion', d.samples, Object.entries(d.metrics || {}).slice(0, 2).map(([k, v]) => k + ' ' + v.toPrecision(4)).join(', '), '', (d.drift || {}).count ? d.drift.count + ' drift(s)' : '']);
    for (const [cname, c] of entries) {
      const r = c.recent || {};
      rows.push([d.name, cname + ' (' + c.model + ')', 'challenger', c.labels,
                 Object.entries(c.progressive || {}).slice(0, 2).map(([k, v]) => k + ' ' + v.toPrecision(4)).join(', '),
                 (r.n || 0) + ' rows: loss ' + (r.challenger_loss ?? 0).toPrecision(4) + ' vs ' + (r.champion_loss ?? 0).toPrecision(4) + ', z ' + (r.z ?? 0).toFixed(2),
                 r.wins ? 'beats the champion' : 'not better (yet)']);
    }
  }
  $('challengers').replaceChildren(...rows.map(cells => {
    const tr = document.createElement('tr');
    for (const v of cells) { const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }
    return tr;
  }));
  const fmt = m => Object.entries(m || {}).slice(0, 2).map(([k, v]) => k + ' ' + v.toPrecision(4)).join(', ') || '–';
  const body = $('deployments');  // built with textContent: table names may hold any character
  body.replaceChildren(...now.deployments.map(d => {
    const tr = document.createElement('tr');
    const metric = d.failed ? 'FAILED (' + d.failed.reason + '): ' + d.failed.error
      : d.paused ? 'PAUSED (' + d.paused.reason + '): ' + d.paused.error
      : fmt(d.metrics) + (d.learning_delay_ms ? ' · learned ' + d.learning_delay_ms.p50.toFixed(0)
        + ' / ' + d.learning_delay_ms.p99.toFixed(0) + ' ms after commit (p50/p99)' : '');
    for (const v of [d.name, d.table, d.model, d.model_version == null ? '–' : 'v' + d.model_version,
                     d.samples, metric, d.target]) {
      const td = document.createElement('td'); td.textContent = v; tr.appendChild(td);
    }
    if (d.failed) { tr.className = 'failed'; tr.title = 'rows go to the dead-letter topic'; }
    else if (d.paused) { tr.className = 'paused'; tr.title = 'learning paused since ' + d.paused.since + '; the last good version keeps serving; rowcast model rollback resumes it'; }
    return tr;
  }));
  document.body.dataset.updated = String(now.at);
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
