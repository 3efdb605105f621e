// app.js: the page's state changes (select, open, close, go to) and its controls: mouse,
// keyboard, the trace selector. Data in (the JSON), view state (M, S, V), drawing out.

var ALL = JSON.parse(document.getElementById("gradtrace-data").textContent).traces;

function select(x, updateView) {
  S.selected = x;
  showPanel(x);
  showCrumbs(x);
  if (updateView !== false) restyle();
}
function toggle(g) {
  if (isNode(g) || g === M.root) return;
  var opening = !isOpen(g);
  setOpen(g, opening);
  refresh();
  select(g, false);
  if (opening && !inView(g)) centerOn(g, false);
  setStep(Math.min(S.step, M.d.backward.length));
}
// Show item x: open what hides it, select it, bring it into view.
function goTo(x, readable) {
  reveal(x);
  select(x, false);
  centerOn(x, readable);
  restyle();
}
// Show dissolved container c: open what hides its members, frame them all (readable where they fit).
function goToContainer(c) {
  var dc = M.dis[c], changed = false;
  for (var p = dc.parent; p >= 0; p = M.parent[p]) changed = setOpen(p, true) || changed;
  if (changed) refresh();
  var lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
  M.bands.forEach(function (b) {
    if (b.c !== c) return;
    lo = [Math.min(lo[0], b.x), Math.min(lo[1], b.y)]; hi = [Math.max(hi[0], b.x + b.w), Math.max(hi[1], b.y + b.h)];
  });
  if (lo[0] === Infinity) return;
  var sc = screen();
  V.s = Math.min(1, Math.max(0.2, Math.min(sc.w / (hi[0] - lo[0] + 40), sc.h / (hi[1] - lo[1] + 40))));
  V.x = (lo[0] + hi[0]) / 2 - sc.w / V.s / 2; V.y = Math.min(lo[1] - 20, (lo[1] + hi[1]) / 2 - sc.h / V.s / 2);
  clampView(true); restyle();
}
// Esc: up one level, closing the group the selection sits in.
function upOneLevel() {
  var x = S.selected;
  if (x === null) return;
  var p = isOpen(x) ? x : M.parent[x];
  if (p < 0 || p === M.root) return;
  setOpen(p, false); refresh(); select(p, false); centerOn(p, false); setStep(S.step);
}

function showTrace(t, keep) {
  var data = ALL[t].data;
  var keys = keep ? { sel: S.selected === null ? null : itemKey(S.selected), open: [] } : null;
  if (keep) for (var j = 1; j < M.G; j++) if (M.open[j]) keys.open.push(itemKey(M.N + j));
  M = buildModel(data);
  S.range = S.overlay === "band" ? null : overlayRange(S.overlay);
  elems.forEach(function (e) { e.remove(); }); elems.clear();
  document.getElementById("caption").textContent = data.caption;
  showFindings(); showLegend();
  // In a short frame (a notebook's iframe) the legend starts folded, leaving the height to the graph.
  if (window.innerHeight < 700) document.getElementById("legend").classList.add("closed");
  openToFit(data.openItems);
  var sel = M.d.loss;
  if (keys) {
    // Same keys, same view: the groups open there open here, and the selection stays where it exists.
    var byKey = new Map();
    for (var i = 0; i < M.T; i++) byKey.set(itemKey(i), i);
    keys.open.forEach(function (k) { var g = byKey.get(k); if (g !== undefined) setOpen(g, true); });
    refresh();
    if (keys.sel !== null && byKey.has(keys.sel)) sel = byKey.get(keys.sel);
  }
  S.step = 0;
  setStep(0);
  reveal(sel);
  select(sel, false);
  fit();
  // A graph too big to read when fitted opens legible at the loss (or the kept selection), where backprop begins.
  if (V.s < 0.45) centerOn(sel, true);
  restyle();
  document.body.setAttribute("data-ready", String(t));  // (tests and the benchmark wait for it)
}

// -- controls ---------------------------------------------------------------------------
document.getElementById("first").addEventListener("click", function () { stop(); setStep(0); });
document.getElementById("prev").addEventListener("click", function () { stop(); setStep(prevStep(S.step)); });
document.getElementById("next").addEventListener("click", function () { stop(); setStep(nextStep(S.step)); });
document.getElementById("last").addEventListener("click", function () { stop(); setStep(M.d.backward.length); });
document.getElementById("play").addEventListener("click", play);
slider.addEventListener("input", function () { stop(); setStep(parseInt(slider.value, 10)); });
document.getElementById("fit").addEventListener("click", fit);
document.getElementById("zoomin").addEventListener("click", function () { var sc = screen(); zoomAt(sc.w / 2, sc.h / 2, 1.25); });
document.getElementById("zoomout").addEventListener("click", function () { var sc = screen(); zoomAt(sc.w / 2, sc.h / 2, 0.8); });
document.getElementById("expandall").addEventListener("click", function () {
  for (var j = 1; j < M.G; j++) setOpen(M.N + j, true);
  refresh(); setStep(S.step); fit();
});
document.getElementById("collapseall").addEventListener("click", function () { openToFit(M.d.openItems); setStep(S.step); fit(); });
document.getElementById("theme").addEventListener("click", function () {
  var root = document.documentElement, dark = !root.classList.contains("dark");
  root.classList.toggle("dark", dark); root.classList.toggle("light", !dark); redraw();
});
document.getElementById("overlay").addEventListener("change", function (ev) {
  S.overlay = ev.target.value;
  S.range = S.overlay === "band" ? null : overlayRange(S.overlay);
  showLegend(); restyle();
});
var picker = document.getElementById("traces");
if (ALL.length > 1) {
  picker.hidden = false;
  ALL.forEach(function (t, i) { var o = html("option", t.label, picker); o.value = String(i); });
  picker.addEventListener("change", function () { stop(); showTrace(parseInt(picker.value, 10), true); });
}
search.addEventListener("input", runSearch);
search.addEventListener("keydown", function (ev) {
  if (ev.key === "Enter") { ev.preventDefault(); nextHit(); }
  if (ev.key === "Escape") { search.value = ""; runSearch(); search.blur(); }
});
document.addEventListener("keydown", function (ev) {
  var tag = ev.target && ev.target.tagName;
  if (tag === "INPUT" || tag === "SELECT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (tag === "BUTTON" && (ev.key === "Enter" || ev.key === " ")) return;  // the button's own click
  if (ev.key === "ArrowRight") { stop(); setStep(nextStep(S.step)); ev.preventDefault(); }
  else if (ev.key === "ArrowLeft") { stop(); setStep(prevStep(S.step)); ev.preventDefault(); }
  else if (ev.key === "/") { search.focus(); ev.preventDefault(); }
  else if (ev.key === "f") { fit(); }
  else if (ev.key === "Escape") { upOneLevel(); }
  else if (ev.key === "Enter" && S.selected !== null && !isNode(S.selected)) { toggle(S.selected); }
});

// -- pointer: drag to pan, wheel to zoom, click to select or open ------------------------
var drag = null;
function itemOfEvent(ev) {
  for (var t = ev.target; t && t !== svg; t = t.parentNode) if (t.getAttribute && t.getAttribute("data-item") !== null) return parseInt(t.getAttribute("data-item"), 10);
  var r = canvasBox.getBoundingClientRect();
  return itemAt(V.x + (ev.clientX - r.left) / V.s, V.y + (ev.clientY - r.top) / V.s);
}
svg.addEventListener("pointerdown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, vx: V.x, vy: V.y, moved: false }; });
window.addEventListener("pointermove", function (ev) {
  if (!drag) return;
  if (Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) > 4) { drag.moved = true; canvasBox.classList.add("dragging"); }
  if (drag.moved) { V.x = drag.vx - (ev.clientX - drag.x) / V.s; V.y = drag.vy - (ev.clientY - drag.y) / V.s; clampView(); redraw(); }
});
window.addEventListener("pointerup", function (ev) {
  var was = drag;
  drag = null; canvasBox.classList.remove("dragging");
  if (!was || was.moved || ev.target !== svg && !svg.contains(ev.target)) return;
  var x = itemOfEvent(ev);
  if (x === null) return;
  if (isNode(x)) { select(x); return; }
  toggle(x);  // a closed group opens, a frame's title closes it
});
svg.addEventListener("keydown", function (ev) {
  if (ev.key !== "Enter") return;
  var x = itemOfEvent(ev);
  if (x !== null) { if (isNode(x)) select(x); else toggle(x); ev.stopPropagation(); }
});
svg.addEventListener("wheel", function (ev) {
  ev.preventDefault();
  var r = canvasBox.getBoundingClientRect();
  zoomAt(ev.clientX - r.left, ev.clientY - r.top, ev.deltaY > 0 ? 1 / 1.15 : 1.15);
}, { passive: false });
if (window.ResizeObserver) new ResizeObserver(function () { redraw(); }).observe(canvasBox);

showTrace(0, false);

// Read-only view of the layout for tests: the boxes of what shows and the edges drawn, by item key.
// With `depth`, first opens exactly the groups up to that depth below the root (a collapsed view).
window.gradtraceLayout = function (depth) {
  if (depth !== undefined) {
    M.open.fill(0); M.open[0] = 1; M.lay = new Array(M.G);
    for (var j = 1; j < M.G; j++) if (M.depth[M.N + j] <= depth) M.open[j] = 1;
    refresh(); redraw();
  }
  var box = {}, closed = 0;
  M.shown.forEach(function (x) { box[itemKey(x)] = [M.ax[x], M.ay[x], M.aw[x], M.ah[x]]; if (!isNode(x)) closed++; });
  var dis = M.bands.map(function (b) {
    var c = M.dis[b.c];
    return { path: c.path, parent: itemKey(c.parent), part: b.part, parts: b.parts, box: [b.x, b.y, b.w, b.h], title: bandTitle(b),
      members: c.members.map(itemKey) };
  });
  var frames = {};
  M.frames.forEach(function (f) {
    var up = [];
    for (var p = M.parent[f]; p >= 0; p = M.parent[p]) up.push(itemKey(p));
    frames[itemKey(f)] = { box: [M.ax[f], M.ay[f], M.aw[f], M.ah[f]], up: up };
  });
  var ups = {};
  M.shown.forEach(function (x) { var up = []; for (var p = M.parent[x]; p >= 0; p = M.parent[p]) up.push(itemKey(p)); ups[itemKey(x)] = up; });
  // Each drawn edge's route: the points its curves pass, as edgeRoute gives them to the canvas.
  var routes = M.shownEdges.map(function (e) { return [itemKey(e.a), itemKey(e.b), edgeRoute(e.a, e.b)]; });
  return { box: box, closed: closed, frames: Object.keys(frames), frameBoxes: frames, ups: ups, routes: routes, dissolved: dis, edges: M.shownEdges.map(function (e) { return [itemKey(e.a), itemKey(e.b)]; }) };
};
