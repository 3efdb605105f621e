// watch_tree.js: the module tree on the left. Rows come in tree order (parents first) with a depth;
// a module row opens and closes the rows below it. Every name reaches the page through textContent.

// rows: the page data's rows. Adds parent indices, child flags and the initial open state: modules
// are open except those whose only children are parameters (a Linear's weight and bias stay folded).
function buildTree(rows) {
  var stack = [];
  rows.forEach(function (r, i) {
    r.index = i;
    while (stack.length && rows[stack[stack.length - 1]].depth >= r.depth) stack.pop();
    r.parent = stack.length ? stack[stack.length - 1] : -1;
    r.hasKids = false; r.hasModuleKids = false;
    if (r.parent >= 0) {
      rows[r.parent].hasKids = true;
      if (r.kind === "module") rows[r.parent].hasModuleKids = true;
    }
    stack.push(i);
  });
  rows.forEach(function (r) { r.open = r.kind === "module" && r.hasModuleKids; });
}

function rowVisible(rows, r) {
  for (var p = r.parent; p >= 0; p = rows[p].parent) if (!rows[p].open) return false;
  return true;
}

function openAncestors(rows, r) {
  for (var p = r.parent; p >= 0; p = rows[p].parent) rows[p].open = true;
}

// Draws the tree into `nav`: one element per row (made once), shown or hidden by visibility and
// the search filter. Callbacks: onSelect(row), onToggle(row).
function makeTreeView(nav, rows, onSelect, onToggle) {
  var views = rows.map(function (r) {
    var li = document.createElement("div");
    li.className = "row kind-" + r.kind;
    li.tabIndex = -1;
    li.dataset.index = String(r.index);
    li.style.paddingLeft = (4 + 12 * r.depth) + "px";
    var tog = document.createElement("span");
    tog.className = "tog";
    tog.textContent = r.hasKids ? "" : " ";
    var name = document.createElement("span");
    name.className = "name";
    name.textContent = r.name;
    var type = document.createElement("span");
    type.className = "type";
    type.textContent = r.type;
    var spark = document.createElement("canvas");
    spark.className = "spark";
    spark.height = 18;
    li.title = r.full + (r.type ? " (" + r.type + ")" : "");
    li.appendChild(tog); li.appendChild(name); li.appendChild(type); li.appendChild(spark);
    tog.addEventListener("click", function (ev) { ev.stopPropagation(); if (r.hasKids) { r.open = !r.open; onToggle(r); } });
    li.addEventListener("click", function () { onSelect(r); });
    nav.appendChild(li);
    return { el: li, tog: tog, spark: spark };
  });
  return {
    views: views,
    // Which rows are shown: visible under the open state, or matching `filter` (then every match).
    shown: function (filter) {
      return rows.filter(function (r) {
        if (filter) return r.full.toLowerCase().indexOf(filter) >= 0;
        return rowVisible(rows, r);
      });
    },
    update: function (shownRows, selected) {
      var on = {};
      shownRows.forEach(function (r) { on[r.index] = true; });
      rows.forEach(function (r, i) {
        var v = views[i];
        v.el.hidden = !on[i];
        v.tog.textContent = r.hasKids ? (r.open ? "▾" : "▸") : " ";
        v.el.classList.toggle("selected", i === selected);
      });
    }
  };
}
