// replay.js: backprop, one item at a time. The step count k says how many nodes of the backward
// order have run; a step moves k past the next item as shown, so a closed group is one step
// (all its nodes at once), and the edges lit are the gradient that entered it and left it.

var slider = document.getElementById("slider");
var stepinfo = document.getElementById("stepinfo");

function ownerAt(k) { return M.owner[M.d.backward[k]]; }
function nextStep(k) {
  var B = M.d.backward.length;
  if (k >= B) return B;
  var o = ownerAt(k);
  k++;
  while (k < B && ownerAt(k) === o) k++;
  return k;
}
function prevStep(k) {
  if (k <= 0) return 0;
  var o = ownerAt(k - 1);
  k--;
  while (k > 0 && ownerAt(k - 1) === o) k--;
  // k is now where the current item's run began: the previous step ends there.
  return k;
}

// What came back along an edge: the recorded per-edge gradient; else, from a node with one
// consumer, the node's whole gradient; else only a share of it, and the label says so rather than claim the total.
function edgeText(es) {
  var texts = es.map(function (k) { return M.d.edges[k][2]; }).filter(function (t) { return t; });
  if (!texts.length) {
    var src = M.d.edges[es[0]][0];
    return (M.outdeg[src] === 1 ? "‖grad‖ " : "part of ‖grad‖ ") + fmt(num(M.d.nodes[src].gn));
  }
  return texts.length === 1 ? texts[0] : "Σ " + texts.length + " edges: " + texts.slice(0, 3).join(", ") + (texts.length > 3 ? ", …" : "");
}

function setStep(k) {
  var B = M.d.backward.length;
  k = Math.max(0, Math.min(B, k));
  S.step = k;
  slider.max = String(B); slider.value = String(k);
  S.visitedGroups = new Set();
  for (var i = 0; i < k; i++) { var o = ownerAt(i); if (!isNode(o)) S.visitedGroups.add(o); }
  S.current = k > 0 ? ownerAt(k - 1) : null;
  S.flows = []; S.sumText = "";
  if (S.current !== null) {
    var c = S.current, start = k - 1;
    while (start > 0 && ownerAt(start - 1) === c) start--;
    var before = function (n) { var s = M.stepIndex[n]; return s >= 0 && s < start; };
    var into = new Map(), out = new Map();
    M.d.edges.forEach(function (e, idx) {
      var a = M.owner[e[0]], b = M.owner[e[1]];
      if (a === c && b !== c && before(e[1])) { var key = b; if (!into.has(key)) into.set(key, []); into.get(key).push(idx); }
      if (!isNode(c) && b === c && a !== c && M.stepIndex[e[1]] >= 0) { if (!out.has(a)) out.set(a, []); out.get(a).push(idx); }
    });
    into.forEach(function (es, b) { S.flows.push({ a: c, b: b, es: es, dir: "in", text: edgeText(es) }); });
    out.forEach(function (es, a) { S.flows.push({ a: a, b: c, es: es, dir: "out", text: "out: " + edgeText(es) }); });
    if (isNode(c)) { var n = M.d.nodes[c]; S.sumText = n.sums && n.sums.length ? n.sums[0] : ""; }
    else S.sumText = "a closed group: " + (k - start) + " nodes in one step";
  }
  var shownStep = S.current === null ? "" : isNode(S.current) ? "#" + M.d.nodes[S.current].bw : "#" + M.d.nodes[M.d.backward[start]].bw + "–#" + M.d.nodes[M.d.backward[k - 1]].bw;
  stepinfo.textContent = "step " + k + " / " + B + (shownStep ? " · " + shownStep : "");
  if (S.current !== null) {
    select(S.current, false);
    if (!inView(S.current)) centerOn(S.current, false);  // follow backprop across the graph
  }
  restyle();
}

function stop() {
  if (S.timer) { clearInterval(S.timer); S.timer = null; }
  document.getElementById("play").textContent = "▶ play";
}
function play() {
  if (S.timer) { stop(); return; }
  if (S.step >= M.d.backward.length) setStep(0);
  document.getElementById("play").textContent = "❚❚ pause";
  S.timer = setInterval(function () { if (S.step >= M.d.backward.length) stop(); else setStep(nextStep(S.step)); }, 450);
}
