// The multi-rank watch page: one rank's watch page shown at a time (each in its own srcdoc frame).
(function () {
"use strict";
var buttons = Array.prototype.slice.call(document.querySelectorAll("#ranks button[data-rank]"));
var frames = Array.prototype.slice.call(document.querySelectorAll("iframe[data-rank]"));
function show(rank) {
  buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-rank") === rank)); });
  frames.forEach(function (f) { f.hidden = f.getAttribute("data-rank") !== rank; });
}
buttons.forEach(function (b) { b.addEventListener("click", function () { show(b.getAttribute("data-rank")); }); });
if (buttons.length) { show(buttons[0].getAttribute("data-rank")); }
})();
