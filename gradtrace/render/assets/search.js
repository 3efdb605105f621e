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
  S.bandMatches = null;
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
  // A dissolved container (no group to find) is a hit of its own, first: going to it opens the
  // groups around its members and brings its dashed frame into view.
  for (var c = M.dis.length - 1; c >= 0; c--) {
    var path = M.dis[c].path.toLowerCase();
    if (path === q || path.slice(-q.length - 1) === "." + q) {
      hits.unshift(-1 - c);
      if (!S.bandMatches) S.bandMatches = new Set();
      S.bandMatches.add(c);
    }
  }
  matchinfo.textContent = hits.length ? hits.length + " found · Enter: next" : "nothing found";
  hits.slice(0, 50).forEach(function (x, k) {
    if (x < 0) {
      var dc = M.dis[-1 - x];
      var li = html("li", dc.path + "  (container, not a group: " + dc.members.length + " members in " + itemLabel(dc.parent) + ")", results);
      li.setAttribute("data-container", dc.path);
    } else {
      li = html("li", itemLabel(x) + (isNode(x) && M.d.nodes[x].sc ? "  (" + M.d.nodes[x].sc + ")" : ""), results);
      li.setAttribute("data-item", x);
      if (isNode(x)) li.setAttribute("data-key", M.d.nodes[x].k);
    }
    li.addEventListener("click", function () { hitAt = k; results.hidden = true; goToHit(x); });
  });
  if (hits.length > 50) html("li", "… " + (hits.length - 50) + " more (Enter steps through all)", results, "more");
  restyle();
}
function nextHit() {
  if (!hits.length) return;
  hitAt = (hitAt + 1) % hits.length;
  matchinfo.textContent = (hitAt + 1) + " of " + hits.length;
  results.hidden = true;
  goToHit(hits[hitAt]);
}
function goToHit(x) { if (x < 0) goToContainer(-1 - x); else goTo(x, true); }
