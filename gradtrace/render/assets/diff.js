// The comparison page: sort the table by a column, and click a row (or a node) to find its node
// (or its row). Everything it shows was written into the page as text; this only moves rows and
// sets classes, so nothing from a trace is ever parsed as markup here.
(function () {
  "use strict";
  const table = document.getElementById("changes");
  const graph = document.getElementById("graph");
  let current = null;

  function sortValue(cell, numeric) {
    const v = cell.dataset.v;
    if (!numeric) return v;
    const x = parseFloat(v);  // "Infinity" parses; "" (nothing to compare) is NaN and sorts last
    return x;
  }

  function sortBy(th) {
    const index = Array.prototype.indexOf.call(th.parentNode.children, th);
    const numeric = !th.classList.contains("text");
    const desc = !th.classList.contains("sorted-desc");
    for (const other of th.parentNode.children) other.classList.remove("sorted-desc", "sorted-asc");
    th.classList.add(desc ? "sorted-desc" : "sorted-asc");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (r1, r2) {
      const a = sortValue(r1.cells[index], numeric), b = sortValue(r2.cells[index], numeric);
      if (numeric) {
        const na = Number.isNaN(a), nb = Number.isNaN(b);
        if (na || nb) return na === nb ? 0 : (na ? 1 : -1);
        return desc ? b - a : a - b;
      }
      return desc ? b.localeCompare(a) : a.localeCompare(b);
    });
    for (const r of rows) body.appendChild(r);
  }

  function highlight(id, from) {
    if (current) for (const el of document.querySelectorAll(".hl")) el.classList.remove("hl");
    current = id;
    const node = document.getElementById(id);
    if (node) {
      node.classList.add("hl");
      if (from !== "graph") node.scrollIntoView({block: "center", inline: "center"});
    }
    for (const el of document.querySelectorAll("[data-node]")) {
      if (el.dataset.node === id) {
        el.classList.add("hl");
        if (from === "graph" && el.tagName === "TR") el.scrollIntoView({block: "nearest"});
      }
    }
  }

  if (table) {
    for (const th of table.tHead.rows[0].cells) th.addEventListener("click", function () { sortBy(th); });
  }
  for (const el of document.querySelectorAll("[data-node]")) {
    el.addEventListener("click", function () { highlight(el.dataset.node, "table"); });
    el.addEventListener("keydown", function (e) { if (e.key === "Enter") highlight(el.dataset.node, "table"); });
  }
  if (graph) {
    graph.addEventListener("click", function (e) {
      const g = e.target.closest ? e.target.closest("g.node") : null;
      if (g && g.id && g.id !== "legend") highlight(g.id, "graph");
    });
  }
})();
