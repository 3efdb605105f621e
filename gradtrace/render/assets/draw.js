// draw.js: what is in view, drawn. Edges, group frames and (zoomed out) boxes go on a canvas;
// when few enough boxes are in view to read, each is an SVG group with its text, so the DOM
// holds what is visible, never every node. The replay's flowing edges are SVG above both.

var SVGNS = "http://www.w3.org/2000/svg";
var DETAIL_MAX = 500;  // boxes in view beyond which they are painted on the canvas, not built as elements
var VIRIDIS = ["#440154", "#482878", "#3e4a89", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6dcd59", "#b4de2c", "#fde725"];
var V = { x: 0, y: 0, s: 1 };  // the view: graph point (x, y) at the top-left corner, s screen pixels per graph unit
var S = { bandMatches: null, selected: null, step: 0, visitedGroups: new Set(), sumText: "", matches: null, matchCount: null, overlay: "band", range: null, timer: null, flows: [], current: null };
var canvasBox = document.getElementById("canvas");
var paintEl = document.getElementById("paint");
var svg = document.getElementById("graph");
var layers = {};
["frames", "flows", "nodes", "labels"].forEach(function (n) { layers[n] = el("g", { "class": n }, svg); });
var elems = new Map();  // item -> its SVG group, for the boxes in view
var pending = false;

function el(tag, attrs, parent) {
  var e = document.createElementNS(SVGNS, tag);
  Object.keys(attrs || {}).forEach(function (a) { e.setAttribute(a, attrs[a]); });
  if (parent) parent.appendChild(e);
  return e;
}
function svgText(parent, x, y, text, cls, attrs) {
  var t = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
  if (cls) t.setAttribute("class", cls);
  t.textContent = text;
  return t;
}
function clip(text, n) { n = n || 40; text = text || ""; return text.length > n ? text.slice(0, n - 1) + "…" : text; }
function ink(color) {
  var r = parseInt(color.slice(1, 3), 16) / 255, g = parseInt(color.slice(3, 5), 16) / 255, b = parseInt(color.slice(5, 7), 16) / 255;
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 ? "#000000" : "#ffffff";
}
function fmtStats(a) { return a[11] && a[11].length <= 2 ? a[11].map(fmt).join(", ") : "norm " + fmt(a[8]); }
function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

// -- colour: the gradient band (as the SVG), or an overlay on a log scale ---------------------
function metric(x, f) {
  if (isNode(x)) {
    var n = M.d.nodes[x];
    return f === "nan" ? (n.nan || 0) : num(n[f === "gn" ? "grms" : f]);
  }
  var v = M.agg[f === "gn" ? "grms" : f][x - M.N];
  return isNaN(v) ? null : v;
}
function overlayRange(f) {
  var lo = Infinity, hi = -Infinity;
  M.d.nodes.forEach(function (n, i) { var v = metric(i, f); if (v !== null && v > 0) { var l = Math.log10(v); if (l < lo) lo = l; if (l > hi) hi = l; } });
  return lo === Infinity ? null : [lo, Math.max(hi, lo + 1e-9)];
}
function colorOf(x) {
  var f = S.overlay;
  if (f === "band") return isNode(x) ? M.d.nodes[x].c : (groupOf(x).c || "#ffffff");
  var v = metric(x, f);
  if (f === "nan") return v > 0 ? "#e0112b" : v === 0 ? "#b8b8b8" : "#ffffff";
  if (v === null) return "#ffffff";
  if (v === 0 || !S.range) return "#b8b8b8";
  var t = (Math.log10(v) - S.range[0]) / (S.range[1] - S.range[0]);
  return VIRIDIS[Math.max(0, Math.min(9, Math.floor(t * 10)))];
}

// -- the view ---------------------------------------------------------------------------
function screen() { return { w: canvasBox.clientWidth || 1, h: canvasBox.clientHeight || 1 }; }
function clampView(strict) {
  // A graph narrower than the screen sits centred; a wider one never leaves empty screen on its
  // left (strict: on either side) nor drifts more than half a screen off: nothing is lost off the left edge.
  var sc = screen(), vw = sc.w / V.s, vh = sc.h / V.s, slack = strict ? 0 : 0.5;
  if (M.width <= vw) V.x = (M.width - vw) / 2; else V.x = Math.max(-vw * slack, Math.min(V.x, M.width - vw * (1 - slack)));
  if (M.height <= vh) V.y = (M.height - vh) / 2; else V.y = Math.max(-vh * slack, Math.min(V.y, M.height - vh * (1 - slack)));
}
function fit() {
  var sc = screen();
  V.s = Math.min(sc.w / M.width, sc.h / M.height, 1.5);
  V.x = 0; V.y = 0; clampView(true); redraw(true);
}
function zoomAt(px, py, f) {
  var s2 = Math.max(0.005, Math.min(4, V.s * f));
  V.x += px / V.s - px / s2; V.y += py / V.s - py / s2; V.s = s2; clampView(); redraw();
}
// Centre item x; `readable` zooms in to where text reads (scale 0.9) unless closer already.
function centerOn(x, readable) {
  var sc = screen();
  if (readable && V.s < 0.9) V.s = 0.9;
  V.x = M.ax[x] + M.aw[x] / 2 - sc.w / V.s / 2; V.y = M.ay[x] + Math.min(M.ah[x], sc.h / V.s) / 2 - sc.h / V.s / 2;
  clampView(true); redraw(true);
}
function inView(x) {
  var sc = screen();
  return M.ax[x] >= V.x && M.ay[x] >= V.y && M.ax[x] + M.aw[x] <= V.x + sc.w / V.s && M.ay[x] + M.ah[x] <= V.y + sc.h / V.s;
}
// Discrete changes (a click, a step) paint at once; a drag or a wheel paints once per frame.
function redraw(now) {
  if (now) { paint(); return; }
  var sc = screen();
  svg.setAttribute("viewBox", V.x + " " + V.y + " " + sc.w / V.s + " " + sc.h / V.s);  // at once: the view is readable before the paint
  if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; paint(); }); }
}

// -- painting -----------------------------------------------------------------------------
function edgePoints(a, b) {
  var x1 = M.ax[a] + M.aw[a] / 2, y1 = M.ay[a] + M.ah[a], x2 = M.ax[b] + M.aw[b] / 2, y2 = M.ay[b];
  if (y2 < y1) { y1 = M.ay[a]; y2 = M.ay[b] + M.ah[b]; }  // an edge back up (a module called twice)
  return [x1, y1, x2, y2, (y1 + y2) / 2];
}
// The points an edge passes. Between two rows it bends only in the gap between them (no box
// there); through a row it runs down a lane of its own, or down its end's own column. An edge
// between groups leaves each open group around its source by that child's lane to the group's
// bottom, crosses the common group as an edge between the two children there (their lane, if
// long), and enters each open group around its destination down a lane from the group's top.
function edgeRoute(a, b) {
  var p = edgePoints(a, b);
  if (p[3] < p[1]) return edgeRouteBack(a, b, p);
  var x = a, y = b;
  while (M.depth[x] > M.depth[y]) x = M.parent[x];
  while (M.depth[y] > M.depth[x]) y = M.parent[y];
  while (M.parent[x] !== M.parent[y]) { x = M.parent[x]; y = M.parent[y]; }
  var G = M.parent[x], pts = [[p[0], p[1]]], ex = p[0], c, h, lay, lane;
  for (c = a; c !== x; c = h) {  // up and out of each open group around the source
    h = M.parent[c]; lay = M.lay[h - M.N];
    pts.push([ex, lay.rowEnd.get(c) + M.oy[h - M.N]]);
    lane = lay.ports.get(c);
    if (lane && lane.out) { lane.out.forEach(function (q) { pts.push([q[0] + M.ox[h - M.N], q[1] + M.oy[h - M.N]]); }); ex = pts[pts.length - 1][0]; }
    pts.push([ex, M.ay[h] + M.ah[h]]);
  }
  lay = M.lay[G - M.N];
  pts.push([ex, lay.rowEnd.get(x) + M.oy[G - M.N]]);
  var r = lay.routes.get(x * M.T + y);
  if (r) r.forEach(function (q) { pts.push([q[0] + M.ox[G - M.N], q[1] + M.oy[G - M.N]]); });
  var down = [];  // the open groups around the destination, outermost first, each with its child on the way
  for (c = b; c !== y; c = M.parent[c]) down.push(c);
  down.reverse();
  var entry = new Map();  // where the edge comes in at the top of each item on the way: its lane, or its child's entry
  entry.set(b, p[2]);
  for (var k = down.length - 1; k >= 0; k--) {
    h = M.parent[down[k]]; lane = M.lay[h - M.N].ports.get(down[k]);
    entry.set(h, lane && lane.in ? lane.in[0][0] + M.ox[h - M.N] : entry.get(down[k]));
  }
  pts.push([entry.get(y), M.ay[y]]);
  down.forEach(function (c) {
    h = M.parent[c]; lane = M.lay[h - M.N].ports.get(c);
    if (lane && lane.in) lane.in.forEach(function (q) { pts.push([q[0] + M.ox[h - M.N], q[1] + M.oy[h - M.N]]); });
    pts.push([entry.get(c), M.ay[c]]);
  });
  return pts.filter(function (q, i) { return !i || q[0] !== pts[i - 1][0] || q[1] !== pts[i - 1][1]; });
}
// An edge back up (only between children joined by a cycle): its two ends and the lane between, as laid out.
function edgeRouteBack(a, b, p) {
  var pts = [[p[0], p[1]]], g = M.parent[a];
  if (g >= 0 && g === M.parent[b] && M.lay[g - M.N]) {
    var routes = M.lay[g - M.N].routes, r = routes.get(a * M.T + b), back = false;
    if (!r) { r = routes.get(b * M.T + a); back = true; }
    if (r) {
      var ox = M.ox[g - M.N], oy = M.oy[g - M.N], lane = r.map(function (q) { return [q[0] + ox, q[1] + oy]; });
      pts = pts.concat(back ? lane.reverse() : lane);
    }
  }
  pts.push([p[2], p[3]]);
  return pts;
}
// Smooth curves through the points, vertical at each one (so a lane reads as one line).
function traceRoute(pts, moveTo, curveTo) {
  moveTo(pts[0][0], pts[0][1]);
  for (var k = 1; k < pts.length; k++) {
    var a = pts[k - 1], b = pts[k], my = (a[1] + b[1]) / 2;
    curveTo(a[0], my, b[0], my, b[0], b[1]);
  }
}
function routePath(pts) {
  var d = [];
  traceRoute(pts, function (x, y) { d.push("M" + x + "," + y); }, function (a, b, c, e, f, g) { d.push("C" + a + "," + b + " " + c + "," + e + " " + f + "," + g); });
  return d.join(" ");
}
function paint() {
  var sc = screen(), dpr = window.devicePixelRatio || 1;
  if (paintEl.width !== Math.round(sc.w * dpr) || paintEl.height !== Math.round(sc.h * dpr)) {
    paintEl.width = Math.round(sc.w * dpr); paintEl.height = Math.round(sc.h * dpr);
  }
  svg.setAttribute("viewBox", V.x + " " + V.y + " " + sc.w / V.s + " " + sc.h / V.s);
  var x0 = V.x, y0 = V.y, x1 = V.x + sc.w / V.s, y1 = V.y + sc.h / V.s;
  function visible(x) { return M.ax[x] < x1 && M.ax[x] + M.aw[x] > x0 && M.ay[x] < y1 && M.ay[x] + M.ah[x] > y0; }
  var boxes = M.shown.filter(visible), frames = M.frames.filter(visible);
  var detail = boxes.length <= DETAIL_MAX;
  var ctx = paintEl.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, paintEl.width, paintEl.height);
  ctx.setTransform(dpr * V.s, 0, 0, dpr * V.s, -V.x * V.s * dpr, -V.y * V.s * dpr);
  var fg = css("--fg"), line = css("--edge"), frameBg = css("--frame"), frameLine = css("--frame-line");
  frames.forEach(function (f) {
    // (an open frame holding matches is not outlined: the matches inside are; closed groups say how many)
    ctx.fillStyle = frameBg; ctx.strokeStyle = frameLine; ctx.lineWidth = 1 / V.s;  // screen pixels, whatever the zoom
    ctx.beginPath(); ctx.rect(M.ax[f], M.ay[f], M.aw[f], M.ah[f]); ctx.fill(); ctx.stroke();
    if (!detail && M.aw[f] * V.s > 80) {
      ctx.fillStyle = fg; ctx.font = "bold " + 12 / Math.max(V.s, 0.05) + "px sans-serif";
      ctx.fillText(clip(frameTitle(f), 60), M.ax[f] + 6 / V.s, M.ay[f] + 16 / V.s);
    }
  });
  paintBands(ctx, x0, y0, x1, y1, css("--bg"), fg);
  ctx.strokeStyle = line; ctx.lineWidth = 1.2 / Math.min(V.s * 2, 1);
  ctx.beginPath();
  var move = ctx.moveTo.bind(ctx), curve = ctx.bezierCurveTo.bind(ctx);
  M.shownEdges.forEach(function (e) {
    var p = edgePoints(e.a, e.b);
    // (a lane never leaves the box between the two ends' rows, so the ends' box decides what is in view)
    if (Math.max(p[1], p[3]) < y0 || Math.min(p[1], p[3]) > y1) return;
    var pts = edgeRoute(e.a, e.b), lo = Infinity, hi = -Infinity;
    pts.forEach(function (q) { if (q[0] < lo) lo = q[0]; if (q[0] > hi) hi = q[0]; });
    if (hi < x0 || lo > x1) return;
    traceRoute(pts, move, curve);
  });
  ctx.stroke();
  if (!detail) {
    var replaying = S.step > 0, boxBg = css("--box"), label = canvasLabel();
    if (label) { ctx.font = label.font; ctx.textBaseline = "middle"; }
    boxes.forEach(function (x) {
      ctx.globalAlpha = replaying && !visited(x) ? 0.3 : 1;
      var c = colorOf(x);
      ctx.fillStyle = boxBg; ctx.fillRect(M.ax[x], M.ay[x], M.aw[x], M.ah[x]);
      ctx.fillStyle = c; ctx.fillRect(M.ax[x], M.ay[x], M.aw[x], isNode(x) ? 18 : M.ah[x]);
      if (label) {  // (a node's text sits on the body, a closed group's on its colour)
        ctx.fillStyle = isNode(x) ? fg : ink(c);
        ctx.fillText(clip(itemLabel(x), label.chars), M.ax[x] + 6, M.ay[x] + (isNode(x) ? 18 + (M.ah[x] - 18) / 2 : M.ah[x] / 2));
      }
      if (isMatch(x) || x === S.current || x === S.selected) {
        ctx.globalAlpha = 1; ctx.strokeStyle = isMatch(x) ? "#f28e2b" : fg; ctx.lineWidth = 6 / V.s;
        ctx.strokeRect(M.ax[x], M.ay[x], M.aw[x], M.ah[x]);
      }
    });
    ctx.globalAlpha = 1; ctx.textBaseline = "alphabetic";
  }
  syncSvg(detail ? boxes : [], detail ? frames : []);
  drawFlows();
}

// The label painted on canvas boxes (zoomed out): as large as the box allows, up to LABEL_MAX
// graph units, so that it stays LABEL_MIN_PX on screen as long as it can; null below that, where
// no text is readable. Cut by characters (no measureText per box: a frame may paint thousands).
var LABEL_MIN_PX = 7, LABEL_MAX = 56;  // (56 units: 6 characters across a box, within its body)
function canvasLabel() {
  var size = Math.max(13, LABEL_MIN_PX / V.s);
  if (size > LABEL_MAX) return null;
  return { font: size + "px sans-serif", size: size, chars: Math.max(4, Math.floor((NW - 12) / (0.6 * size))) };
}

// A dissolved container (no group of its own): a light dashed frame around its members, its
// name set in the top line like a legend, never a bar to click: it opens and closes nothing.
function bandTitle(b) {
  var c = M.dis[b.c];
  return c.path + (b.parts > 1 ? " (part " + b.part + " of " + b.parts + ")" : "") + " · container, not a group";
}
function paintBands(ctx, x0, y0, x1, y1, bg, fg) {
  if (!M.bands.length) return;
  var fs = 11 / V.s, lw = 1.2 / V.s;
  ctx.save();
  ctx.font = "italic " + fs + "px sans-serif"; ctx.textBaseline = "middle";
  M.bands.forEach(function (b) {
    if (b.x > x1 || b.x + b.w < x0 || b.y > y1 || b.y + b.h < y0) return;
    var hit = S.bandMatches && S.bandMatches.has(b.c);
    ctx.setLineDash([5 / V.s, 4 / V.s]); ctx.lineWidth = hit ? 3 * lw : lw;
    ctx.strokeStyle = hit ? "#f28e2b" : fg; ctx.globalAlpha = hit ? 0.9 : 0.45;
    ctx.strokeRect(b.x, b.y, b.w, b.h);
    ctx.setLineDash([]); ctx.globalAlpha = 1;
    if (b.w * V.s < 40) return;
    var text = clip(bandTitle(b), Math.max(4, Math.floor(b.w * V.s / 6.5) - 2)), tw = ctx.measureText(text).width;
    ctx.fillStyle = bg; ctx.fillRect(b.x + 8 / V.s, b.y - fs * 0.6, tw + 8 / V.s, fs * 1.2);
    ctx.fillStyle = fg; ctx.globalAlpha = 0.8; ctx.fillText(text, b.x + 12 / V.s, b.y);
    ctx.globalAlpha = 1;
  });
  ctx.restore();
}

function frameTitle(f) {
  var g = groupOf(f);
  return g.kind === "run" ? g.t : g.path + (g.cls ? " " + g.cls : "") + (g.kind === "fold" ? " ×" + g.r : "");
}

// Make and drop SVG elements so that exactly the boxes and frame titles in view exist.
function syncSvg(boxes, frames) {
  var want = new Set(boxes.concat(frames));
  elems.forEach(function (e, x) { if (!want.has(x)) { e.remove(); elems.delete(x); } });
  want.forEach(function (x) {
    var e = elems.get(x);
    if (!e || e.dataset.at !== M.ax[x] + "," + M.ay[x] + "," + M.aw[x]) {
      if (e) e.remove();
      e = isOpen(x) ? makeFrame(x) : makeBox(x);
      elems.set(x, e);
    }
    styleItem(x, e);
  });
}

function makeBox(x) {
  var node = isNode(x), n = node ? M.d.nodes[x] : null, g = node ? null : groupOf(x);
  var cls = node ? "node kind-" + n.t + (x === M.d.loss ? " loss" : "") + (n.a ? " alarm" : "") : "group" + (g.kind === "fold" ? " fold" : "");
  var e = el("g", { "class": cls, "data-item": x, transform: "translate(" + M.ax[x] + "," + M.ay[x] + ")", tabindex: "0" }, layers.nodes);
  e.dataset.at = M.ax[x] + "," + M.ay[x] + "," + M.aw[x];
  if (node) e.setAttribute("data-key", n.k); else e.setAttribute("data-group", itemKey(x));
  if (!node && g.kind === "fold") el("rect", { "class": "stack", x: 6, y: -6, width: NW, height: NH, rx: 3 }, e);
  el("rect", { "class": "body", width: NW, height: NH, rx: node && n.t === "op" ? 8 : 2 }, e);
  el("rect", { "class": "header", width: NW, height: 18, rx: node && n.t === "op" ? 8 : 2 }, e);
  var lines, title, step;
  if (node) {
    title = n.l + (n.args ? " " + n.args : "");
    step = n.bw === undefined ? "" : "#" + n.bw;
    // A node with several consumers says how its gradient adds up, where that fits: grad = -400 + -400 = -800.
    var sum = n.sums && n.sums.length === 1 && n.sums[0].length <= 40 ? n.sums[0] : "";
    lines = [n.sh || "", "value " + (n.v || "-"), n.t === "input" ? "" : "grad " + (n.gr || "-"),
      n.up ? "Δw " + fmtStats(n.up) + (num(n.ur) !== null ? " · ratio " + fmt(n.ur) : "") : sum];
    // A parameter of a multi-rank step has two gradients: this rank's local one and the reduced one the optimizer
    // used (its NaN alone may make the header red). Both are drawn, as in the SVG; the value is in the panel.
    if (n.rd) lines = [lines[0], "∇ local " + (n.gr || "-"), "∇ reduced " + (n.rd.g || "-"), lines[3]];
  } else {
    title = (g.kind === "run" ? g.t : g.t + (g.cls ? " " + g.cls : "")) + (g.kind === "fold" ? " ×" + g.r : "");
    step = g.bw === undefined ? "" : "#" + g.bw;
    lines = [(g.ops || 0) / g.r + " ops, " + (g.params || 0) / g.r + " params" + (g.r > 1 ? " each" : "") + " · + open",
      "out " + (g.sh || "-"), "grad " + (g.gr || "-"), "‖grad‖ entering " + fmt(g.gn)];
  }
  svgText(e, 6, 13, clip(title, 31), "title");
  svgText(e, NW - 6, 13, step, "step", { "text-anchor": "end" });
  lines.forEach(function (l, k) { svgText(e, 6, 33 + 15 * k, clip(l, 40), k ? "" : "shape"); });
  if (node && n.fd && n.fd.length) {
    var f = M.d.findings[n.fd[0]];
    var flag = el("rect", { "class": "flag sev-" + f.sev, x: 0, y: NH - 2, width: NW, height: 16, rx: 2 }, e);
    flag.setAttribute("height", "16");
    svgText(e, 6, NH + 10, (f.sev === "note" ? "(i) " : "⚠ ") + f.kind + (n.fd.length > 1 ? " +" + (n.fd.length - 1) : ""), "flagtext");
  }
  var badge = el("text", { "class": "badge", x: NW - 6, y: NH - 6, "text-anchor": "end" }, e);
  badge.textContent = "";
  var tip = el("title", {}, e);
  tip.textContent = node ? title + (n.sc ? " — " + n.sc : "") + (n.src ? "\n" + n.src : "") : frameTitle(x) + "\n" + (g.n || 0) + " nodes inside; click to open";
  return e;
}

function makeFrame(x) {
  var e = el("g", { "class": "frame", "data-item": x, "data-group": itemKey(x), transform: "translate(" + M.ax[x] + "," + M.ay[x] + ")", tabindex: "0" }, layers.frames);
  e.dataset.at = M.ax[x] + "," + M.ay[x] + "," + M.aw[x];
  el("rect", { "class": "bar", width: M.aw[x], height: TITLE - 4 }, e);
  var g = groupOf(x);
  svgText(e, 8, 15, "− " + clip(frameTitle(x), Math.max(8, Math.floor(M.aw[x] / 7.5))) + "  (" + (g.n || 0) + " nodes)", "ftitle");
  return e;
}

function visited(x) {
  if (S.step === 0) return false;
  if (isNode(x)) { var i = M.stepIndex[x]; return i >= 0 && i < S.step; }
  return S.visitedGroups.has(x);  // (set by the replay, once per step)
}
function isMatch(x) { return S.matches !== null && (isNode(x) ? S.matches.has(x) : !!(S.matchCount && S.matchCount.get(x))); }

function styleItem(x, e) {
  if (!isOpen(x)) {
    var c = colorOf(x), header = e.querySelector(".header");
    header.setAttribute("fill", c);
    e.querySelectorAll(".title, .step").forEach(function (t) { t.setAttribute("fill", ink(c)); });
    var badge = e.querySelector(".badge");
    var inside = !isNode(x) && S.matchCount ? S.matchCount.get(x) || 0 : 0;
    badge.textContent = inside ? inside + " match" + (inside > 1 ? "es" : "") + " inside" : "";
  }
  e.classList.toggle("selected", x === S.selected);
  e.classList.toggle("match", isMatch(x));
  e.classList.toggle("visited", visited(x));
  e.classList.toggle("current", x === S.current);
}
function restyle() { elems.forEach(function (e, x) { styleItem(x, e); }); svg.classList.toggle("replaying", S.step > 0); redraw(true); }

// The replay's flowing edges (few): SVG paths whose dashes run from the consumer back to the producer.
function drawFlows() {
  layers.flows.replaceChildren(); layers.labels.replaceChildren();
  S.flows.forEach(function (f) {
    var pts = edgeRoute(f.a, f.b);
    var g = el("g", { "class": "edge flow " + f.dir, "data-src": itemKey(f.a), "data-dst": itemKey(f.b) }, layers.flows);
    el("path", { d: routePath(pts) }, g);
    // The label sits near the consumer's end (t = 0.8 on the last curve): what that consumer sent back.
    var q0 = pts[pts.length - 2], q1 = pts[pts.length - 1], my = (q0[1] + q1[1]) / 2;
    var u = 0.8, a0 = (1 - u) * (1 - u) * (1 - u), a1 = 3 * (1 - u) * (1 - u) * u, a2 = 3 * (1 - u) * u * u, a3 = u * u * u;
    var t = svgText(layers.labels, (a0 + a1) * q0[0] + (a2 + a3) * q1[0] + 5, a0 * q0[1] + (a1 + a2) * my + a3 * q1[1], f.text, "edge-label flow " + f.dir);
    t.setAttribute("data-src", itemKey(f.a)); t.setAttribute("data-dst", itemKey(f.b));
  });
  if (S.current !== null && S.sumText) {
    svgText(layers.labels, M.ax[S.current] + M.aw[S.current] + 8, M.ay[S.current] + 14, S.sumText, "sumnote");
  }
}

// The item under a point of the canvas (zoomed out, boxes are paint, not elements).
function itemAt(gx, gy) {
  for (var k = M.shown.length - 1; k >= 0; k--) {
    var x = M.shown[k];
    if (gx >= M.ax[x] && gx <= M.ax[x] + M.aw[x] && gy >= M.ay[x] && gy <= M.ay[x] + M.ah[x]) return x;
  }
  for (k = M.frames.length - 1; k >= 0; k--) {
    x = M.frames[k];
    if (gx >= M.ax[x] && gx <= M.ax[x] + M.aw[x] && gy >= M.ay[x] && gy <= M.ay[x] + TITLE) return x;
  }
  return null;
}
