// gradtrace backprop replay. Every string from the trace reaches the page through
// textContent or an SVG attribute, never through innerHTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gradtrace-data").textContent);
  var SVGNS = "http://www.w3.org/2000/svg";
  var svg = document.getElementById("graph");
  var panel = document.getElementById("panel");
  var byKey = {};
  var edgeViews = [];
  var order = data.backward;
  var stepIndex = {};
  order.forEach(function (k, i) { stepIndex[k] = i; });
  var state = { step: 0, selected: null, timer: null };

  function el(tag, attrs, parent, ns) {
    var e = ns === false ? document.createElement(tag) : document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (a) { e.setAttribute(a, attrs[a]); });
    if (parent) parent.appendChild(e);
    return e;
  }
  function html(tag, text, parent, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }
  function clip(text) { return text.length > 40 ? text.slice(0, 39) + "…" : text; }
  function fmt(x) {
    if (x === null || x === undefined) return "-";
    if (typeof x === "string") return x;
    if (x === 0) return "0";
    var a = Math.abs(x);
    return (a >= 1e-4 && a < 1e6) ? String(Number(x.toPrecision(6))) : x.toExponential(4);
  }

  // -- the graph -------------------------------------------------------------------
  var edgeLayer = el("g", { "class": "edges" }, svg);
  var nodeLayer = el("g", { "class": "nodes" }, svg);
  var labelLayer = el("g", { "class": "edge-labels" }, svg);  // above the nodes, so no node hides a label
  data.nodes.forEach(function (n) { byKey[n.key] = { n: n, out: 0 }; });
  data.edges.forEach(function (e) { byKey[e.src].out += 1; });
  data.edges.forEach(function (e) {
    var a = byKey[e.src].n, b = byKey[e.dst].n;
    var x1 = a.x + data.w / 2, y1 = a.y + data.h, x2 = b.x + data.w / 2, y2 = b.y;
    var my = (y1 + y2) / 2;
    var g = el("g", { "class": "edge", "data-src": e.src, "data-dst": e.dst }, edgeLayer);
    el("path", { d: "M" + x1 + "," + y1 + " C" + x1 + "," + my + " " + x2 + "," + my + " " + x2 + "," + y2 }, g);
    // The label sits near the consumer's end (t = 0.8 on the curve): what that consumer sent back,
    // and several edges out of one node land near different consumers instead of on top of each other.
    var u = 0.8, a0 = (1 - u) * (1 - u) * (1 - u), a1 = 3 * (1 - u) * (1 - u) * u, a2 = 3 * (1 - u) * u * u, a3 = u * u * u;
    var t = el("text", { "class": "edge-label", "data-src": e.src, "data-dst": e.dst,
      x: (a0 + a1) * x1 + (a2 + a3) * x2 + 5, y: a0 * y1 + (a1 + a2) * my + a3 * y2 }, labelLayer);
    t.textContent = "";
    edgeViews.push({ e: e, g: g, label: t });
  });
  data.nodes.forEach(function (n) {
    var cls = "node kind-" + n.kind + (n.loss ? " loss" : "") + (n.alarm ? " alarm" : "");
    var g = el("g", { "class": cls, "data-key": n.key, transform: "translate(" + n.x + "," + n.y + ")", tabindex: "0" }, nodeLayer);
    el("rect", { "class": "body", width: data.w, height: data.h, rx: n.kind === "op" ? 8 : 1 }, g);
    el("rect", { "class": "header", width: data.w, height: 17, rx: n.kind === "op" ? 8 : 1, fill: n.color }, g);
    var title = el("text", { "class": "title", x: 6, y: 13, fill: n.ink }, g);
    var name = n.label + (n.args ? " " + n.args : "");
    title.textContent = name.length > 30 ? name.slice(0, 29) + "…" : name;
    var step = el("text", { x: data.w - 6, y: 13, "text-anchor": "end", fill: n.ink }, g);
    step.textContent = n.bwd === null ? "" : "#" + n.bwd;
    el("text", { x: 6, y: 32 }, g).textContent = clip(n.shapeText);
    // A node with several consumers says how its gradient adds up, where that fits: grad = -400 + -400 = -800.
    var sum = n.sums && n.sums.length === 1 && n.sums[0].length <= 40 ? n.sums[0] : null;
    el("text", { x: 6, y: 48 }, g).textContent = clip(n.kind === "input" ? n.valueText : (sum || "grad " + n.gradText));
    var tip = el("title", {}, g);
    tip.textContent = name + (n.scope ? " — " + n.scope : "") + (n.source ? "\n" + n.source : "");
    g.addEventListener("click", function (ev) { ev.stopPropagation(); select(n.key); });
    g.addEventListener("keydown", function (ev) { if (ev.key === "Enter") select(n.key); });
    byKey[n.key].g = g;
  });

  // -- the side panel ------------------------------------------------------------------
  function statsTable(title, s, parent) {
    html("h3", title, parent);
    if (!s) { html("p", "not recorded", parent); return; }
    var table = html("table", null, parent);
    var rows = [["shape", "(" + s.shape.join(", ") + (s.shape.length === 1 ? "," : "") + ")"], ["dtype", s.dtype], ["device", s.device],
      ["numel", s.numel], ["min", s.min], ["max", s.max], ["mean", s.mean], ["std", s.std], ["norm", s.norm], ["NaN", s.nan], ["inf", s.inf]];
    if (s.values) rows.push(["values", s.values.map(fmt).join(", ")]);
    // With NaN/inf present, the statistics describe the finite elements; the counts stand apart.
    if (s.nan > 0 || s.inf > 0) html("p", "min, max, mean, std and norm are over the finite elements", parent, "finite-note");
    rows.forEach(function (r) {
      var tr = html("tr", null, table);
      html("td", r[0], tr);
      var td = html("td", typeof r[1] === "number" ? fmt(r[1]) : String(r[1]), tr);
      td.setAttribute("data-field", r[0]);
      if (typeof r[1] === "number" || typeof r[1] === "string") td.setAttribute("data-value", String(r[1]));
    });
  }
  function showPanel(key) {
    panel.replaceChildren();
    var n = byKey[key].n;
    html("h2", n.label, panel);
    var info = html("table", null, panel);
    var facts = [["kind", n.kind], ["grad_fn", n.grad_fn || "-"], ["module", n.scope || n.module || "(top level)"]];
    if (n.args) facts.push(["args", n.args]);
    facts.push(["source", n.source || "-"]);
    facts.push(["forward step", n.fwd === null ? "-" : n.fwd], ["backward step", n.bwd === null ? "-" : n.bwd]);
    facts.forEach(function (r) {
      var tr = html("tr", null, info);
      html("td", r[0], tr);
      html("td", String(r[1]), tr).setAttribute("data-field", r[0]);
    });
    (n.findings || []).forEach(function (f) { html("p", (f.indexOf("note ") === 0 ? "ⓘ " : "⚠ ") + f, panel, "finding"); });
    n.values.forEach(function (s, i) { statsTable(n.values.length > 1 ? "value [" + i + "]" : "value", s, panel); });
    if (n.kind !== "input") n.grads.forEach(function (s, i) { statsTable(n.grads.length > 1 ? "gradient [" + i + "]" : "gradient", s, panel); });
    // The chain rule at a node with several consumers: its gradient is the sum of what each sent back.
    (n.sums || []).forEach(function (line) { html("p", line, panel, "sum"); });
    if (n.sent && n.sent.length) {
      html("h3", "sent back along each edge", panel);
      var sent = html("table", null, panel);
      sent.className = "sent";
      n.sent.forEach(function (r) {
        var tr = html("tr", null, sent);
        var from = byKey[r[0]].n;
        html("td", "from " + from.label + (from.bwd === null ? "" : " #" + from.bwd), tr);
        var td = html("td", r[1], tr);
        td.setAttribute("data-dst", r[0]);
      });
    }
    if (n.update) {
      statsTable(n.sgdUpdate ? "optimizer update Δw (applied)" : "optimizer update Δw", n.update, panel);
      html("p", "‖Δw‖/‖w‖ = " + fmt(n.ratio), panel);
    }
    if (n.sgdUpdate) statsTable("−lr·grad (plain SGD's step)", n.sgdUpdate, panel);
  }
  function select(key) {
    if (state.selected && byKey[state.selected]) byKey[state.selected].g.classList.remove("selected");
    state.selected = key;
    byKey[key].g.classList.add("selected");
    showPanel(key);
  }

  // -- replay --------------------------------------------------------------------------
  var slider = document.getElementById("slider");
  var stepinfo = document.getElementById("stepinfo");
  slider.max = String(order.length);
  function setStep(k) {
    k = Math.max(0, Math.min(order.length, k));
    state.step = k;
    slider.value = String(k);
    stepinfo.textContent = "step " + k + " / " + order.length;
    svg.classList.toggle("replaying", k > 0);
    data.nodes.forEach(function (n) {
      var i = stepIndex[n.key];
      var g = byKey[n.key].g;
      g.classList.toggle("visited", i !== undefined && i < k);
      g.classList.toggle("current", i !== undefined && i === k - 1);
    });
    var current = k > 0 ? order[k - 1] : null;
    edgeViews.forEach(function (v) {
      // The gradient reaching the current node came from the nodes that consumed its output.
      var flow = current !== null && v.e.src === current && stepIndex[v.e.dst] !== undefined && stepIndex[v.e.dst] < k - 1;
      v.g.classList.toggle("flow", flow);
      v.label.classList.toggle("flow", flow);
      v.label.textContent = flow ? flowText(v.e, byKey[current]) : "";
    });
    if (current !== null) {
      select(current);
      if (!inView(byKey[current].n)) center(byKey[current].n, false);  // follow backprop across the graph
    }
  }
  // What came back along an edge: the recorded per-edge gradient; else, with one consumer, the
  // node's whole gradient; else only a share of it, and the label says so rather than claim the total.
  function flowText(e, src) {
    if (e.gradLabel) return e.gradLabel;
    return (src.out === 1 ? "‖grad‖ " : "part of ‖grad‖ ") + fmt(src.n.gradNorm);
  }
  function stop() { if (state.timer) { clearInterval(state.timer); state.timer = null; } document.getElementById("play").textContent = "▶ play"; }
  function play() {
    if (state.timer) { stop(); return; }
    if (state.step >= order.length) setStep(0);
    document.getElementById("play").textContent = "❚❚ pause";
    state.timer = setInterval(function () { if (state.step >= order.length) stop(); else setStep(state.step + 1); }, 350);
  }
  document.getElementById("first").addEventListener("click", function () { stop(); setStep(0); });
  document.getElementById("prev").addEventListener("click", function () { stop(); setStep(state.step - 1); });
  document.getElementById("next").addEventListener("click", function () { stop(); setStep(state.step + 1); });
  document.getElementById("last").addEventListener("click", function () { stop(); setStep(order.length); });
  document.getElementById("play").addEventListener("click", play);
  slider.addEventListener("input", function () { stop(); setStep(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", function (ev) {
    if (ev.target && ev.target.id === "search") return;
    if (ev.key === "ArrowRight") { stop(); setStep(state.step + 1); ev.preventDefault(); }
    if (ev.key === "ArrowLeft") { stop(); setStep(state.step - 1); ev.preventDefault(); }
  });

  // -- search --------------------------------------------------------------------------
  var search = document.getElementById("search");
  var results = document.getElementById("results");
  search.addEventListener("input", function () {
    var q = search.value.trim().toLowerCase();
    results.replaceChildren();
    data.nodes.forEach(function (n) {
      var hit = q !== "" && (n.label.toLowerCase().indexOf(q) >= 0 || n.module.toLowerCase().indexOf(q) >= 0);
      byKey[n.key].g.classList.toggle("match", hit);
      if (hit && results.childElementCount < 50) {
        var li = html("li", n.label + (n.module ? "  (" + n.module + ")" : ""), results);
        li.setAttribute("data-key", n.key);
        li.addEventListener("click", function () { select(n.key); center(n, true); });
      }
    });
  });

  // -- pan and zoom ----------------------------------------------------------------------
  var view = { x: 0, y: 0, w: data.width, h: data.height };
  function apply() { svg.setAttribute("viewBox", view.x + " " + view.y + " " + view.w + " " + view.h); }
  function fit() { view = { x: -10, y: -10, w: data.width + 20, h: data.height + 20 }; apply(); }
  function center(n, readable) {
    if (readable) {
      // Zoom in to one graph unit per screen pixel, where node text is legible, unless closer already.
      var r = svg.getBoundingClientRect();
      if (view.w > r.width || view.h > r.height) { view.w = r.width; view.h = r.height; }
    }
    view.x = n.x + data.w / 2 - view.w / 2; view.y = n.y + data.h / 2 - view.h / 2; apply();
  }
  function inView(n) {
    return n.x >= view.x && n.x + data.w <= view.x + view.w && n.y >= view.y && n.y + data.h <= view.y + view.h;
  }
  function toGraph(clientX, clientY) {
    var r = svg.getBoundingClientRect();
    var scale = Math.max(view.w / r.width, view.h / r.height);
    return { x: view.x + (clientX - r.left) * scale, y: view.y + (clientY - r.top) * scale, scale: scale };
  }
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var p = toGraph(ev.clientX, ev.clientY);
    var f = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
    view.x = p.x - (p.x - view.x) * f; view.y = p.y - (p.y - view.y) * f; view.w *= f; view.h *= f;
    apply();
  }, { passive: false });
  var drag = null;
  var canvas = document.getElementById("canvas");
  svg.addEventListener("pointerdown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y }; canvas.classList.add("dragging"); });
  window.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    var s = toGraph(0, 0).scale;
    view.x = drag.vx - (ev.clientX - drag.x) * s; view.y = drag.vy - (ev.clientY - drag.y) * s; apply();
  });
  window.addEventListener("pointerup", function () { drag = null; canvas.classList.remove("dragging"); });
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("zoomin").addEventListener("click", function () { view.x += view.w * 0.1; view.y += view.h * 0.1; view.w *= 0.8; view.h *= 0.8; apply(); });
  document.getElementById("zoomout").addEventListener("click", function () { view.x -= view.w * 0.125; view.y -= view.h * 0.125; view.w *= 1.25; view.h *= 1.25; apply(); });

  document.getElementById("caption").textContent = data.caption;
  fit();
  setStep(0);
  select(data.loss);
  // A small graph fits the screen; a big one opens legible, at the loss, where backprop begins.
  var box = svg.getBoundingClientRect();
  if (data.width > box.width * 1.5 || data.height > box.height * 1.5) center(byKey[data.loss].n, true);
})();
