/* Live page: frames as they are judged (server-sent events), yield and defect-rate chart, figures. */
(function () {
  "use strict";
  var MAX_FRAMES = 12, NS = "http://www.w3.org/2000/svg";
  var boot, items, buckets, statsTimer = null;

  function minuteKey(iso) { var d = new Date(iso); d.setUTCSeconds(0, 0); return d.getTime(); }

  function recentBuckets(minutes) {
    var since = Date.now() - minutes * 60000;
    return buckets.filter(function (b) { return minuteKey(b.bucket) >= since - 60000; });
  }

  function latencyOf(i) {
    var t = i.timings_ms || {};
    if (typeof t.total === "number") return t.total;
    return ["upload", "queue", "inference", "files", "store"].reduce(function (s, k) { return s + (t[k] || 0); }, 0);
  }

  function median(xs) {
    if (!xs.length) return null;
    var s = xs.slice().sort(function (a, b) { return a - b; });
    var m = Math.floor(s.length / 2);
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  function setText(id, text) { var e = document.getElementById(id); if (e) e.textContent = text; }

  function figures() {
    var hour = recentBuckets(60), total = 0, ok = 0, bad = 0;
    hour.forEach(function (b) { total += b.total; ok += b.ok; bad += b.anomaly; });
    setText("kpi-yield", total ? (100 * ok / total).toFixed(1) + " %" : "–");
    setText("kpi-yield-sub", total ? ok + " of " + total + " parts ok" : "no parts in the last hour");
    setText("kpi-rate", total ? (100 * bad / total).toFixed(1) + " %" : "–");
    setText("kpi-rate-sub", total ? bad + " flagged" : "");
    var five = recentBuckets(5).reduce(function (s, b) { return s + b.total; }, 0);
    setText("kpi-throughput", (five / 5).toFixed(1));
    var lat = items.map(latencyOf).filter(function (v) { return v > 0; });
    var m = median(lat);
    setText("kpi-latency", m === null ? "–" : m.toFixed(0) + " ms");
    if (lat.length) {
      var s = lat.slice().sort(function (a, b) { return a - b; });
      setText("kpi-latency-sub", "median of the last " + lat.length + "; slowest " + s[s.length - 1].toFixed(0) + " ms");
    }
  }

  function svg(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }

  function chart() {
    var host = document.getElementById("chart");
    if (!host) return;
    var W = Math.max(host.clientWidth, 300), H = host.clientHeight || 220;
    var L = 40, R = 10, T = 10, B = 24, w = W - L - R, h = H - T - B;
    var end = minuteKey(new Date().toISOString()) + 60000, start = end - 60 * 60000;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, "aria-hidden": "true" });
    [0, 25, 50, 75, 100].forEach(function (p) {
      var y = T + h - h * p / 100;
      root.appendChild(svg("line", { x1: L, x2: L + w, y1: y, y2: y, "class": "grid" }));
      var t = svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }); t.textContent = p + "%"; root.appendChild(t);
    });
    for (var k = 0; k <= 60; k += 10) {
      var x = L + w * k / 60, t2 = svg("text", { x: x, y: H - 6, "text-anchor": "middle" });
      t2.textContent = k === 60 ? "now" : "-" + (60 - k) + " min";
      root.appendChild(t2);
    }
    var pts = buckets.map(function (b) { return { t: minuteKey(b.bucket), y: b.yield, r: b.total ? b.anomaly / b.total : 0 }; })
      .filter(function (p) { return p.t >= start && p.t < end; });
    var X = function (t) { return L + w * (t + 30000 - start) / (end - start); };
    var Y = function (v) { return T + h - h * v; };
    var barW = Math.max(2, w / 60 - 2);
    pts.forEach(function (p) { root.appendChild(svg("rect", { x: X(p.t) - barW / 2, y: Y(p.r), width: barW, height: h * p.r, "class": "rate-bar" })); });
    if (pts.length) {
      root.appendChild(svg("polyline", { points: pts.map(function (p) { return X(p.t) + "," + Y(p.y); }).join(" "), "class": "yield" }));
      root.appendChild(svg("polyline", { points: pts.map(function (p) { return X(p.t) + "," + Y(p.r); }).join(" "), "class": "rate" }));
      pts.forEach(function (p) { root.appendChild(svg("circle", { cx: X(p.t), cy: Y(p.y), r: 2.5, fill: "#1b7a34" })); });
    } else {
      var none = svg("text", { x: L + w / 2, y: T + h / 2, "text-anchor": "middle" });
      none.textContent = "No parts in the last hour";
      root.appendChild(none);
    }
    host.replaceChildren(root);
  }

  function refreshStats() {
    var since = new Date(Date.now() - 61 * 60000).toISOString();
    aoi.api("GET", "/api/v1/stats?bucket=minute&since=" + encodeURIComponent(since)).then(function (s) {
      buckets = s.buckets;
      figures();
      chart();
    }).catch(function () { /* the next event tries again */ });
  }

  function frameItem(i) {
    var li = aoi.el("li", { "class": "frame fresh", "data-id": String(i.id) });
    var a = aoi.el("a", { href: "/inspections/" + i.id, "aria-label": "Inspection " + i.id + ": " + i.verdict + ", score " + aoi.num(i.a, 2) });
    var showOverlay = document.getElementById("overlay-toggle").checked && i.overlay_url;
    var img = aoi.el("img", { src: showOverlay ? i.overlay_url : i.image_url, "data-image": i.image_url, "data-overlay": i.overlay_url || "", alt: "" });
    var meta = aoi.el("span", { "class": "frame-meta" });
    meta.appendChild(aoi.el("span", { "class": "verdict v-" + aoi.verdictClass(i.verdict) }, i.verdict));
    meta.appendChild(aoi.el("span", { "class": "mono" }, "A " + aoi.num(i.a, 2)));
    a.appendChild(img);
    a.appendChild(meta);
    a.appendChild(aoi.el("span", { "class": "frame-time muted" }, aoi.fmtTime(i.created_at).slice(11, 19) + " · " + i.source));
    li.appendChild(a);
    return li;
  }

  function onInspection(i) {
    if (i.id === null || i.id === undefined) return;  // kept in the spool while the database is away
    var list = document.getElementById("frames");
    if (list.querySelector('[data-id="' + i.id + '"]')) return;
    var empty = document.getElementById("frames-empty");
    if (empty) empty.remove();
    list.insertBefore(frameItem(i), list.firstChild);
    while (list.children.length > MAX_FRAMES) list.removeChild(list.lastChild);
    items.unshift(i);
    items = items.slice(0, 50);
    var key = minuteKey(i.created_at), b = buckets.filter(function (x) { return minuteKey(x.bucket) === key; })[0];
    if (!b) { b = { bucket: new Date(key).toISOString(), total: 0, ok: 0, anomaly: 0, defects: {} }; buckets.push(b); }
    b.total += 1;
    if (i.verdict === "ok") b.ok += 1; else b.anomaly += 1;
    b.yield = b.ok / b.total;
    boot.total += 1;
    setText("kpi-total", String(boot.total));
    figures();
    chart();
    clearTimeout(statsTimer);
    statsTimer = setTimeout(refreshStats, 3000);  // the store's count, once the burst is over
  }

  function onAlert(a) {
    var list = document.getElementById("alert-list");
    var empty = list.querySelector(".empty");
    if (empty) empty.remove();
    var li = aoi.el("li", { "class": "sev-" + a.severity });
    li.appendChild(aoi.el("a", { href: "/alerts#alert-" + a.id }, a.rule));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(aoi.el("span", { "class": "muted" }, aoi.fmtTime(a.created_at)));
    list.insertBefore(li, list.firstChild);
    aoi.toast("Alert (" + a.severity + "): " + a.message, a.severity === "critical");
  }

  document.addEventListener("DOMContentLoaded", function () {
    boot = JSON.parse(document.getElementById("boot").textContent);
    items = boot.items.slice();
    buckets = boot.stats.slice();
    figures();
    chart();
    window.addEventListener("resize", chart);
    document.getElementById("overlay-toggle").addEventListener("change", function (ev) {
      document.querySelectorAll("#frames img").forEach(function (img) {
        img.src = ev.target.checked && img.dataset.overlay ? img.dataset.overlay : img.dataset.image;
      });
    });
    aoi.events(boot.after, { inspection: onInspection, alert: onAlert });
    setInterval(refreshStats, 60000);
  });
})();
