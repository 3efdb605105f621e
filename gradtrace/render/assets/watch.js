// watch.js: the watch page. Data in (the JSON), view state (metric, scale, selected row and step,
// search), drawing out (watch_plot.js, watch_tree.js). Every string from the history reaches the
// page through textContent; embedded traces go into a sandboxed iframe's srcdoc property.

var data = JSON.parse(document.getElementById("gradtrace-watch-data").textContent);
var t0 = performance.now();
var $ = function (id) { return document.getElementById(id); };
var steps = data.steps, nSteps = steps.length;
var KNOWN = ["grad_norm", "out_rms", "update_ratio", "grad_rms", "value_norm", "out_nonfinite", "grad_nonfinite"];
var PALETTE = ["--line1", "--line2", "--line3", "--line4"];
var KIND_COLOR = { alarm: "--alarm", skipped: "--skipped", warning: "--warning" };

data.rows.forEach(function (r) { Object.keys(r.s).forEach(function (m) { r.s[m] = decodeSeries(r.s[m]); }); });
data.loss = decodeSeries(data.loss);
data.lr.forEach(function (g) { g.values = decodeSeries(g.values); });
Object.keys(data.clip).forEach(function (k) { data.clip[k] = decodeSeries(data.clip[k]); });
Object.keys(data.losses).forEach(function (k) { data.losses[k] = decodeSeries(data.losses[k]); });
var lossXs = data.lossAll.length ? data.lossAll.map(function (p) { return p[0]; }) : steps;
var lossYs = data.lossAll.length ? data.lossAll.map(function (p) { return toNumber(p[1]); }) : data.loss;

// The loss chart's lines: one per optimizer when there are several (a GAN's D and G, each its own
// loss: every step's where the history has it, else the sampled steps'), else the one loss.
var optByName = {};
data.optimizers.forEach(function (o) { optByName[o.name] = o; });
function optimizerLabel(name) {  // "opt1 Adam → Generator": the optimizer, and the models it steps
  var o = optByName[name], roots = o && o.roots ? o.roots.map(function (r) { return r || "(model)"; }) : [];
  if (roots.length === 1 && roots[0] === "(model)") roots = [];  // one unnamed model: nothing to tell apart
  return [name, o && o.type].filter(Boolean).join(" ") + (roots.length ? " → " + roots.join(", ") : "");
}
var lossLines = [];
if (Object.keys(data.lossesAll).length > 1) {
  lossLines = Object.keys(data.lossesAll).map(function (k) {
    var pairs = data.lossesAll[k];
    return { name: k, xs: pairs.map(function (p) { return p[0]; }), ys: pairs.map(function (p) { return toNumber(p[1]); }) };
  });
} else if (Object.keys(data.losses).length > 1) {
  lossLines = Object.keys(data.losses).map(function (k) { return { name: k, xs: steps, ys: data.losses[k] }; });
}
if (!lossLines.length) lossLines = [{ name: "", xs: lossXs, ys: lossYs }];
buildTree(data.rows);

var rowByKey = { module: {}, param: {} };
data.rows.forEach(function (r) { rowByKey[r.kind][r.key] = r; });
var traceByStep = {};
data.traces.forEach(function (t) { traceByStep[t.step] = t; });

// Every metric key present anywhere, the usual ones first.
var metrics = [];
data.rows.forEach(function (r) { Object.keys(r.s).forEach(function (m) { if (metrics.indexOf(m) < 0) metrics.push(m); }); });
metrics.sort(function (a, b) {
  var ia = KNOWN.indexOf(a), ib = KNOWN.indexOf(b);
  return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : a > b ? 1 : 0);
});

function metricLabel(m) { return data.metricLabels[m] || m; }
function defaultLog(metric) { return !/nonfinite|count/.test(metric); }
function firstRowWith(metric) {
  for (var i = 0; i < data.rows.length; i++) if (data.rows[i].s[metric]) return i;
  return 0;
}

var state = {
  metric: metrics[0] || "", log: defaultLog(metrics[0] || ""), row: 0, i: 0, hover: null, filter: "",
  theme: window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"
};
state.row = firstRowWith(state.metric);
state.i = data.firstAlarm !== null && nSteps ? indexOfStep(data.firstAlarm) : 0;
document.documentElement.dataset.theme = state.theme;
function themeLabel() { $("theme").textContent = state.theme === "dark" ? "light" : "dark"; }
themeLabel();

function indexOfStep(step) {  // the sampled step at or after `step` (the last one past the end)
  for (var i = 0; i < nSteps; i++) if (steps[i] >= step) return i;
  return nSteps - 1;
}

// -- header -------------------------------------------------------------------------------
// How the steps were sampled, as done: a fixed --every says its period; the adaptive default (its
// period changes as it measures the run, so no one period is true) says the intervals it took,
// read off the sampled steps themselves: "adaptive: every 10 to step 11, then every 1".
function samplingText() {
  var adaptive = /^adaptive/.test(data.everyRule);
  if (!adaptive) return data.every !== null ? "every " + data.every : "";
  var runs = [];  // [interval, last step of the run of that interval]
  for (var i = 1; i < nSteps; i++) {
    var gap = steps[i] - steps[i - 1];
    if (runs.length && runs[runs.length - 1][0] === gap) runs[runs.length - 1][1] = steps[i];
    else runs.push([gap, steps[i]]);
  }
  if (!runs.length) return "adaptive";
  if (runs.length > 3) {
    var gaps = runs.map(function (r) { return r[0]; });
    return "adaptive: intervals of " + Math.min.apply(null, gaps) + " to " + Math.max.apply(null, gaps) + " steps";
  }
  return "adaptive: " + runs.map(function (r, k) {
    return "every " + r[0] + (k < runs.length - 1 ? " to step " + r[1] : "");
  }).join(", then ");
}

$("runname").textContent = data.script || "run";
var info = data.stepsRun !== null ? nSteps + " of " + data.stepsRun + " steps sampled" : nSteps + " sampled step" + (nSteps === 1 ? "" : "s");
var sampling = samplingText();
if (sampling) info += " (" + sampling + ")";
info += " · " + data.rows.filter(function (r) { return r.kind === "module"; }).length + " modules";
if (data.optimizers.length) info += " · " + data.optimizers.map(function (o) { return optimizerLabel(o.name); }).join(", ");
if (data.firstAlarm !== null) info += " · first alarm at step " + data.firstAlarm;
var oh = data.overhead;
if (oh && typeof oh.plain_s === "number" && typeof oh.watched_s === "number" && oh.plain_s > 0) {
  info += " · overhead " + (oh.watched_s / oh.plain_s).toFixed(2) + "×";
}
$("runinfo").textContent = info;
$("runinfo").title = data.everyRule ? "sampling: " + data.everyRule : "";
metrics.forEach(function (m) {
  var o = document.createElement("option");
  o.value = m; o.textContent = metricLabel(m);
  $("metric").appendChild(o);
});

// -- the tree -----------------------------------------------------------------------------
var tree = makeTreeView($("tree"), data.rows,
  function (r) { state.row = r.index; refresh({ tree: true, chart: true, side: true, heatCursor: true }); },
  function () { refresh({ tree: true, sparks: true, heat: true }); });
var shownRows = [];

function drawSparks() {
  var color = cssVar("--line1");
  shownRows.forEach(function (r) {
    var ys = r.s[state.metric], canvas = tree.views[r.index].spark;
    if (!ys) { fitCanvas(canvas); return; }
    sparkline(canvas, steps, ys, state.log && logFits([ys]), color);
  });
}

// -- the charts ---------------------------------------------------------------------------
var markers = [];
function makeMarkers() {
  markers = data.events.map(function (e) { return { step: e.step, color: cssVar(KIND_COLOR[e.kind] || "--muted") }; });
}
var chartGeo = null;

function selectedSeries() { var r = data.rows[state.row]; return r ? r.s[state.metric] || null : null; }

function drawMain() {
  var r = data.rows[state.row], ys = selectedSeries();
  var log = state.log && !!ys && logFits([ys]);
  $("charttitle").textContent = (r ? (r.full || "(model)") : "") + " · " + metricLabel(state.metric) + (log ? " (log scale)" : "");
  $("chart").dataset.row = r ? r.kind + ":" + r.key : "";
  $("chart").dataset.metric = state.metric;
  chartGeo = lineChart($("chart"), {
    xs: steps, lines: ys ? [{ ys: ys, color: cssVar("--line1") }] : [], log: log, height: 260,
    cursor: steps[state.i], hover: state.hover === null ? null : steps[state.hover], markers: markers,
    empty: "no " + metricLabel(state.metric) + " recorded for " + (r && r.kind === "param" ? "this parameter" : "this module")
  });
  readout();
}

function readout() {
  var ys = selectedSeries(), i = state.hover === null ? state.i : state.hover;
  var text = "step " + steps[i] + " · " + metricLabel(state.metric) + " = " + (ys ? fmtNum(ys[i]) : "–");
  $("readout").textContent = nSteps ? text : "no sampled steps";
  $("readout").dataset.step = nSteps ? String(steps[i]) : "";
}

// A legend: each name in its line's colour (set through the CSSOM: the policy allows no style attribute).
function legend(el, names) {
  el.textContent = "";
  names.forEach(function (name, k) {
    var s = document.createElement("span");
    s.textContent = "— " + name;
    s.style.color = cssVar(PALETTE[k % PALETTE.length]);
    el.appendChild(s);
  });
}

function drawSmall() {
  var clipKeys = Object.keys(data.clip);
  $("clipbox").hidden = !clipKeys.length;  // first: it decides how wide the other two are
  legend($("lrlegend"), data.lr.map(function (g) { return g.name; }));
  legend($("cliplegend"), clipKeys);
  var cursor = steps[state.i];
  var several = lossLines.length > 1;
  legend($("losslegend"), several ? lossLines.map(function (l) { return optimizerLabel(l.name); }) : []);
  $("losschart").dataset.series = JSON.stringify(lossLines.map(function (l) { return l.name; }));
  var lines = lossLines.map(function (l, k) { return { xs: l.xs, ys: l.ys, color: cssVar(PALETTE[k % PALETTE.length]) }; });
  lineChart($("losschart"), { xs: lossLines[0].xs, lines: lines, log: logFits(lines.map(function (l) { return l.ys; })),
    height: 120, cursor: cursor, markers: markers, compact: true, empty: "no loss recorded" });
  lineChart($("lrchart"), { xs: steps, lines: data.lr.map(function (g, k) { return { ys: g.values, color: cssVar(PALETTE[k % PALETTE.length]) }; }),
    log: false, height: 120, cursor: cursor, compact: true, empty: "no learning rate recorded" });
  if (clipKeys.length) {
    var lines = clipKeys.map(function (k, n) { return { ys: data.clip[k], color: cssVar(PALETTE[n % PALETTE.length]) }; });
    lineChart($("clipchart"), { xs: steps, lines: lines, log: logFits(lines.map(function (l) { return l.ys; })), height: 120,
      cursor: cursor, markers: markers, compact: true });
  }
}

// -- the heat map: the shown tree rows that have the metric, × the sampled steps --------------
var heatRows = [], heatGeo = null, heatRowH = 8;
function drawHeat() {
  heatRows = shownRows.filter(function (r) { return !!r.s[state.metric]; });
  heatRowH = Math.max(3, Math.min(14, Math.floor(480 / Math.max(1, heatRows.length))));
  var log = state.log && logFits(heatRows.map(function (r) { return r.s[state.metric]; }));
  $("heattitle").textContent = metricLabel(state.metric) + " · " + heatRows.length + " rows (the tree's) × " + nSteps + " steps" +
    (log ? " (colour: log10)" : "") + (heatRows.length ? "" : ": no shown row has this metric");
  heatGeo = heatMap($("heat"), heatRows.map(function (r) { return r.s[state.metric]; }), nSteps, log, heatRowH);
  $("heat").dataset.rows = String(heatRows.length);
  heatCursor();
  heatLabels();
}

// The heat map's row labels, left of it: as many rows as there is room for (a label is 12 px tall,
// rows may be 3), always the selected row and the hovered one; a long name keeps its tail ("…attn.q"),
// the whole name in the label's tooltip and in the read-out under the map.
var heatHover = null, LABEL_H = 12, measurer = document.createElement("canvas").getContext("2d");
function fitTail(text, width) {
  measurer.font = "11px sans-serif";
  if (measurer.measureText(text).width <= width) return text;
  var lo = 0, hi = text.length;  // the longest tail that fits after "…"
  while (lo < hi) {
    var mid = (lo + hi + 1) >> 1;
    if (measurer.measureText("…" + text.slice(text.length - mid)).width <= width) lo = mid; else hi = mid - 1;
  }
  var tail = text.slice(text.length - lo), first = tail.charCodeAt(0);
  if (first >= 0xDC00 && first <= 0xDFFF) tail = tail.slice(1);  // never half a surrogate pair
  return "…" + tail;
}
var heatLabelsFor = null;  // the selected row the labels were placed for
function heatLabels() {
  heatLabelsFor = state.row;
  var box = $("heatlabels"), height = $("heat").clientHeight, width = box.clientWidth - 6;
  box.textContent = "";
  box.style.height = height + "px";
  if (width < 12 || !heatRows.length) return;
  var selected = heatRows.indexOf(data.rows[state.row]), kept = [];
  function topOf(k) { return Math.max(0, Math.min(height - LABEL_H, Math.round((k + 0.5) * heatRowH - LABEL_H / 2))); }
  function place(k) {
    if (k === null || k < 0 || k >= heatRows.length) return;
    var top = topOf(k);
    for (var j = 0; j < kept.length; j++) if (kept[j].k === k || Math.abs(kept[j].top - top) < LABEL_H + 1) return;
    kept.push({ k: k, top: top });
  }
  place(heatHover);
  place(selected);
  var stride = Math.max(1, Math.ceil((LABEL_H + 1) / heatRowH));
  for (var k = 0; k < heatRows.length; k += stride) place(k);
  kept.forEach(function (l) {
    var r = heatRows[l.k], full = r.full || "(model)", el = document.createElement("div");
    el.className = "hl" + (l.k === heatHover ? " hover" : "") + (l.k === selected ? " selected" : "");
    el.textContent = fitTail(full, width);
    el.title = full;
    el.dataset.row = String(l.k);
    el.style.top = l.top + "px";
    box.appendChild(el);
  });
}
function heatCursor() {
  var canvas = $("heat"), w = canvas.clientWidth, cur = $("heatcursor"), band = $("heatband");
  cur.style.left = (canvas.offsetLeft + (state.i + 0.5) / Math.max(1, nSteps) * w) + "px";
  cur.style.top = canvas.offsetTop + "px";
  cur.style.height = canvas.clientHeight + "px";
  var k = heatRows.indexOf(data.rows[state.row]);
  band.hidden = k < 0;
  band.style.top = (canvas.offsetTop + k * heatRowH) + "px";
  band.style.left = canvas.offsetLeft + "px";
  band.style.width = w + "px";
  band.style.height = heatRowH + "px";
  if (heatLabelsFor !== state.row) heatLabels();
}
(function () {
  var cur = document.createElement("div"), band = document.createElement("div");
  cur.id = "heatcursor"; band.id = "heatband";
  $("heatbox").appendChild(cur); $("heatbox").appendChild(band);
})();

function heatCell(ev) {
  if (!heatGeo) return null;
  var rect = $("heat").getBoundingClientRect();
  var c = heatGeo.cell(ev.clientX - rect.left, ev.clientY - rect.top);
  return c.row >= 0 && c.row < heatRows.length ? { row: heatRows[c.row], index: c.index } : null;
}
$("heat").addEventListener("mousemove", function (ev) {
  var c = heatCell(ev), k = c ? heatRows.indexOf(c.row) : null;
  if (k !== heatHover) { heatHover = k; heatLabels(); }
  $("heatread").textContent = c ? (c.row.full || "(model)") + " · step " + steps[c.index] + " · " + metricLabel(state.metric) + " = " + fmtNum(c.row.s[state.metric][c.index]) : "";
});
$("heat").addEventListener("mouseleave", function () { heatHover = null; heatLabels(); });
$("heat").addEventListener("click", function (ev) {
  var c = heatCell(ev);
  if (!c) return;
  state.row = c.row.index;
  state.i = c.index;
  refresh({ tree: true, chart: true, small: true, side: true, heatCursor: true, scroll: true });
});

// -- the side: the selected step, events, traces ------------------------------------------
function cell(tr, text, cls) { var td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
// The optimizer steps a sampled step stands for: those after the previous sample, up to it. An event
// or a trace at a step between samples belongs to the next sample (the page lands there too).
function covers(i, stepNumber) { return stepNumber <= steps[i] && (i === 0 || stepNumber > steps[i - 1]); }

function drawSide() {
  var box = $("stepbox"), i = state.i, step = steps[i], r = data.rows[state.row];
  box.textContent = "";
  if (!nSteps) { box.textContent = "no sampled steps"; return; }
  var h = document.createElement("h3"); h.textContent = "step " + step; box.appendChild(h);
  var table = document.createElement("table");
  function row(k, v, field) { var tr = document.createElement("tr"); cell(tr, k); var td = cell(tr, v); if (field) td.dataset.field = field; table.appendChild(tr); }
  var perOptimizer = Object.keys(data.losses);
  if (perOptimizer.length > 1) {  // several optimizers: each one's loss, named (the lead's 'loss' is opt0's)
    perOptimizer.forEach(function (k) { row("loss " + optimizerLabel(k), fmtNum(data.losses[k][i]), "loss:" + k); });
  } else row("loss", fmtNum(data.loss[i]), "loss");
  data.lr.forEach(function (g) { row("lr " + g.name, fmtNum(g.values[i])); });
  Object.keys(data.clip).forEach(function (k) { row("clip " + k, fmtNum(data.clip[k][i])); });
  box.appendChild(table);
  if (r) {
    var h4 = document.createElement("h4"); h4.textContent = r.full || "(model)"; box.appendChild(h4);
    var t2 = document.createElement("table");
    Object.keys(r.s).forEach(function (m) {
      var tr = document.createElement("tr"); cell(tr, metricLabel(m)); var td = cell(tr, fmtNum(r.s[m][i])); td.dataset.field = m; t2.appendChild(tr);
    });
    if (!Object.keys(r.s).length) { var none = document.createElement("tr"); cell(none, "no samples recorded"); t2.appendChild(none); }
    box.appendChild(t2);
  }
  data.events.forEach(function (e) {
    if (!covers(i, e.step)) return;
    var p = document.createElement("p"); p.className = "ev kind-" + e.kind;
    p.textContent = (e.step === step ? "" : "at step " + e.step + ", ") + e.kind + ": " + e.text;
    box.appendChild(p);
  });
  data.traces.forEach(function (t) {
    if (!covers(i, t.step)) return;
    var b = document.createElement("button"); b.textContent = "open the full trace of step " + t.step;
    b.dataset.step = String(t.step);
    b.addEventListener("click", function () { openTrace(t.step); });
    box.appendChild(b);
  });
  $("stepname").textContent = "step " + step;
  document.body.dataset.step = String(step);
  Array.prototype.forEach.call($("events").children, function (li) { li.classList.toggle("current", covers(i, Number(li.dataset.step))); });
}

data.events.forEach(function (e) {
  var li = document.createElement("li");
  li.className = "kind-" + e.kind;
  li.dataset.step = String(e.step);
  li.tabIndex = 0;
  var s = document.createElement("span"); s.className = "evstep"; s.textContent = "step " + e.step; li.appendChild(s);
  var k = document.createElement("span"); k.className = "badge"; k.textContent = e.kind; li.appendChild(k);
  var t = document.createElement("span"); t.className = "evtext"; t.textContent = e.text + (e.where ? " (" + e.where + ")" : ""); li.appendChild(t);
  function go() {
    state.i = indexOfStep(e.step);
    var target = (e.param && rowByKey.param[e.param]) || (e.module !== null && rowByKey.module[e.module]);
    if (target) { state.row = target.index; openAncestors(data.rows, target); }
    refresh({ tree: true, sparks: true, chart: true, small: true, side: true, heat: true, scroll: true });
  }
  li.addEventListener("click", go);
  li.addEventListener("keydown", function (ev) { if (ev.key === "Enter") go(); });
  $("events").appendChild(li);
});
if (!data.events.length) { var none = document.createElement("li"); none.textContent = "none"; $("events").appendChild(none); }

data.traces.forEach(function (t) {
  var li = document.createElement("li"), b = document.createElement("button");
  b.textContent = "step " + t.step + " (" + t.nodes + " nodes)";
  b.dataset.step = String(t.step);
  b.addEventListener("click", function () { state.i = indexOfStep(t.step); refresh({ chart: true, small: true, side: true, heatCursor: true }); openTrace(t.step); });
  li.appendChild(b);
  $("traces").appendChild(li);
});
if (!data.traces.length) { var no = document.createElement("li"); no.textContent = "none kept (gradtrace watch --trace-steps)"; $("traces").appendChild(no); }

function openTrace(step) {
  var t = traceByStep[step];
  if (!t) return;
  $("tracetitle").textContent = "full trace of step " + step;
  $("tracepane").hidden = false;
  $("tracepane").dataset.step = String(step);
  $("traceclose").focus();
  // The replay page sizes its drawing to the frame when its script runs. A sandboxed frame may live
  // in another process that learns its size only after the parent lays the pane out: hand it the page
  // two frames later, once the size has reached it.
  void $("traceframe").offsetWidth;
  requestAnimationFrame(function () {
    requestAnimationFrame(function () {
      if ($("tracepane").dataset.step !== String(step)) return;  // another trace was opened meanwhile
      $("traceframe").srcdoc = t.html;  // a property, not markup: the page is a string handed to the frame
    });
  });
}
function closeTrace() { $("tracepane").hidden = true; $("tracepane").dataset.step = ""; $("traceframe").srcdoc = ""; }
$("traceclose").addEventListener("click", closeTrace);

// -- one redraw function for every change -------------------------------------------------
function refresh(what) {
  if (what.tree || what.sparks || what.heat) shownRows = tree.shown(state.filter);
  if (what.tree) tree.update(shownRows, state.row);
  if (what.scroll) { var v = tree.views[state.row]; if (v && v.el.scrollIntoView) v.el.scrollIntoView({ block: "nearest" }); }
  if (what.sparks) drawSparks();
  if (what.chart) drawMain();
  if (what.small) drawSmall();
  if (what.heat) drawHeat(); else if (what.heatCursor || what.chart) heatCursor();
  if (what.side) drawSide();
}
var ALL = { tree: true, sparks: true, chart: true, small: true, heat: true, side: true };

function setMetric(m) {
  state.metric = m;
  state.log = defaultLog(m);
  $("scale").textContent = state.log ? "log" : "linear";
  $("metric").value = m;
  if (!data.rows[state.row] || !data.rows[state.row].s[m]) {
    // A metric the selected row lacks (update_ratio is a parameter's): open the tree down to the rows that have it.
    var k = firstRowWith(m);
    state.row = k;
    if (data.rows[k]) openAncestors(data.rows, data.rows[k]);
  }
  if (!data.rows.some(function (r) { return r.kind === "module" && r.s[m]; })) data.rows.forEach(function (r) { if (r.hasKids) r.open = true; });
  refresh(ALL);
}
$("metric").addEventListener("change", function () { setMetric($("metric").value); });
$("scale").addEventListener("click", function () {
  state.log = !state.log;
  $("scale").textContent = state.log ? "log" : "linear";
  refresh({ sparks: true, chart: true, heat: true });
});
$("theme").addEventListener("click", function () {
  state.theme = state.theme === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = state.theme;
  themeLabel();
  makeMarkers();
  refresh(ALL);
});
function step(by) {
  state.i = Math.max(0, Math.min(nSteps - 1, state.i + by));
  state.hover = null;
  refresh({ chart: true, small: true, side: true, heatCursor: true });
}
$("prev").addEventListener("click", function () { step(-1); });
$("next").addEventListener("click", function () { step(1); });

$("chart").addEventListener("mousemove", function (ev) {
  if (!chartGeo || !nSteps) return;
  var rect = $("chart").getBoundingClientRect();
  state.hover = chartGeo.index(ev.clientX - rect.left);
  drawMain();
});
$("chart").addEventListener("mouseleave", function () { state.hover = null; drawMain(); });
$("chart").addEventListener("click", function () {
  if (state.hover === null) return;
  state.i = state.hover;
  refresh({ chart: true, small: true, side: true, heatCursor: true });
});

$("search").addEventListener("input", function () {
  state.filter = $("search").value.trim().toLowerCase();
  refresh({ tree: true, sparks: true, heat: true });
});
$("search").addEventListener("keydown", function (ev) {
  if (ev.key === "Enter" && shownRows.length) {
    state.row = shownRows[0].index;
    refresh({ tree: true, chart: true, side: true, heatCursor: true, scroll: true });
  } else if (ev.key === "Escape") {
    $("search").value = ""; state.filter = "";
    $("search").blur();
    refresh({ tree: true, sparks: true, heat: true, scroll: true });
  }
});

document.addEventListener("keydown", function (ev) {
  var tag = ev.target && ev.target.tagName;
  if (ev.key === "Escape" && !$("tracepane").hidden) { closeTrace(); return; }
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  if (ev.key === "/") { ev.preventDefault(); $("search").focus(); }
  else if (ev.key === "ArrowLeft") { ev.preventDefault(); step(-1); }
  else if (ev.key === "ArrowRight") { ev.preventDefault(); step(1); }
  else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
    // The next shown row of the tree above or below the selected one.
    var at = shownRows.indexOf(data.rows[state.row]), to = at + (ev.key === "ArrowDown" ? 1 : -1);
    if (at < 0) to = 0;
    if (to < 0 || to >= shownRows.length) return;
    ev.preventDefault();
    state.row = shownRows[to].index;
    refresh({ tree: true, chart: true, side: true, heatCursor: true, scroll: true });
  }
});

// Redraw when a canvas's box changed width since it was drawn: a window resize, a scroll bar that
// came or went once the heat map had its height, a Jupyter cell resized. Drawing at the old width
// would leave the browser to stretch the pixels.
var pending = false;
function stale() {
  var canvases = document.querySelectorAll("canvas");
  for (var k = 0; k < canvases.length; k++) {
    var c = canvases[k];
    if (c.dataset.drawnWidth && c.offsetParent !== null && Math.max(10, c.clientWidth) !== Number(c.dataset.drawnWidth)) return true;
  }
  return false;
}
function redrawIfStale() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(function () { pending = false; if (stale()) refresh(ALL); });
}
window.addEventListener("resize", redrawIfStale);
if (window.ResizeObserver) {
  var watcher = new ResizeObserver(redrawIfStale);
  ["main", "tree", "small", "heatbox"].forEach(function (id) { watcher.observe($(id)); });
}

makeMarkers();
if (state.metric) setMetric(state.metric); else refresh(ALL);
document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
document.body.dataset.ready = "1";
