// Inline gradtrace diagrams (docs/_hooks/diagrams.py): drag to pan, one button toggles
// "fit to width" and "actual size" (where 11 pt text reads as the page's own text).
(function () {
  "use strict";
  function setup(fig) {
    var view = fig.querySelector(".gt-view");
    var svg = fig.querySelector("svg.gt-svg");
    var button = fig.querySelector(".gt-zoom");
    if (!view || !svg || !button || fig.dataset.ready) return;
    fig.dataset.ready = "1";
    var start = svg.style.width;
    button.addEventListener("click", function () {
      var fitted = fig.classList.toggle("gt-fitted");
      svg.style.width = fitted ? "100%" : start;
      button.textContent = fitted ? "actual size" : "fit to width";
    });
    var drag = null;
    view.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      drag = { x: ev.clientX, y: ev.clientY, left: view.scrollLeft, top: view.scrollTop };
      view.classList.add("gt-dragging");
    });
    window.addEventListener("pointermove", function (ev) {
      if (!drag) return;
      view.scrollLeft = drag.left - (ev.clientX - drag.x);
      view.scrollTop = drag.top - (ev.clientY - drag.y);
    });
    window.addEventListener("pointerup", function () { drag = null; view.classList.remove("gt-dragging"); });
  }
  function all() { document.querySelectorAll("figure.gt-diagram").forEach(setup); }
  if (window.document$ && window.document$.subscribe) window.document$.subscribe(all);  // Material's instant pages
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", all);
  else all();
})();
