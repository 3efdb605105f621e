// search.js: find nodes and groups by label, module path or key; every closed group holding a
// match says how many; Enter opens the groups around the next match and goes to it.

var search = document.getElementById("search");
var results = document.getElementById("results");
var matchinfo = document.getElementById("matchinfo");
var hits = [], hitAt = -1;

function runSearch() {
  var q = search.value.trim().toLowerCase();
  results.replaceChildren();
  results.hidden = false;  // the list shows while typing; going to a match folds it away (Enter steps on)
  hits = []; hitAt = -1;
  if (!q) { S.matches = null; S.matchCount = null; matchinfo.textContent = ""; restyle(); return; }
  S.matches = new Set(); S.matchCount = new Map();
  M.d.nodes.forEach(function (n, i) {
    if (n.l.toLowerCase().indexOf(q) >= 0 || (n.sc || "").toLowerCase().indexOf(q) >= 0 || n.k.toLowerCase() === q) {
      S.matches.add(i); hits.push(i);
      for (var p = M.parent[i]; p >= 0; p = M.parent[p]) S.matchCount.set(p, (S.matchCount.get(p) || 0) + 1);
    }
  });
  M.d.groups.forEach(function (g, j) {
    if (g.kind === "module" || g.kind === "fold") {
      if (g.path.toLowerCase() === q || (g.cls || "").toLowerCase() === q) hits.unshift(M.N + j);
    }
  });
  matchinfo.textContent = hits.length ? hits.length + " found · Enter: next" : "nothing found";
  hits.slice(0, 50).forEach(function (x, k) {
    var li = html("li", itemLabel(x) + (isNode(x) && M.d.nodes[x].sc ? "  (" + M.d.nodes[x].sc + ")" : ""), results);
    li.setAttribute("data-item", x);
    if (isNode(x)) li.setAttribute("data-key", M.d.nodes[x].k);
    li.addEventListener("click", function () { hitAt = k; results.hidden = true; goTo(x, true); });
  });
  if (hits.length > 50) html("li", "… " + (hits.length - 50) + " more (Enter steps through all)", results, "more");
  restyle();
}
function nextHit() {
  if (!hits.length) return;
  hitAt = (hitAt + 1) % hits.length;
  matchinfo.textContent = (hitAt + 1) + " of " + hits.length;
  results.hidden = true;
  goTo(hits[hitAt], true);
}
