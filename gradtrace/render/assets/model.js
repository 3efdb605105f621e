// model.js: the trace as the page holds it. Items are numbers: node i (forward order) is i,
// group j is N + j, the root group is N. What is open decides each node's owner: the node
// itself, or the outermost closed group around it. Every string from the trace reaches the
// page through textContent (or the canvas), never as markup.

var M = null;  // the model of the trace on show

function buildModel(d) {
  var N = d.nodes.length, G = d.groups.length, T = N + G;
  var m = { d: d, N: N, G: G, T: T, root: N, parent: new Int32Array(T), depth: new Int32Array(T), first: new Int32Array(T),
    children: [], gedges: [], open: new Uint8Array(G), owner: new Int32Array(N), lay: new Array(G),
    ox: new Float64Array(G), oy: new Float64Array(G), ax: new Float64Array(T), ay: new Float64Array(T), aw: new Float64Array(T), ah: new Float64Array(T),
    shown: [], frames: [], shownEdges: [], stepIndex: new Int32Array(N).fill(-1), agg: {} };
  var i, j;
  for (i = 0; i < N; i++) m.parent[i] = N + d.nodeGroup[i];
  for (j = 0; j < G; j++) m.parent[N + j] = d.groups[j].p === undefined ? -1 : N + d.groups[j].p;
  m.parent[N] = -1;
  m.extOut = []; m.extIn = [];
  for (j = 0; j < G; j++) { m.children.push([]); m.gedges.push([]); m.extOut.push(new Set()); m.extIn.push(new Set()); m.first[N + j] = N; }
  for (i = 0; i < N; i++) {
    m.first[i] = i;
    for (var p = m.parent[i]; p >= 0; p = m.parent[p]) { if (m.first[p] <= i) break; m.first[p] = i; }
  }
  for (i = 0; i < T; i++) if (m.parent[i] >= 0) m.children[m.parent[i] - N].push(i);
  m.children.forEach(function (c) { c.sort(function (a, b) { return m.first[a] - m.first[b] || a - b; }); });
  function depthOf(x) { var k = 0; for (var p = m.parent[x]; p >= 0; p = m.parent[p]) k++; return k; }
  for (i = 0; i < T; i++) m.depth[i] = depthOf(i);
  // Each edge, seen from the group that holds both ends: which two of its children it joins.
  d.edges.forEach(function (e, k) {
    var a = e[0], b = e[1];
    if (a === b) return;
    while (m.depth[a] > m.depth[b]) a = m.parent[a];
    while (m.depth[b] > m.depth[a]) b = m.parent[b];
    while (m.parent[a] !== m.parent[b]) { a = m.parent[a]; b = m.parent[b]; }
    m.gedges[m.parent[a] - N].push([a, b, k]);
    // The children on the way that an edge leaves (or enters) their group through: each gets a lane
    // to its group's bottom (from its top) in that group's layout, so the edge never crosses a box.
    var top = m.parent[a];
    for (var x = e[0]; m.parent[x] !== top; x = m.parent[x]) m.extOut[m.parent[x] - N].add(x);
    for (x = e[1]; m.parent[x] !== top; x = m.parent[x]) m.extIn[m.parent[x] - N].add(x);
  });
  d.backward.forEach(function (n, k) { m.stepIndex[n] = k; });
  m.outdeg = new Int32Array(N);
  d.edges.forEach(function (e) { m.outdeg[e[0]] += 1; });
  // Group figures for the overlays: the output's gradient norm; the largest value RMS and update ratio; NaNs summed.
  ["grms", "vrms", "ur", "nan"].forEach(function (f) { m.agg[f] = new Float64Array(G).fill(NaN); });
  for (i = 0; i < N; i++) {
    var n = d.nodes[i];
    for (p = m.parent[i]; p >= 0; p = m.parent[p]) {
      var g = p - N;
      ["vrms", "ur"].forEach(function (f) { var v = num(n[f]); if (v !== null && !(m.agg[f][g] >= v)) m.agg[f][g] = v; });
      m.agg.nan[g] = (isNaN(m.agg.nan[g]) ? 0 : m.agg.nan[g]) + (n.nan || 0);
    }
  }
  for (j = 0; j < G; j++) { var o = d.groups[j].out; if (o !== undefined) m.agg.grms[j] = num(d.nodes[o].grms) === null ? NaN : num(d.nodes[o].grms); }
  m.dis = dissolved(m, d);
  m.disOf = new Map();  // parent item -> indices of the containers dissolved into it (each layout looks up its own)
  m.dis.forEach(function (c, ci) { if (!m.disOf.has(c.parent)) m.disOf.set(c.parent, []); m.disOf.get(c.parent).push(ci); });
  m.bands = [];
  m.open[0] = 1;
  return m;
}

// The containers the hierarchy dissolved (a ModuleList never called itself, a group tangled with
// its siblings through the parent's ops): no group of their own, their members sit in the parent.
// They are read back from the paths: an item whose path goes more than one part below its
// parent's (blocks.0 directly in the root) had a group between them, and that group is gone.
// Each is {path, parent, members}: members are the parent's children inside it, in forward order.
function dissolved(m, d) {
  var found = [], byKey = new Map();
  function ctxOf(g) {  // the scope the children of group item g are named below
    var grp = d.groups[g - m.N];
    if (grp.kind === "root") return "";
    if (grp.kind === "run") return ctxOf(m.parent[g]);
    var path = grp.path || "";
    // (a fold's members are its path's siblings: layers.0 … layers.3 sit below "layers")
    return grp.kind === "fold" ? path.slice(0, Math.max(path.lastIndexOf("."), 0)) : path;
  }
  var ctx = new Map();
  for (var x = 0; x < m.T; x++) {
    var P = m.parent[x];
    if (P < 0) continue;
    var node = x < m.N, grp = node ? null : d.groups[x - m.N];
    if (grp && grp.kind === "run") continue;
    if (!ctx.has(P)) ctx.set(P, ctxOf(P));
    var base = ctx.get(P), path = (node ? d.nodes[x].sc : grp.path) || "";
    if (base && path.slice(0, base.length + 1) !== base + ".") continue;
    var rest = base ? path.slice(base.length + 1) : path;
    if (!rest) continue;
    var parts = rest.split("."), count = node ? parts.length : parts.length - 1;
    for (var k = 1; k <= count; k++) {
      var cpath = (base ? base + "." : "") + parts.slice(0, k).join("."), key = P + "|" + cpath, c = byKey.get(key);
      if (!c) { c = { path: cpath, parent: P, members: [] }; byKey.set(key, c); found.push(c); }
      c.members.push(x);
    }
  }
  found.forEach(function (c) { c.members.sort(function (a, b) { return m.first[a] - m.first[b] || a - b; }); });
  return found;
}

function num(x) { return (x === undefined || x === null || typeof x === "string") ? null : x; }
function isNode(x) { return x < M.N; }
function groupOf(x) { return M.d.groups[x - M.N]; }
function isOpen(x) { return !isNode(x) && M.open[x - M.N] === 1; }
function itemKey(x) { return isNode(x) ? M.d.nodes[x].k : groupOf(x).kind + ":" + groupOf(x).path + (groupOf(x).kind === "run" ? "@" + M.first[x] : ""); }
function itemLabel(x) {
  if (isNode(x)) return M.d.nodes[x].l;
  var g = groupOf(x);
  return g.kind === "root" ? g.t : g.kind === "fold" ? g.t + " ×" + g.r : g.t;
}

// Who shows each node now, and which items, frames and edges are on the page. O(nodes + edges).
function refresh() {
  var N = M.N, i;
  for (i = 0; i < N; i++) {
    var o = i;
    for (var p = M.parent[i]; p >= 0; p = M.parent[p]) if (!M.open[p - N]) o = p;
    M.owner[i] = o;
  }
  M.shown = []; M.frames = [];
  (function walk(g) {
    M.children[g - N].forEach(function (c) {
      if (isNode(c) || !isOpen(c)) M.shown.push(c);
      else { M.frames.push(c); walk(c); }
    });
  })(N);
  var seen = new Map();
  M.shownEdges = [];
  M.d.edges.forEach(function (e, k) {
    var a = M.owner[e[0]], b = M.owner[e[1]];
    if (a === b) return;
    var key = a * M.T + b, s = seen.get(key);
    if (s === undefined) { s = { a: a, b: b, es: [] }; seen.set(key, s); M.shownEdges.push(s); }
    s.es.push(k);
  });
  layoutAll();
}

function setOpen(g, value) {
  if (g === M.root || isNode(g) || M.open[g - M.N] === (value ? 1 : 0)) return false;
  M.open[g - M.N] = value ? 1 : 0;
  for (var p = g; p >= 0; p = M.parent[p]) M.lay[p - M.N] = null;  // only this group and those around it are laid out again
  return true;
}

// Open every group around item x, so that it shows.
function reveal(x) {
  var changed = false;
  for (var p = M.parent[x]; p >= 0; p = M.parent[p]) changed = setOpen(p, true) || changed;
  if (changed) refresh();
  return changed;
}

// Open groups level by level while at most `budget` items show (the SVG's max_nodes, here).
function openToFit(budget) {
  M.open.fill(0); M.open[0] = 1; M.lay = new Array(M.G);
  var count = M.children[0].length, level = M.children[0].filter(function (c) { return !isNode(c); });
  while (level.length) {
    var extra = 0;
    level.forEach(function (g) { extra += M.children[g - M.N].length - 1; });
    // A level opens whole or not at all: one depth for the whole graph, as the SVG's depth is (opening
    // the first groups that fit would show one part of the model in full and the rest not at all).
    if (count + extra > budget) break;
    level.forEach(function (g) { M.open[g - M.N] = 1; });
    count += extra;
    var next = [];
    level.forEach(function (g) { M.children[g - M.N].forEach(function (c) { if (!isNode(c)) next.push(c); }); });
    level = next;
  }
  refresh();
}
