// Status page of a Moien node: polls /metrics on this listener every two seconds, keeps five
// minutes of the key figures in memory and draws them on canvases. Self-contained on purpose:
// no library, no CDN, nothing fetched from anywhere but this origin.
'use strict';

const PERIOD_MS = 2000;
const KEEP = 150; // samples: five minutes at one every two seconds

// Parses the Prometheus text exposition into [{name, labels, value}].
function parse(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    let i = 0;
    while (i < line.length && line[i] !== '{' && line[i] !== ' ') i++;
    const name = line.slice(0, i);
    const labels = {};
    if (line[i] === '{') {
      i++;
      while (i < line.length && line[i] !== '}') {
        const eq = line.indexOf('=', i);
        const key = line.slice(i, eq).replace(/^,/, '').trim();
        let j = eq + 2; // past ="
        let val = '';
        while (j < line.length && line[j] !== '"') {
          if (line[j] === '\\' && j + 1 < line.length) {
            const n = line[j + 1];
            val += n === 'n' ? '\n' : n;
            j += 2;
          } else {
            val += line[j++];
          }
        }
        labels[key] = val;
        i = j + 1;
        if (line[i] === ',') i++;
      }
      i++;
    }
    const value = parseFloat(line.slice(i).trim().split(' ')[0]);
    out.push({ name, labels, value });
  }
  return out;
}

// Sum of a family's samples whose labels match `where`.
function sum(samples, name, where = {}) {
  let total = 0;
  let seen = false;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(where).some(([k, v]) => s.labels[k] !== v)) continue;
    total += s.value;
    seen = true;
  }
  return seen ? total : null;
}

// Values of a family by one label (e.g. per worker).
function byLabel(samples, name, label) {
  const out = {};
  for (const s of samples) {
    if (s.name === name && s.labels[label] !== undefined) {
      out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
    }
  }
  return out;
}

// What each plot shows: counters become per-second rates between two scrapes.
const PLOTS = [
  { id: 'calls', title: 'Participants and rooms', unit: '', series: (s) => ({
      participants: sum(s, 'moien_sfu_participants'), rooms: sum(s, 'moien_sfu_rooms') }) },
  { id: 'packets', title: 'RTP packets per second', unit: '/s', rate: true, series: (s) => ({
      in: sum(s, 'moien_sfu_rtp_packets_total', { direction: 'in' }),
      out: sum(s, 'moien_sfu_rtp_packets_total', { direction: 'out' }) }) },
  { id: 'traffic', title: 'Media traffic', unit: 'bit/s', rate: true, scale: 8, series: (s) => ({
      in: sum(s, 'moien_sfu_udp_bytes_total', { direction: 'in' }),
      out: sum(s, 'moien_sfu_udp_bytes_total', { direction: 'out' }) }) },
  { id: 'busy', title: 'Media worker busy fraction', unit: '', rate: true, series: (s) => {
      const w = byLabel(s, 'moien_sfu_busy_seconds_total', 'worker');
      const out = {};
      for (const k of Object.keys(w)) out['worker ' + k] = w[k];
      return out;
    } },
  { id: 'cpu', title: 'Process CPU (cores)', unit: '', rate: true, series: (s) => ({
      cpu: sum(s, 'process_cpu_seconds_total') }) },
  { id: 'memory', title: 'Resident memory', unit: 'B', series: (s) => ({
      rss: sum(s, 'process_resident_memory_bytes') }) },
  { id: 'turn', title: 'TURN relayed traffic', unit: 'bit/s', rate: true, scale: 8, series: (s) => ({
      relayed: sum(s, 'moien_turn_relayed_bytes_total') }) },
  { id: 'signaling', title: 'WebSockets and TURN allocations', unit: '', series: (s) => ({
      websockets: sum(s, 'moien_signaling_websocket_connections_active'),
      allocations: sum(s, 'moien_turn_allocations_active') }) },
];

const TILES = [
  ['Participants', (s) => sum(s, 'moien_sfu_participants')],
  ['Rooms', (s) => sum(s, 'moien_sfu_rooms')],
  ['Published tracks', (s) => sum(s, 'moien_sfu_published_tracks')],
  ['Subscriptions', (s) => sum(s, 'moien_sfu_subscriptions')],
  ['WebSockets', (s) => sum(s, 'moien_signaling_websocket_connections_active')],
  ['TURN allocations', (s) => sum(s, 'moien_turn_allocations_active')],
  ['Open files', (s) => sum(s, 'process_open_fds')],
];

const COLORS = ['#2f7ed8', '#e4572e', '#29a36a', '#a05195', '#f0a202', '#17becf', '#7f7f7f'];
const history = Object.fromEntries(PLOTS.map((p) => [p.id, []]));
let previous = null;

function human(v, unit) {
  if (v === null || !isFinite(v)) return '–';
  const abs = Math.abs(v);
  const steps = [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [f, p] of steps) {
    if (abs >= f) return (v / f).toFixed(1) + ' ' + p + unit;
  }
  return (abs < 10 && v % 1 ? v.toFixed(2) : Math.round(v)) + (unit ? ' ' + unit : '');
}

function setup() {
  const tiles = document.getElementById('tiles');
  for (const [label] of TILES) {
    const d = document.createElement('div');
    d.className = 'tile';
    d.innerHTML = '<div class="v">–</div><div class="k"></div>';
    d.querySelector('.k').textContent = label;
    tiles.appendChild(d);
  }
  const plots = document.getElementById('plots');
  for (const p of PLOTS) {
    const f = document.createElement('figure');
    const c = document.createElement('figcaption');
    c.textContent = p.title;
    const canvas = document.createElement('canvas');
    canvas.id = 'plot-' + p.id;
    f.append(c, canvas);
    plots.appendChild(f);
  }
}

function draw(plot) {
  const canvas = document.getElementById('plot-' + plot.id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const points = history[plot.id];
  const names = [...new Set(points.flatMap((p) => Object.keys(p.v)))].sort();
  let max = 0;
  for (const p of points) for (const n of names) if (isFinite(p.v[n])) max = Math.max(max, p.v[n]);
  max = max > 0 ? max * 1.1 : 1;
  const left = 64;
  const bottom = h - 18;
  g.strokeStyle = '#8886';
  g.fillStyle = '#888';
  g.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - 8) * (i / 4);
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(w, y);
    g.stroke();
    g.fillText(human(max * i / 4, plot.unit), 2, y + 4);
  }
  const now = Date.now();
  const span = KEEP * PERIOD_MS;
  const x = (t) => left + (w - left) * (1 - (now - t) / span);
  names.forEach((n, i) => {
    g.strokeStyle = COLORS[i % COLORS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    let started = false;
    for (const p of points) {
      const v = p.v[n];
      if (!isFinite(v)) { started = false; continue; }
      const y = bottom - (bottom - 8) * (v / max);
      if (started) g.lineTo(x(p.t), y); else g.moveTo(x(p.t), y);
      started = true;
    }
    g.stroke();
    const last = points.length ? points[points.length - 1].v[n] : null;
    g.fillStyle = COLORS[i % COLORS.length];
    g.fillText(n + ' ' + human(last, plot.unit), left + 6 + i * 130, h - 4);
  });
}

async function tick() {
  let samples;
  try {
    const r = await fetch('/metrics', { cache: 'no-store' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    samples = parse(await r.text());
    document.getElementById('error').textContent = '';
  } catch (e) {
    document.getElementById('error').textContent = 'cannot read /metrics: ' + e.message;
    return;
  }
  const now = Date.now();
  const info = samples.find((s) => s.name === 'moien_build_info');
  if (info) {
    document.getElementById('node').textContent = info.labels.node || '';
    document.getElementById('build').textContent =
      'version ' + info.labels.version + ', commit ' + info.labels.commit;
  }
  document.querySelectorAll('#tiles .tile .v').forEach((el, i) => {
    el.textContent = human(TILES[i][1](samples), '');
  });
  for (const p of PLOTS) {
    const raw = p.series(samples);
    let v = raw;
    if (p.rate) {
      v = {};
      const prev = previous && previous.raw[p.id];
      for (const [k, val] of Object.entries(raw)) {
        const before = prev ? prev[k] : null;
        const dt = previous ? (now - previous.t) / 1000 : 0;
        // A counter that went down means a restart: no rate for that step.
        v[k] = before !== null && before !== undefined && val !== null && dt > 0 && val >= before
          ? (val - before) / dt * (p.scale || 1) : NaN;
      }
    }
    const h = history[p.id];
    h.push({ t: now, v });
    while (h.length > KEEP) h.shift();
    draw(p);
  }
  previous = { t: now, raw: Object.fromEntries(PLOTS.map((p) => [p.id, p.series(samples)])) };
}

setup();
tick();
setInterval(tick, PERIOD_MS);
window.addEventListener('resize', () => PLOTS.forEach(draw));
