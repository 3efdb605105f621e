// panel.js: the inspect panel (a node's statistics, source line and Δw; a group's summary),
// the breadcrumb, the findings list and the legend. Text only, through textContent.

var panel = document.getElementById("panel");
var crumbs = document.getElementById("crumbs");

function html(tag, text, parent, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(x) {
  if (x === null || x === undefined) return "-";
  if (typeof x === "string") return x;
  if (x === 0) return "0";
  var a = Math.abs(x);
  return (a >= 1e-4 && a < 1e6) ? String(Number(x.toPrecision(6))) : x.toExponential(4);
}
function stats(arr) {
  if (!arr) return null;
  var s = {};
  M.d.statsFields.forEach(function (f, i) { s[f] = arr[i]; });
  return s;
}
function statsTable(title, s, parent) {
  html("h3", title, parent);
  if (!s) { html("p", "not recorded", parent); return; }
  var table = html("table", null, parent);
  var rows = [["shape", "(" + s.shape.join(", ") + (s.shape.length === 1 ? "," : "") + ")"], ["dtype", s.dtype], ["device", s.device],
    ["numel", s.numel], ["min", s.min], ["max", s.max], ["mean", s.mean], ["std", s.std], ["norm", s.norm], ["NaN", s.nan], ["inf", s.inf]];
  if (s.values) rows.push(["values", s.values.map(fmt).join(", ")]);
  // With NaN/inf present, the statistics describe the finite elements; the counts stand apart.
  if (s.numel > 0 && s.nan + s.inf >= s.numel) html("p", "no finite element: min, max, mean, std and norm have no value", parent, "finite-note");
  else if (s.nan > 0 || s.inf > 0) html("p", "min, max, mean, std and norm are over the finite elements", parent, "finite-note");
  rows.forEach(function (r) {
    var tr = html("tr", null, table);
    html("td", r[0], tr);
    var td = html("td", r[1] === null || r[1] === undefined ? "-" : typeof r[1] === "number" ? fmt(r[1]) : String(r[1]), tr);
    td.setAttribute("data-field", r[0]);
    if (typeof r[1] === "number" || typeof r[1] === "string") td.setAttribute("data-value", String(r[1]));
  });
}
function facts(rows, parent) {
  var info = html("table", null, parent);
  rows.forEach(function (r) {
    var tr = html("tr", null, info);
    html("td", r[0], tr);
    html("td", String(r[1]), tr).setAttribute("data-field", r[0]);
  });
}
function jumpLink(text, x, parent) {
  var b = html("button", text, parent, "link");
  b.addEventListener("click", function () { goTo(x, true); });
  return b;
}

function showPanel(x) {
  panel.replaceChildren();
  if (isNode(x)) nodePanel(x); else groupPanel(x);
}
function nodePanel(x) {
  var n = M.d.nodes[x];
  html("h2", n.l, panel);
  var rows = [["kind", n.t], ["grad_fn", n.f || "-"], ["module", n.sc || "(top level)"]];
  if (n.args) rows.push(["args", n.args]);
  rows.push(["source", n.src || "-"], ["forward step", n.fw === undefined ? "-" : n.fw], ["backward step", n.bw === undefined ? "-" : n.bw]);
  facts(rows, panel);
  (n.fd || []).forEach(function (i) {
    var f = M.d.findings[i];
    html("p", (f.sev === "note" ? "(i) " : "⚠ ") + f.sev + " " + f.kind + ": " + f.msg, panel, "finding");
  });
  (n.vs || []).forEach(function (s, i) { statsTable(n.vs.length > 1 ? "value [" + i + "]" : "value", stats(s), panel); });
  // A parameter of a data-parallel run has two gradients: this rank's own, before the collective, and the
  // one after it (the average over the ranks, or this rank's shard of it), which the optimizer used.
  var rd = n.rd;
  if (n.t !== "input") (n.gs || []).forEach(function (s, i) {
    statsTable(rd ? rd.lt : n.gs.length > 1 ? "gradient [" + i + "]" : "gradient", stats(s), panel);
    if (rd) panel.lastElementChild.setAttribute("data-grad", "local");
  });
  if (rd) {
    statsTable(rd.t, stats(rd.s), panel);
    panel.lastElementChild.setAttribute("data-grad", "reduced");
  }
  // The chain rule at a node with several consumers: its gradient is the sum of what each sent back.
  (n.sums || []).forEach(function (line) { html("p", line, panel, "sum"); });
  if (n.sent && n.sent.length) {
    html("h3", "sent back along each edge", panel);
    var sent = html("table", null, panel);
    sent.className = "sent";
    n.sent.forEach(function (r) {
      var tr = html("tr", null, sent), from = M.d.nodes[r[0]];
      var td0 = html("td", null, tr);
      jumpLink("from " + from.l + (from.bw === undefined ? "" : " #" + from.bw), r[0], td0);
      html("td", r[1], tr).setAttribute("data-dst", from.k);
    });
  }
  if (n.up) {
    statsTable(n.sgd ? "optimizer update Δw (applied)" : "optimizer update Δw", stats(n.up), panel);
    html("p", "‖Δw‖/‖w‖ = " + fmt(num(n.ur) === null ? n.ur : n.ur), panel);
  }
  if (n.sgd) statsTable("−lr·grad (plain SGD's step)", stats(n.sgd), panel);
}
function groupPanel(x) {
  var g = groupOf(x);
  html("h2", g.kind === "root" ? g.t : frameTitle(x), panel);
  var rows = [["kind", g.kind === "fold" ? g.r + " identical modules, folded" : g.kind === "run" ? "a run of consecutive items" : g.kind === "root" ? "the whole trace" : "module"]];
  if (g.cls) rows.push(["class", g.cls]);
  if (g.kind === "fold") rows.push(["members", g.paths.join(", ")]);
  rows.push(["nodes inside", g.n || 0], ["ops", g.ops || 0], ["parameters", g.params || 0], ["first backward step", g.bw === undefined ? "-" : g.bw]);
  rows.push(["output", g.out === undefined ? "-" : M.d.nodes[g.out].l], ["‖grad‖ entering (at the output)", fmt(g.gn)]);
  facts(rows, panel);
  if (g.kind !== "root") {
    var b = html("button", isOpen(x) ? "− close this group" : "+ open this group", panel, "toggle");
    b.addEventListener("click", function () { toggle(x); });
  }
  if (g.out !== undefined) jumpLink("show its output node", g.out, html("p", null, panel));
  // What crossed the group's border in backprop: gradient in from its consumers, out to its inputs.
  var inside = function (i) { for (var p = i; p >= 0; p = M.parent[p]) if (p === x) return true; return false; };
  var enter = [], leave = [];
  M.d.edges.forEach(function (e) {
    var a = inside(e[0]), b = inside(e[1]);
    if (a && !b && e[2]) enter.push(M.d.nodes[e[1]].l + " → " + M.d.nodes[e[0]].l + ": " + e[2]);
    if (!a && b && e[2]) leave.push(M.d.nodes[e[1]].l + " → " + M.d.nodes[e[0]].l + ": " + e[2]);
  });
  [["gradient entering (from consumers outside)", enter], ["gradient leaving (to inputs and parameters outside)", leave]].forEach(function (p) {
    if (!p[1].length) return;
    html("h3", p[0], panel);
    var ul = html("ul", null, panel, "crossing");
    p[1].slice(0, 12).forEach(function (t) { html("li", t, ul); });
    if (p[1].length > 12) html("li", "… " + (p[1].length - 12) + " more", ul);
  });
}

function showCrumbs(x) {
  crumbs.replaceChildren();
  var chain = [];
  for (var p = x; p >= 0; p = M.parent[p]) chain.unshift(p);
  chain.forEach(function (c, k) {
    if (k) html("span", "›", crumbs, "sep");
    var b = html("button", clip(itemLabel(c), 48), crumbs, c === x ? "crumb here" : "crumb");
    b.setAttribute("data-item", c);
    b.addEventListener("click", function () { goTo(c, false); });
  });
}

function showFindings() {
  var list = document.getElementById("findings");
  list.replaceChildren();
  document.getElementById("findings-title").textContent = "findings (" + M.d.findings.length + ")" + (M.d.findings.length ? "" : ": none");
  M.d.findings.forEach(function (f) {
    var li = html("li", null, list, "finding sev-" + f.sev);
    html("b", (f.sev === "note" ? "(i) " : "⚠ ") + f.kind, li);
    html("span", " " + f.msg, li);
    if (f.hint) html("div", "try: " + f.hint, li, "hint");
    if (f.node !== undefined && f.node !== null) {
      li.setAttribute("data-node", M.d.nodes[f.node].k);
      li.tabIndex = 0;
      li.addEventListener("click", function () { goTo(f.node, true); });
    }
  });
}

function showLegend() {
  var box = document.getElementById("legend");
  box.replaceChildren();
  var head = html("button", "legend", box, "legend-toggle");
  head.addEventListener("click", function () { box.classList.toggle("closed"); });
  var body = html("div", null, box, "legend-body");
  var top = html("div", null, body);
  var f = S.overlay;
  var titles = { band: "header colour: gradient magnitude (RMS, log scale, fixed decades as in the SVG)", gn: "gradient RMS ‖grad‖/√n (log scale over this trace)",
    ur: "update ratio ‖Δw‖/‖w‖ (log scale over this trace)", vrms: "value RMS (log scale over this trace)", nan: "NaN count in values and gradients" };
  html("span", titles[f], top, "legend-title");
  var row = html("span", null, top, "swatches");
  function swatch(color, label) { var s = html("span", label, row, "swatch"); s.style.background = color; s.style.color = ink(color); }
  if (f === "band") M.d.bands.forEach(function (b) { swatch(b[0], b[1]); });
  else if (f === "nan") { swatch("#e0112b", "has NaN"); swatch("#b8b8b8", "none"); }
  else if (S.range) {
    VIRIDIS.forEach(function (c, i) { swatch(c, i === 0 ? "1e" + S.range[0].toFixed(1) : i === 9 ? "1e" + S.range[1].toFixed(1) : ""); });
    swatch("#b8b8b8", "zero"); swatch("#ffffff", "none");
  } else html("span", "nothing in this trace has it", row);
  html("div", "#n (top right of a box) = the order in which backprop reached the node: the replay's step n, #0 is the loss", body);
  html("div", "rounded box: op · tan: parameter · blue: other tensor requiring grad · dashed: input · stacked box ×K: K identical modules folded · framed area: an open module (click its title to close)", body);
  html("div", "replay: the lit edges carry the gradient each consumer sent back; a node with several consumers adds them up", body);
}
