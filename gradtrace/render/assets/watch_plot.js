// watch_plot.js: drawing on canvases. Pure functions of (canvas, numbers, colours) -> pixels and a
// geometry object that maps pixels back to sample indices; no page state lives here.
// Samples are numbers, NaN, +-Infinity (non-finite: drawn as markers) or null (missing: a gap).

function toNumber(x) {
  if (x === "NaN") return NaN;
  if (x === "inf") return Infinity;
  if (x === "-inf") return -Infinity;
  return x;  // a number or null
}

// A series as the page holds it: a JSON list, or {f32: base64 little-endian float32, null: [indices]}.
// Decoded into a Float32Array (no copy per sample) where the machine is little-endian, as browsers' are.
var LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function decodeSeries(x) {
  if (Array.isArray(x)) return x.map(toNumber);
  var bin = atob(x.f32), bytes = new Uint8Array(bin.length), n = bin.length >> 2, out;
  for (var b = 0; b < bin.length; b++) bytes[b] = bin.charCodeAt(b);
  if (LITTLE_ENDIAN) out = new Float32Array(bytes.buffer);
  else {
    var view = new DataView(bytes.buffer);
    out = new Float32Array(n);
    for (var i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  }
  if (!x["null"] || !x["null"].length) return out;
  out = Array.prototype.slice.call(out);  // a missing sample is null, which a typed array cannot hold
  x["null"].forEach(function (k) { out[k] = null; });
  return out;
}

function fmtNum(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "string") return x;
  if (isNaN(x)) return "NaN";
  if (!isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return "0";
  var a = Math.abs(x);
  return (a >= 1e-3 && a < 1e5) ? String(Number(x.toPrecision(4))) : x.toExponential(3);
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// The canvas's backing store matches its CSS size times the device pixel ratio; returns a context
// scaled so that drawing happens in CSS pixels.
function fitCanvas(canvas, cssHeight) {
  var dpr = window.devicePixelRatio || 1;
  var w = Math.max(10, canvas.clientWidth), h = cssHeight || canvas.clientHeight || 100;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  canvas.dataset.drawnWidth = String(w);  // the page redraws a canvas whose box has since changed width
  var ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx: ctx, w: w, h: h };
}

// The y range of some series: [lo, hi] of the finite values, in log10 when log (positive values only).
function yRange(seriesList, log) {
  var lo = Infinity, hi = -Infinity;
  seriesList.forEach(function (ys) {
    for (var i = 0; i < ys.length; i++) {
      var v = ys[i];
      if (v === null || !isFinite(v)) continue;
      if (log) { if (v <= 0) continue; v = Math.log10(v); }
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  });
  if (lo === Infinity) return null;
  if (hi - lo < 1e-12) { lo -= log ? 0.5 : (Math.abs(lo) * 0.1 || 1); hi += log ? 0.5 : (Math.abs(hi) * 0.1 || 1); }
  return [lo, hi];
}

// Whether a log scale can show these series at all (some positive value, no negative one).
function logFits(seriesList) {
  var pos = false;
  for (var s = 0; s < seriesList.length; s++) {
    for (var i = 0; i < seriesList[s].length; i++) {
      var v = seriesList[s][i];
      if (v === null || !isFinite(v)) continue;
      if (v < 0) return false;
      if (v > 0) pos = true;
    }
  }
  return pos;
}

// A tick label: as short as the number allows (2e-4, 0.5, 1200).
function tickText(x) {
  if (x === 0) return "0";
  var a = Math.abs(x);
  if (a >= 1e-3 && a < 1e5) return String(Number(x.toPrecision(4)));
  return x.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
}

function ticks(lo, hi, log) {
  var out = [];
  if (log) {
    if (hi - lo < 1.5) {  // less than two decades: 1, 2, 5 of each decade, so the axis has numbers on it
      var sets = [[1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]];  // the finer set where the coarse one gives one tick
      for (var k = 0; k < sets.length; k++) {
        out = [];
        for (var d = Math.floor(lo); d <= Math.ceil(hi); d++) {
          sets[k].forEach(function (m) {
            var at = d + Math.log10(m);
            if (at >= lo - 1e-9 && at <= hi + 1e-9) out.push({ at: at, text: tickText(m * Math.pow(10, d)) });
          });
        }
        if (out.length >= 2) return out;
      }
      return [{ at: lo, text: tickText(Math.pow(10, lo)) }, { at: hi, text: tickText(Math.pow(10, hi)) }];
    }
    var step = Math.max(1, Math.ceil((hi - lo) / 5));
    for (var e = Math.ceil(lo); e <= hi + 1e-9; e += step) out.push({ at: e, text: tickText(Math.pow(10, e)) });
    return out;
  }
  var span = hi - lo, mag = Math.pow(10, Math.floor(Math.log10(span / 4))), unit = mag;
  [1, 2, 5, 10].some(function (m) { unit = m * mag; return span / unit <= 5; });
  for (var t = Math.ceil(lo / unit) * unit; t <= hi + unit * 1e-9; t += unit) out.push({ at: t, text: tickText(Number(t.toPrecision(6))) });
  return out;
}

// A line chart. opts: xs (step numbers), lines [{ys, color}], log, cursor (a step or null),
// hover (a step or null), markers [{step, color}], compact (small chart: fewer labels).
// Non-finite samples get a triangle at the top edge in the alarm colour; zeros on a log scale sit
// on the bottom edge. Returns the geometry: {x(step) -> px, index(px) -> nearest sample index}.
function lineChart(canvas, opts) {
  var c = fitCanvas(canvas, opts.height), ctx = c.ctx;
  var left = opts.compact ? 46 : 58, right = 10, top = 10, bottom = 20;
  var pw = Math.max(10, c.w - left - right), ph = Math.max(10, c.h - top - bottom);
  var xs = opts.xs, n = xs.length;
  var x0 = n ? xs[0] : 0, x1 = n ? xs[n - 1] : 1;
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  var fg = cssVar("--fg"), muted = cssVar("--muted"), grid = cssVar("--line"), alarm = cssVar("--alarm");
  function X(step) { return left + (step - x0) / (x1 - x0) * pw; }
  var geometry = {
    x: X,
    index: function (px) {
      if (!n) return -1;
      var step = x0 + (px - left) / pw * (x1 - x0), lo = 0, hi = n - 1;
      while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] <= step) lo = mid; else hi = mid; }
      return Math.abs(xs[lo] - step) <= Math.abs(xs[hi] - step) ? lo : hi;
    }
  };
  ctx.font = "11px sans-serif";
  ctx.lineWidth = 1;
  var range = yRange(opts.lines.map(function (l) { return l.ys; }), opts.log);
  if (!range) {
    ctx.fillStyle = muted;
    ctx.fillText(opts.empty || "no finite samples", left + 8, top + ph / 2);
  }
  var lo = range ? range[0] : 0, hi = range ? range[1] : 1;
  function Y(v) {
    if (opts.log) v = v > 0 ? Math.log10(v) : lo;
    return top + ph - (v - lo) / (hi - lo) * ph;
  }
  // grid and axes
  ctx.strokeStyle = grid;
  ctx.fillStyle = muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  if (range) ticks(lo, hi, opts.log).forEach(function (t) {
    var y = top + ph - (t.at - lo) / (hi - lo) * ph;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + pw, y + 0.5); ctx.stroke();
    ctx.fillText(t.text, left - 4, y);
  });
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  var xt = ticks(x0, x1, false);
  xt.forEach(function (t) {
    if (t.at < x0 || t.at > x1) return;
    var half = ctx.measureText(t.text).width / 2;  // a label at the right edge stays inside the canvas
    ctx.fillText(t.text, Math.min(X(t.at), c.w - half - 1), top + ph + 4);
  });
  ctx.strokeStyle = muted;
  ctx.strokeRect(left + 0.5, top + 0.5, pw, ph);
  // event markers: a vertical line per event, in its kind's colour
  (opts.markers || []).forEach(function (m) {
    if (m.step < x0 || m.step > x1) return;
    ctx.strokeStyle = m.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(Math.round(X(m.step)) + 0.5, top); ctx.lineTo(Math.round(X(m.step)) + 0.5, top + ph); ctx.stroke();
    ctx.setLineDash([]);
  });
  // lines; many samples per pixel are drawn as a min-max band per pixel column
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top - 1, pw, ph + 2); ctx.clip();
  opts.lines.forEach(function (line) {
    var ys = line.ys;
    ctx.strokeStyle = line.color;
    ctx.fillStyle = alarm;
    ctx.lineWidth = opts.compact ? 1.2 : 1.5;
    ctx.beginPath();
    var pen = false, bad = [];
    for (var i = 0; i < ys.length; i++) {
      var v = ys[i], x = X(xs[i]);
      if (v === null || v === undefined) { pen = false; continue; }
      if (!isFinite(v)) { bad.push(x); pen = false; continue; }
      var y = Y(v);
      if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); pen = true; }
      if (ys.length < 2 || (i > 0 && (ys[i - 1] === null || !isFinite(ys[i - 1])) && (i + 1 >= ys.length || ys[i + 1] === null || !isFinite(ys[i + 1])))) {
        ctx.fillStyle = line.color; ctx.fillRect(x - 1.5, y - 1.5, 3, 3);  // an isolated sample is a dot
      }
    }
    ctx.stroke();
    ctx.fillStyle = alarm;
    var lastPx = -10;
    bad.forEach(function (x) {
      if (x - lastPx < 3) return;  // one triangle per few pixels is enough to see where
      lastPx = x;
      ctx.beginPath(); ctx.moveTo(x - 4, top); ctx.lineTo(x + 4, top); ctx.lineTo(x, top + 7); ctx.closePath(); ctx.fill();
    });
  });
  ctx.restore();
  // the selected step and the hovered one
  function vline(step, color, width) {
    if (step === null || step === undefined || step < x0 || step > x1) return;
    ctx.strokeStyle = color; ctx.lineWidth = width;
    ctx.beginPath(); ctx.moveTo(Math.round(X(step)) + 0.5, top); ctx.lineTo(Math.round(X(step)) + 0.5, top + ph); ctx.stroke();
  }
  vline(opts.cursor, fg, 1.5);
  vline(opts.hover, muted, 1);
  ctx.lineWidth = 1;
  return geometry;
}

// A sparkline: one min-max band per pixel column, log or linear; a non-finite sample paints its
// column in the alarm colour over the full height.
function sparkline(canvas, xs, ys, log, color) {
  var c = fitCanvas(canvas), ctx = c.ctx, w = c.w, h = c.h, n = ys.length;
  if (!n) return;
  var range = yRange([ys], log), alarm = cssVar("--alarm");
  var cols = Math.max(1, Math.floor(w)), mins = new Float64Array(cols), maxs = new Float64Array(cols), bad = new Uint8Array(cols);
  mins.fill(Infinity); maxs.fill(-Infinity);
  var x0 = xs[0], span = (xs[n - 1] - x0) || 1;
  for (var i = 0; i < n; i++) {
    var col = Math.min(cols - 1, Math.floor((xs[i] - x0) / span * (cols - 1)));
    var v = ys[i];
    if (v === null) continue;
    if (!isFinite(v)) { bad[col] = 1; continue; }
    if (log) v = v > 0 ? Math.log10(v) : (range ? range[0] : 0);
    if (v < mins[col]) mins[col] = v;
    if (v > maxs[col]) maxs[col] = v;
  }
  ctx.fillStyle = alarm;
  for (var b = 0; b < cols; b++) if (bad[b]) ctx.fillRect(b, 0, 1, h);
  if (!range) return;
  var lo = range[0], hi = range[1];
  function Y(v) { return 1 + (h - 2) * (1 - (v - lo) / (hi - lo)); }
  if (n < cols / 2) {
    // Few samples (a long --every): a line through them, so they read as a curve and not as dots.
    ctx.strokeStyle = color;
    ctx.lineWidth = 1;
    ctx.beginPath();
    var pen = false;
    for (var j = 0; j < n; j++) {
      var u = ys[j];
      if (u === null || !isFinite(u)) { pen = false; continue; }
      var px = (xs[j] - x0) / span * (w - 2) + 1, py = Y(log ? (u > 0 ? Math.log10(u) : lo) : u);
      if (pen) ctx.lineTo(px, py); else { ctx.moveTo(px, py); ctx.lineTo(px + 0.5, py); pen = true; }
    }
    ctx.stroke();
    return;
  }
  ctx.fillStyle = color;
  for (var k = 0; k < cols; k++) {
    if (maxs[k] === -Infinity) continue;
    var ya = Y(maxs[k]), yb = Y(mins[k]);
    ctx.fillRect(k, ya - 0.5, 1, Math.max(1, yb - ya + 1));
  }
}

// Colour map for the heat map: perceptually ordered dark blue -> teal -> yellow (viridis-like stops).
var HEAT_STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function heatColor(t) {
  t = Math.max(0, Math.min(1, t)) * (HEAT_STOPS.length - 1);
  var i = Math.min(HEAT_STOPS.length - 2, Math.floor(t)), f = t - i, a = HEAT_STOPS[i], b = HEAT_STOPS[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

// The heat map: one row per series, one column per sample (or per bucket of samples where there are
// more samples than pixels: the bucket shows its largest value, so a spike never averages away).
// Colour is the log of the value (linear when !log); non-finite cells are the alarm colour, missing
// ones the background. Returns the geometry: {cell(px, py) -> {row, index}}.
function heatMap(canvas, rows, n, log, rowH) {
  var height = Math.max(rowH, rows.length * rowH);
  var c = fitCanvas(canvas, height), ctx = c.ctx;
  var cols = Math.max(1, Math.min(n, Math.floor(c.w))), per = n / cols;
  var range = yRange(rows, log), lo = range ? range[0] : 0, hi = range ? range[1] : 1;
  var alarm = cssVar("--alarm"), bg = cssVar("--bg");
  var img = ctx.createImageData(cols, Math.max(1, rows.length));
  var ar = parseInt(alarm.slice(1, 3), 16), ag = parseInt(alarm.slice(3, 5), 16), ab = parseInt(alarm.slice(5, 7), 16);
  var br = parseInt(bg.slice(1, 3), 16), bgG = parseInt(bg.slice(3, 5), 16), bb = parseInt(bg.slice(5, 7), 16);
  for (var r = 0; r < rows.length; r++) {
    var ys = rows[r];
    for (var col = 0; col < cols; col++) {
      var from = Math.floor(col * per), to = Math.max(from + 1, Math.floor((col + 1) * per));
      var best = null, bad = false;
      for (var i = from; i < to && i < n; i++) {
        var v = ys[i];
        if (v === null || v === undefined) continue;
        if (!isFinite(v)) { bad = true; break; }
        if (log) v = v > 0 ? Math.log10(v) : lo;
        if (best === null || v > best) best = v;
      }
      var o = (r * cols + col) * 4, rgb;
      if (bad) rgb = [ar, ag, ab];
      else if (best === null) rgb = [br, bgG, bb];
      else rgb = heatColor((best - lo) / (hi - lo));
      img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 255;
    }
  }
  // Paint the small image, then scale it up without smoothing: crisp cells at any size.
  var off = document.createElement("canvas");
  off.width = cols; off.height = Math.max(1, rows.length);
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, c.w, rows.length * rowH);
  return {
    range: range,
    cell: function (px, py) {
      var row = Math.floor(py / rowH), index = Math.floor(Math.max(0, Math.min(c.w - 1e-6, px)) / c.w * n);
      return { row: row, index: Math.min(n - 1, index) };
    }
  };
}
