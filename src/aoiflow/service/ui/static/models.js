/* Models page: activate a run (with the active or a chosen defect-kind model). */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var out = document.getElementById("models-result");
    document.querySelectorAll("button.activate").forEach(function (button) {
      button.addEventListener("click", function () {
        var body = { run: button.dataset.run };
        if (button.dataset.supervised) body.supervised = button.dataset.supervised;
        button.disabled = true;
        out.textContent = "Loading " + body.run + (body.supervised ? " with " + body.supervised : "") + "…";
        aoi.api("POST", "/api/v1/models/activate", body).then(function (r) {
          out.textContent = "Active: " + r.active + " (was " + r.previous + ").";
          setTimeout(function () { window.location.reload(); }, 700);
        }).catch(function (e) { button.disabled = false; out.textContent = "Not activated: " + e.message; });
      });
    });
  });
})();
