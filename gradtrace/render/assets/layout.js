// layout.js: each open group lays out its own children (nodes, closed groups as one box, open
// groups as the box their own layout needs), layered along the data flow. A layout is kept
// until something inside the group opens or closes, so a click lays out the groups on the way
// to the root, never the whole graph.

var NW = 230, NH = 88, GAPX = 26, GAPY = 40, PAD = 14, TITLE = 26, MARGIN = 20, SWEEPS = 4;
var LANE = 8, LANE_GAP = 10;  // a long edge's lane through a row it crosses, and the room beside it

function sizeOf(x) {
  if (isNode(x) || !isOpen(x)) return [NW, NH];
  var l = layoutGroup(x - M.N);
  return [l.w + 2 * PAD, l.h + TITLE + PAD];
}

// A group's children in an order every edge between them follows (forward order where free):
// forward order alone is not one (a module's parameters are recorded before the input it reads,
// so the module's box comes first by forward index and the input's edge into it would go up).
// Children joined by a cycle (none after the hierarchy's own check) keep forward order.
function flowOrder(j) {
  var items = M.children[j], n = items.length, idx = new Map(), indeg = new Int32Array(n), succ = [], k;
  items.forEach(function (c, q) { idx.set(c, q); succ.push([]); });
  var pairs = new Set();
  M.gedges[j].forEach(function (e) {
    var a = idx.get(e[0]), b = idx.get(e[1]);
    if (a === b || pairs.has(a * n + b)) return;
    pairs.add(a * n + b); succ[a].push(b); indeg[b]++;
  });
  var out = [], done = new Uint8Array(n), ready = [];  // ready: kept sorted, so the smallest forward index goes first
  for (k = 0; k < n; k++) if (!indeg[k]) ready.push(k);
  while (out.length < n) {
    if (!ready.length) {  // a cycle: take the first child left in forward order
      for (k = 0; done[k]; k++) {}
      ready.push(k); indeg[k] = 0;
    }
    var a = ready.shift();
    if (done[a]) continue;
    done[a] = 1; out.push(items[a]);
    succ[a].forEach(function (b) {
      if (done[b] || --indeg[b] !== 0) return;
      var lo = 0, hi = ready.length;
      while (lo < hi) { var mid = (lo + hi) >> 1; if (ready[mid] < b) lo = mid + 1; else hi = mid; }
      ready.splice(lo, 0, b);
    });
  }
  return out;
}

function layoutGroup(j) {
  if (M.lay[j]) return M.lay[j];
  var items = flowOrder(j), n = items.length, idx = new Map(), i;
  items.forEach(function (c, k) { idx.set(c, k); });
  var preds = [], succs = [], size = [];
  for (i = 0; i < n; i++) { preds.push([]); succs.push([]); size.push(sizeOf(items[i])); }
  var pairs = new Set();
  M.gedges[j].forEach(function (e) {
    var a = idx.get(e[0]), b = idx.get(e[1]);
    if (a === b) return;
    if (a > b) { var t = a; a = b; b = t; }  // items are in flow order: only an edge of a cycle between children goes back, and lays out forward
    if (pairs.has(a * n + b)) return;
    pairs.add(a * n + b); succs[a].push(b); preds[b].push(a);
  });
  var layer = [];
  for (i = 0; i < n; i++) layer.push(0);
  for (i = 0; i < n; i++) preds[i].forEach(function (p) { if (layer[p] + 1 > layer[i]) layer[i] = layer[p] + 1; });
  for (i = n - 1; i >= 0; i--) {  // a source (parameter, input) hangs just above its first consumer
    if (preds[i].length === 0 && succs[i].length) {
      var lo = Infinity;
      succs[i].forEach(function (s) { if (layer[s] < lo) lo = layer[s]; });
      layer[i] = Math.max(lo - 1, 0);
    }
  }
  // A long edge (over more than one row) runs through a lane in each row it crosses: a small
  // placeholder laid out like a box, so the edge keeps a way of its own instead of crossing boxes.
  var total = n, chains = [], long = [];
  for (i = 0; i < n; i++) succs[i].forEach(function (b) { if (layer[b] - layer[i] > 1) long.push([i, b]); });
  long.forEach(function (e) {
    var a = e[0], b = e[1], prev = a, chain = [];
    succs[a] = succs[a].filter(function (x) { return x !== b; });
    preds[b] = preds[b].filter(function (x) { return x !== a; });
    for (var lv = layer[a] + 1; lv < layer[b]; lv++) {
      var d = total++;
      preds.push([prev]); succs.push([]); size.push([LANE, 0]); layer.push(lv);
      succs[prev].push(d); chain.push(d); prev = d;
    }
    succs[prev].push(b); preds[b].push(prev);
    chains.push([a, b, chain]);
  });
  // An edge that leaves the group runs from its child down a lane through every row below, to the
  // group's bottom; one that enters runs down a lane from the top to its child: one lane per child.
  var ports = [], last = 0;
  for (i = 0; i < n; i++) if (layer[i] > last) last = layer[i];
  for (i = 0; i < n; i++) {
    if (M.extOut[j].has(items[i]) && layer[i] < last) {
      var chain = [], prev = i;
      for (var lv = layer[i] + 1; lv <= last; lv++) {
        var d = total++;
        preds.push([prev]); succs.push([]); size.push([LANE, 0]); layer.push(lv);
        succs[prev].push(d); chain.push(d); prev = d;
      }
      ports.push([i, "out", chain]);
    }
    if (M.extIn[j].has(items[i]) && layer[i] > 0) {
      chain = []; prev = -1;
      for (lv = 0; lv < layer[i]; lv++) {
        d = total++;
        preds.push(prev < 0 ? [] : [prev]); succs.push([]); size.push([LANE, 0]); layer.push(lv);
        if (prev >= 0) succs[prev].push(d);
        chain.push(d); prev = d;
      }
      succs[prev].push(i); preds[i].push(prev);
      ports.push([i, "in", chain]);
    }
  }
  var rows = [];
  for (i = 0; i < total; i++) { while (rows.length <= layer[i]) rows.push([]); rows[layer[i]].push(i); }
  var pos = new Float64Array(total);
  rows.forEach(function (r) { r.forEach(function (k, q) { pos[k] = q; }); });
  function sweep(from, to, stepDir, nb) {
    for (var lv = from; lv !== to; lv += stepDir) {
      var r = rows[lv], bary = new Map();
      r.forEach(function (k) {
        var s = 0, c = 0;
        nb[k].forEach(function (o) { s += pos[o]; c++; });
        bary.set(k, c ? s / c : pos[k]);
      });
      r.sort(function (a, b) { return bary.get(a) - bary.get(b) || a - b; });
      r.forEach(function (k, q) { pos[k] = q; });
    }
  }
  for (var s = 0; s < SWEEPS && rows.length > 1; s++) { sweep(1, rows.length, 1, preds); sweep(rows.length - 2, -1, -1, succs); }
  // x: each item under the mean of what feeds it (a source: of what it feeds, from the first pass),
  // pushed right where it would overlap its left neighbour.
  var x = new Float64Array(total), y = new Float64Array(total), minX = Infinity, maxX = -Infinity, top = 0;
  var rowTop = [], rowH = [];
  function place(second) {
    top = 0;
    rows.forEach(function (r, lv) {
      var right = -Infinity, h = 0, last = -1;
      r.forEach(function (k) {
        var gap = k >= n || last >= n ? LANE_GAP : GAPX;
        var want = right === -Infinity ? 0 : right + gap, nb = preds[k].length ? preds[k] : second ? succs[k] : [];
        if (nb.length) {
          var c = 0;
          nb.forEach(function (p) { c += x[p] + size[p][0] / 2; });
          want = Math.max(want, c / nb.length - size[k][0] / 2);
        }
        x[k] = want; y[k] = top; right = want + size[k][0]; last = k;
        if (size[k][1] > h) h = size[k][1];
      });
      rowTop[lv] = top; rowH[lv] = h;
      top += h + GAPY;
    });
  }
  place(false);
  place(true);
  for (i = 0; i < total; i++) { if (x[i] < minX) minX = x[i]; if (x[i] + size[i][0] > maxX) maxX = x[i] + size[i][0]; }
  if (!n) { minX = 0; maxX = NW; }
  var out = { pos: new Map(), routes: new Map(), ports: new Map(), rowEnd: new Map(), w: maxX - minX, h: Math.max(top - GAPY, NH) };
  for (i = 0; i < n; i++) { out.pos.set(items[i], [x[i] - minX, y[i]]); out.rowEnd.set(items[i], rowTop[layer[i]] + rowH[layer[i]]); }
  // Each long edge's lane: down through every row it crosses, in the group's own coordinates.
  function lanePoints(chain) {
    var pts = [];
    chain.forEach(function (d) { var cx = x[d] - minX + LANE / 2; pts.push([cx, rowTop[layer[d]]], [cx, rowTop[layer[d]] + rowH[layer[d]]]); });
    return pts;
  }
  chains.forEach(function (c) { out.routes.set(items[c[0]] * M.T + items[c[1]], lanePoints(c[2])); });
  ports.forEach(function (p) {
    var k = items[p[0]], q = out.ports.get(k);
    if (!q) { q = {}; out.ports.set(k, q); }
    q[p[1]] = lanePoints(p[2]);
  });
  out.bands = containerBands(j, out.pos);
  M.lay[j] = out;
  return out;
}

// The dashed frames of group j's dissolved containers, in the group's own coordinates: one
// around the members where no other child sits inside that frame, else one per part that is
// clean (members taken in reading order, each joining the first part it keeps clean).
var BAND_PAD = 7;
function containerBands(j, pos) {
  var out = [], mineAll = M.disOf.get(M.N + j) || [];
  mineAll.forEach(function (ci) {
    var c = M.dis[ci], mine = new Set(c.members), others = [];
    // A container with containers of its own inside it frames them with room to spare.
    var pad = BAND_PAD;
    mineAll.forEach(function (oi) {
      var o = M.dis[oi];
      if (o !== c && o.path.indexOf(c.path + ".") === 0) pad = Math.max(pad, BAND_PAD + 6 * (o.path.split(".").length - c.path.split(".").length));
    });
    pos.forEach(function (p, x) { if (!mine.has(x)) { var sz = sizeOf(x); others.push([p[0], p[1], p[0] + sz[0], p[1] + sz[1]]); } });
    function clean(b) {
      for (var k = 0; k < others.length; k++) {
        var o = others[k];
        if (o[0] < b[2] + pad && o[2] > b[0] - pad && o[1] < b[3] + pad && o[3] > b[1] - pad) return false;
      }
      return true;
    }
    var boxes = c.members.filter(function (x) { return pos.has(x); }).map(function (x) {
      var p = pos.get(x), sz = sizeOf(x);
      return [p[0], p[1], p[0] + sz[0], p[1] + sz[1]];
    });
    boxes.sort(function (a, b) { return a[1] - b[1] || a[0] - b[0]; });
    var parts = [];
    boxes.forEach(function (b) {
      for (var k = 0; k < parts.length; k++) {
        var q = parts[k], u = [Math.min(q[0], b[0]), Math.min(q[1], b[1]), Math.max(q[2], b[2]), Math.max(q[3], b[3])];
        if (clean(u)) { parts[k] = u; return; }
      }
      parts.push(b.slice());
    });
    parts.forEach(function (q, k) {
      out.push({ c: ci, part: k + 1, parts: parts.length, x: q[0] - pad, y: q[1] - pad, w: q[2] - q[0] + 2 * pad, h: q[3] - q[1] + 2 * pad });
    });
  });
  return out;
}

// Absolute boxes of every item that shows, from the root down.
function layoutAll() {
  var root = layoutGroup(0);
  M.width = root.w + 2 * MARGIN; M.height = root.h + 2 * MARGIN;
  M.bands = [];
  (function place(j, ox, oy) {
    M.ox[j] = ox; M.oy[j] = oy;  // where the group's own coordinates start: its edges' lanes are drawn from here
    layoutGroup(j).bands.forEach(function (b) { M.bands.push({ c: b.c, part: b.part, parts: b.parts, x: b.x + ox, y: b.y + oy, w: b.w, h: b.h }); });
    layoutGroup(j).pos.forEach(function (p, c) {
      var sz = sizeOf(c);
      M.ax[c] = ox + p[0]; M.ay[c] = oy + p[1]; M.aw[c] = sz[0]; M.ah[c] = sz[1];
      if (isOpen(c)) place(c - M.N, M.ax[c] + PAD, M.ay[c] + TITLE);
    });
  })(0, MARGIN, MARGIN);
}
