/* Labels page: Label Studio import, training jobs with progress. */
(function () {
  "use strict";

  function jobBox(job) {
    var box = document.querySelector('[data-job="' + job.id + '"]');
    if (!box) {
      box = aoi.el("div", { "class": "job", "data-job": job.id });
      var p = aoi.el("p");
      p.appendChild(aoi.el("strong", {}, job.id));
      p.appendChild(document.createTextNode(" "));
      p.appendChild(aoi.el("span", { "class": "job-state" }));
      p.appendChild(document.createTextNode(" · "));
      p.appendChild(aoi.el("span", { "class": "job-message" }));
      box.appendChild(p);
      box.appendChild(aoi.el("progress", { max: "1", value: "0", "aria-label": "Training progress" }));
      box.appendChild(aoi.el("p", { "class": "job-links" }));
      var host = document.getElementById("train-jobs");
      host.insertBefore(box, host.firstChild);
    }
    return box;
  }

  function show(job) {
    var box = jobBox(job);
    box.dataset.state = job.state;
    box.querySelector(".job-state").textContent = job.state + (job.state === "training" ? " (step " + job.step + " of " + job.steps + ")" : "");
    box.querySelector(".job-message").textContent = job.message;
    box.querySelector("progress").value = job.progress;
    box.querySelector("progress").textContent = Math.round(job.progress * 100) + " %";
    var links = box.querySelector(".job-links");
    if (job.report_url && !links.querySelector("a")) {
      links.replaceChildren();
      links.appendChild(aoi.el("a", { href: job.report_url, "class": "report-link" }, "Test report"));
      links.appendChild(document.createTextNode(" · "));
      links.appendChild(aoi.el("a", { href: "/models" }, "Activate on the Models page"));
    }
  }

  function follow(id) {
    aoi.api("GET", "/api/v1/training/" + encodeURIComponent(id)).then(function (job) {
      show(job);
      if (job.state !== "done" && job.state !== "failed") setTimeout(function () { follow(id); }, 1000);
      else {
        document.getElementById("train-start").disabled = false;
        aoi.toast(job.state === "done" ? "Training finished." : "Training failed: " + job.message, job.state === "failed");
      }
    }).catch(function (e) { aoi.toast(e.message, true); setTimeout(function () { follow(id); }, 3000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("train-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var button = document.getElementById("train-start");
      button.disabled = true;
      aoi.api("POST", "/api/v1/training", {
        steps: Number(document.getElementById("train-steps").value),
        image_size: Number(document.getElementById("train-size").value), by: aoi.by()
      }).then(function (job) { show(job); follow(job.id); })
        .catch(function (e) { button.disabled = false; aoi.toast("Not started: " + e.message, true); });
    });
    document.querySelectorAll(".job").forEach(function (box) {
      if (box.dataset.state !== "done" && box.dataset.state !== "failed") {
        document.getElementById("train-start").disabled = true;
        follow(box.dataset.job);
      }
    });
    document.getElementById("ls-import").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var file = document.getElementById("ls-file").files[0], out = document.getElementById("ls-result");
      if (!file) return;
      file.text().then(function (text) {
        return aoi.api("POST", "/api/v1/labelstudio/import", text, true);
      }).then(function (r) {
        out.textContent = "Imported " + r.imported + " review(s): " + r.confirmed + " confirmed, " + r.corrected +
          " corrected, " + r.rejected + " normal." + (r.problems.length ? " Left out: " + r.problems.join("; ") : "");
      }).catch(function (e) { out.textContent = "Not imported: " + e.message; });
    });
  });
})();
