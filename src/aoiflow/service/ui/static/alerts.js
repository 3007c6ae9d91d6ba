/* Alerts page: acknowledge; a notice when a new alert comes in. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button.ack").forEach(function (button) {
      button.addEventListener("click", function () {
        button.disabled = true;
        var id = button.dataset.alert;
        aoi.api("POST", "/api/v1/alerts/" + id + "/ack", { by: aoi.by() }).then(function (r) {
          var done = aoi.el("span", { "class": "acked-by" }, "Acknowledged by " + r.by);
          button.replaceWith(done);
          document.getElementById("alert-" + id).classList.add("acked");
          aoi.toast("Alert " + id + " acknowledged.");
        }).catch(function (e) { button.disabled = false; aoi.toast(e.message, true); });
      });
    });
    var after = document.getElementById("alerts-after").dataset.after;
    aoi.events(after, {
      alert: function (a) {
        var notice = document.getElementById("alerts-new");
        notice.replaceChildren(document.createTextNode("New alert: " + a.rule + " (" + a.severity + "). "));
        var link = aoi.el("a", { href: "/alerts" }, "Show it");
        notice.appendChild(link);
        notice.hidden = false;
      }
    });
  });
})();
