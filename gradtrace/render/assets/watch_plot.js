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

var FONT_PX = 11;  // the charts' label font size

// A tick label: as short as the number allows (2e-4, 0.5, 1200), with `digits` significant digits at most.
function tickText(x, digits) {
  if (x === 0) return "0";
  var a = Math.abs(x);
  if (a >= 1e-3 && a < 1e5) return String(Number(x.toPrecision(digits)));
  return x.toExponential(Math.max(0, digits - 1)).replace(/\.?0+e/, "e").replace("e+", "e");
}

// Labels for tick values: 4 significant digits, more where 4 would print two ticks alike (a narrow range).
function tickTexts(values) {
  for (var digits = 4; digits <= 15; digits++) {
    var texts = values.map(function (v) { return tickText(v, digits); }), seen = {}, alike = false;
    texts.forEach(function (t) { if (seen[t]) alike = true; seen[t] = true; });
    if (!alike) return texts;
  }
  return null;  // (values that no printing tells apart: a set never chosen)
}

// Round numbers in [lo, hi]: for each unit 1, 2, 5 × 10^k, from fine to coarse, the multiples of it.
function linearTickValues(lo, hi, integer) {
  var span = hi - lo, out = [];
  if (!(span > 0) || !isFinite(span)) return out;
  var e0 = Math.floor(Math.log10(span)) - 2, e1 = Math.ceil(Math.log10(span));
  for (var e = e0; e <= e1; e++) {
    [1, 2, 5].forEach(function (m) {
      var unit = m * Math.pow(10, e), values = [];
      if (integer && unit < 1) return;
      var from = Math.ceil(lo / unit - 1e-9), to = Math.floor(hi / unit + 1e-9);
      if (to - from > 60) return;  // far more than any axis has room for
      for (var k = from; k <= to; k++) values.push(Number((k * unit).toPrecision(12)));
      out.push(values);
    });
  }
  return out;
}

// The candidate tick sets of an axis over [lo, hi] (log10 units when log): lists of {at, text}.
function tickSets(lo, hi, log, integer) {
  var sets = [];
  function add(values, at) {
    var texts = tickTexts(values);
    if (texts) sets.push(values.map(function (v, k) { return { at: at(v), text: texts[k] }; }));
  }
  if (!log) {
    linearTickValues(lo, hi, integer).forEach(function (vs) { add(vs, function (v) { return v; }); });
    return sets;
  }
  var at = function (v) { return Math.log10(v); };
  // Within each decade: 1..9, then 1, 2, 5, then the powers of ten alone (every 1, 2, 3, 5, 10... decades).
  [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 5]].forEach(function (mults) {
    var values = [];
    for (var d = Math.floor(lo); d <= Math.ceil(hi); d++) {
      mults.forEach(function (m) {
        var v = Number((m * Math.pow(10, d)).toPrecision(12)), x = Math.log10(v);
        if (x >= lo - 1e-9 && x <= hi + 1e-9) values.push(v);
      });
    }
    add(values, at);
  });
  [1, 2, 3, 5, 10, 20, 50, 100].forEach(function (every) {
    var values = [];
    for (var d = Math.ceil(lo / every - 1e-9) * every; d <= hi + 1e-9; d += every) values.push(Math.pow(10, d));
    add(values, at);
  });
  // A narrow range (under two decades) is nearly linear: round values of it, 0.04 0.06 0.08, read better.
  if (hi - lo < 2) linearTickValues(Math.pow(10, lo), Math.pow(10, hi), false).forEach(function (vs) {
    add(vs.filter(function (v) { return v > 0; }), at);
  });
  return sets;
}

// The ticks of an axis `length` px long: of the candidate sets whose labels keep clear of each other
// (`extent(text)`: a label's size along the axis, px; `gap` px between neighbours) and number at most
// `most`, the one with the most ticks; the natural sets first on a tie. A single tick where no two fit.
function ticks(lo, hi, log, length, extent, gap, most, integer) {
  var best = null;
  tickSets(lo, hi, log, integer).forEach(function (set) {
    set = set.filter(function (t) { return t.at >= lo - 1e-9 * Math.max(1, Math.abs(lo)) && t.at <= hi + 1e-9 * Math.max(1, Math.abs(hi)); });
    if (!set.length || set.length > Math.max(1, most)) return;
    for (var k = 1; k < set.length; k++) {
      var apart = (set[k].at - set[k - 1].at) / (hi - lo) * length;
      if (apart < (extent(set[k].text) + extent(set[k - 1].text)) / 2 + gap) return;
    }
    if (!best || set.length > best.length) best = set;
  });
  return best || [];
}

// A line chart. opts: xs (step numbers), lines [{ys, color, xs (its own steps, else opts.xs)}], log, cursor (a step or null),
// hover (a step or null), markers [{step, color}], compact (small chart: fewer labels).
// Non-finite samples get a triangle at the top edge in the alarm colour; zeros on a log scale sit
// on the bottom edge. Returns the geometry: {x(step) -> px, index(px) -> nearest sample index}.
function lineChart(canvas, opts) {
  var c = fitCanvas(canvas, opts.height), ctx = c.ctx;
  var right = 10, top = 10, bottom = 20, ph = Math.max(10, c.h - top - bottom);
  ctx.font = FONT_PX + "px sans-serif";
  var range = yRange(opts.lines.map(function (l) { return l.ys; }), opts.log);
  var lo = range ? range[0] : 0, hi = range ? range[1] : 1;
  // The y ticks first: the left margin is as wide as their widest label (a narrow range needs more digits).
  var yTicks = range ? ticks(lo, hi, opts.log, ph, function () { return FONT_PX; }, 4, Math.floor(ph / 22), false) : [];
  var left = opts.compact ? 46 : 58;
  yTicks.forEach(function (t) { left = Math.max(left, Math.ceil(ctx.measureText(t.text).width) + 8); });
  left = Math.min(left, Math.max(20, Math.floor(c.w / 3)));
  var pw = Math.max(10, c.w - left - right);
  var xs = opts.xs, n = xs.length;
  var x0 = n ? xs[0] : Infinity, x1 = n ? xs[n - 1] : -Infinity;
  opts.lines.forEach(function (l) {  // a line may have steps of its own (each optimizer's loss): the axis spans them all
    if (l.xs && l.xs.length) { x0 = Math.min(x0, l.xs[0]); x1 = Math.max(x1, l.xs[l.xs.length - 1]); }
  });
  if (x0 > x1) { x0 = 0; x1 = 1; }
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
  ctx.lineWidth = 1;
  if (!range) {
    ctx.fillStyle = muted;
    ctx.fillText(opts.empty || "no finite samples", left + 8, top + ph / 2);
  }
  function Y(v) {
    if (opts.log) v = v > 0 ? Math.log10(v) : lo;
    return top + ph - (v - lo) / (hi - lo) * ph;
  }
  // grid and axes
  ctx.strokeStyle = grid;
  ctx.fillStyle = muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  var labels = [];  // each tick label's box, in CSS pixels: the page's tests read them (canvas text is not in the DOM)
  yTicks.forEach(function (t) {
    var y = top + ph - (t.at - lo) / (hi - lo) * ph, w = ctx.measureText(t.text).width;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + pw, y + 0.5); ctx.stroke();
    ctx.fillText(t.text, left - 4, y);
    labels.push({ axis: "y", text: t.text, x: left - 4 - w, y: y - FONT_PX / 2, w: w, h: FONT_PX });
  });
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  // Step numbers: whole steps only, labels at least 12 px apart. They sit below the bottom y label's reach.
  var xTicks = ticks(x0, x1, false, pw, function (text) { return ctx.measureText(text).width; }, 12, Math.floor(pw / 40) + 1, true);
  xTicks.forEach(function (t) {
    var w = ctx.measureText(t.text).width, half = w / 2;  // a label at the right edge stays inside the canvas
    var x = Math.min(X(t.at), c.w - half - 1);
    ctx.fillText(t.text, x, top + ph + 7);
    labels.push({ axis: "x", text: t.text, x: x - half, y: top + ph + 7, w: w, h: FONT_PX });
  });
  canvas.dataset.ticks = JSON.stringify(labels);
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
    var ys = line.ys, lxs = line.xs || xs;
    ctx.strokeStyle = line.color;
    ctx.fillStyle = alarm;
    ctx.lineWidth = opts.compact ? 1.2 : 1.5;
    ctx.beginPath();
    var pen = false, bad = [];
    for (var i = 0; i < ys.length; i++) {
      var v = ys[i], x = X(lxs[i]);
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
