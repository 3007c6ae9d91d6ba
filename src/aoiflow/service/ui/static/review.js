/* Review editor: the pre-labels as polygons over the image, corrected with mouse and keys.

   Coordinates are image pixels with pixel centres at integers (the SVG's viewBox starts at -0.5),
   as the service stores them. Every action is sent as it happens (POST .../actions, in order);
   accepting sends the final regions (POST .../labels) and opens the next part.

   Mouse: click a region to select it; drag a corner handle of the selected region to move it;
   drag on empty image to draw a new box. Keys: A or Enter accept and next, N normal (false alarm),
   Delete/Backspace remove the selected region, [ and ] previous/next region, V next corner of the
   selected region, arrows move that corner (Shift: 10 px), Esc deselect, S skip. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var data, W, H, regions, selected = -1, vertex = -1, svgEl, layer, handles, draft, drag = null;
  var chain = Promise.resolve(), saving = false, nudge = null, classField, lastKind = "";

  function node(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function r2(v) { return Math.round(v * 100) / 100; }
  function clampX(x) { return Math.min(Math.max(x, -0.5), W - 0.5); }
  function clampY(y) { return Math.min(Math.max(y, -0.5), H - 0.5); }
  function status(text) { document.getElementById("editor-status").textContent = text; }

  /** Keep one action (in order; failures are shown but do not stop the review). */
  function log(action, payload, quiet) {
    var body = { action: action, payload: payload || {}, by: aoi.by() };
    chain = chain.then(function () {
      return aoi.api("POST", "/api/v1/inspections/" + data.id + "/actions", body).catch(function (e) {
        if (!quiet) aoi.toast("Action not recorded: " + e.message, true);
      });
    });
  }

  function unitsPerPixel() {
    var m = svgEl.getScreenCTM();
    return m && m.a ? 1 / m.a : 1;
  }

  function toImage(ev) {
    var pt = svgEl.createSVGPoint();
    pt.x = ev.clientX;
    pt.y = ev.clientY;
    var p = pt.matrixTransform(svgEl.getScreenCTM().inverse());
    return [clampX(p.x), clampY(p.y)];
  }

  function render() {
    layer.replaceChildren();
    handles.replaceChildren();
    regions.forEach(function (r, i) {
      var poly = node("polygon", {
        points: r.polygon.map(function (p) { return p[0] + "," + p[1]; }).join(" "),
        "class": "region" + (i === selected ? " selected" : ""), "data-region": String(i)
      });
      var title = node("title");
      title.textContent = "Region " + (i + 1) + ": " + r.kind;
      poly.appendChild(title);
      layer.appendChild(poly);
      var first = r.polygon.reduce(function (a, p) { return p[1] < a[1] ? p : a; }, r.polygon[0]);
      var u = unitsPerPixel(), above = first[1] - 4 * u;
      var tag = node("text", { x: Math.min(first[0], W - 40 * u), y: above < 14 * u ? Math.max.apply(null, r.polygon.map(function (p) { return p[1]; })) + 15 * u : above, "class": "tag" });
      tag.setAttribute("font-size", String(13 * unitsPerPixel()));
      tag.textContent = (i + 1) + " " + r.kind;
      layer.appendChild(tag);
    });
    if (selected >= 0) {
      var rad = 5.5 * unitsPerPixel();
      regions[selected].polygon.forEach(function (p, k) {
        var h = node("circle", { cx: p[0], cy: p[1], r: rad, "class": "handle", "data-vertex": String(k) });
        if (k === vertex) h.setAttribute("fill", "#f0b400");
        handles.appendChild(h);
      });
    }
    list();
  }

  function list() {
    var ol = document.getElementById("region-list");
    ol.replaceChildren();
    regions.forEach(function (r, i) {
      var li = document.createElement("li");
      var b = aoi.el("button", { type: "button", "aria-pressed": String(i === selected), "data-region": String(i) });
      b.appendChild(aoi.el("span", {}, (i + 1) + ". " + r.kind));
      b.appendChild(aoi.el("span", { "class": "muted" }, r.polygon.length + " corners"));
      b.addEventListener("click", function () { select(i); });
      li.appendChild(b);
      ol.appendChild(li);
    });
    if (!regions.length) ol.appendChild(aoi.el("li", { "class": "muted" }, "No region: drag on the image to draw one, or accept as normal."));
    document.getElementById("region-count").textContent = "(" + regions.length + ")";
    document.getElementById("delete-region").disabled = selected < 0;
  }

  function select(i) {
    selected = i;
    vertex = -1;
    if (i >= 0) classField.value = regions[i].kind;
    render();
  }

  function addBox(a, b) {
    var x0 = r2(Math.min(a[0], b[0])), x1 = r2(Math.max(a[0], b[0])), y0 = r2(Math.min(a[1], b[1])), y1 = r2(Math.max(a[1], b[1]));
    var kind = classField.value.trim() || lastKind || "defect";
    regions.push({ kind: kind, polygon: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], source: "drawn" });
    log("add_box", { box: [x0, y0, x1, y1], kind: kind, region: regions.length - 1 });
    select(regions.length - 1);
    status("Box added (" + kind + ").");
  }

  function deleteSelected() {
    if (selected < 0) return;
    var r = regions.splice(selected, 1)[0];
    log("delete_region", { region: selected, kind: r.kind, polygon: r.polygon });
    status("Region " + (selected + 1) + " (" + r.kind + ") deleted.");
    select(-1);
  }

  function rename() {
    var kind = classField.value.trim().replace(/\s+/g, " ");
    if (!kind) { aoi.toast("Type a class name first.", true); return; }
    lastKind = kind;
    if (selected < 0) { status("New boxes will be " + kind + "."); return; }
    var from = regions[selected].kind;
    if (from === kind) return;
    regions[selected].kind = kind;
    log("rename_region", { region: selected, from: from, to: kind });
    status("Region " + (selected + 1) + " is now " + kind + ".");
    render();
  }

  function flushNudge() {
    if (!nudge) return;
    clearTimeout(nudge.timer);
    log("move_vertex", { region: nudge.region, vertex: nudge.vertex, from: nudge.from, to: regions[nudge.region].polygon[nudge.vertex].slice(), keys: true });
    nudge = null;
  }

  function finish(decision) {
    if (saving) return;
    flushNudge();
    saving = true;
    document.getElementById("accept").disabled = document.getElementById("normal").disabled = true;
    var body = { decision: decision, by: aoi.by(), regions: decision === "normal" ? [] : regions.map(function (r) {
      return { kind: r.kind, polygon: r.polygon, source: r.source };
    }) };
    status("Saving…");
    chain.then(function () {
      return aoi.api("POST", "/api/v1/inspections/" + data.id + "/labels", body);
    }).then(function (saved) {
      status("Saved as " + saved.review_status + ".");
      window.location.assign(data.next_url);
    }).catch(function (e) {
      saving = false;
      document.getElementById("accept").disabled = document.getElementById("normal").disabled = false;
      status("");
      aoi.toast("Not saved: " + e.message, true);
    });
  }

  function pointerDown(ev) {
    if (ev.button !== 0) return;
    var t = ev.target, p = toImage(ev);
    svgEl.setPointerCapture(ev.pointerId);
    if (t.dataset && t.dataset.vertex !== undefined && selected >= 0) {
      var k = Number(t.dataset.vertex);
      vertex = k;
      drag = { kind: "vertex", vertex: k, from: regions[selected].polygon[k].slice(), start: p, moved: false };
    } else if (t.dataset && t.dataset.region !== undefined) {
      select(Number(t.dataset.region));
      drag = null;
    } else {
      drag = { kind: "box", start: p, screen: [ev.clientX, ev.clientY] };
      draft.setAttribute("visibility", "visible");
      draft.setAttribute("x", p[0]); draft.setAttribute("y", p[1]);
      draft.setAttribute("width", 0); draft.setAttribute("height", 0);
    }
    ev.preventDefault();
  }

  function pointerMove(ev) {
    if (!drag) return;
    var p = toImage(ev);
    if (drag.kind === "vertex") {
      regions[selected].polygon[drag.vertex] = [r2(p[0]), r2(p[1])];
      drag.moved = true;
      render();
    } else {
      draft.setAttribute("x", Math.min(p[0], drag.start[0]));
      draft.setAttribute("y", Math.min(p[1], drag.start[1]));
      draft.setAttribute("width", Math.abs(p[0] - drag.start[0]));
      draft.setAttribute("height", Math.abs(p[1] - drag.start[1]));
    }
  }

  function pointerUp(ev) {
    if (!drag) return;
    var d = drag, p = toImage(ev);
    drag = null;
    draft.setAttribute("visibility", "hidden");
    if (d.kind === "vertex") {
      if (d.moved) {
        var to = regions[selected].polygon[d.vertex];
        log("move_vertex", { region: selected, vertex: d.vertex, from: d.from, to: to.slice() });
        status("Corner moved.");
      }
      return;
    }
    var dx = Math.abs(ev.clientX - d.screen[0]), dy = Math.abs(ev.clientY - d.screen[1]);
    if (dx >= 4 && dy >= 4 && Math.abs(p[0] - d.start[0]) >= 1 && Math.abs(p[1] - d.start[1]) >= 1) addBox(d.start, p);
    else if (selected >= 0) select(-1);
  }

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (aoi.typing(ev)) {
      if (ev.target === classField && ev.key === "Enter") { ev.preventDefault(); rename(); }
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    var onControl = document.activeElement && /^(BUTTON|A|SUMMARY)$/.test(document.activeElement.tagName);
    var key = ev.key;
    if (key === "a" || key === "A" || (key === "Enter" && !onControl)) { ev.preventDefault(); finish("accept"); }
    else if (key === "n" || key === "N") { ev.preventDefault(); finish("normal"); }
    else if (key === "Delete" || key === "Backspace") { ev.preventDefault(); deleteSelected(); }
    else if (key === "Escape") { select(-1); }
    else if (key === "s" || key === "S") { window.location.assign(document.getElementById("skip").href); }
    else if (key === "]" && regions.length) { select((selected + 1) % regions.length); }
    else if (key === "[" && regions.length) { select((selected - 1 + regions.length) % regions.length); }
    else if ((key === "v" || key === "V") && selected >= 0) { flushNudge(); vertex = (vertex + 1) % regions[selected].polygon.length; render(); }
    else if (/^Arrow/.test(key) && selected >= 0 && vertex >= 0) {
      ev.preventDefault();
      var step = ev.shiftKey ? 10 : 1, p = regions[selected].polygon[vertex];
      if (!nudge || nudge.region !== selected || nudge.vertex !== vertex) { flushNudge(); nudge = { region: selected, vertex: vertex, from: p.slice() }; }
      var q = [clampX(p[0] + (key === "ArrowLeft" ? -step : key === "ArrowRight" ? step : 0)),
               clampY(p[1] + (key === "ArrowUp" ? -step : key === "ArrowDown" ? step : 0))];
      regions[selected].polygon[vertex] = [r2(q[0]), r2(q[1])];
      clearTimeout(nudge.timer);
      nudge.timer = setTimeout(flushNudge, 800);
      render();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var holder = document.getElementById("editor-data");
    if (!holder) return;
    data = JSON.parse(holder.textContent);
    W = data.width;
    H = data.height;
    regions = data.regions.map(function (r) {
      return { kind: r.kind, polygon: r.polygon.map(function (p) { return [p[0], p[1]]; }), source: r.source || "prelabel" };
    });
    classField = document.getElementById("class-field");
    lastKind = regions.length ? regions[0].kind : (data.classes.indexOf("defect") >= 0 ? "defect" : (data.classes[0] || "defect"));
    classField.value = lastKind;
    svgEl = node("svg", { viewBox: "-0.5 -0.5 " + W + " " + H, preserveAspectRatio: "xMidYMid meet",
                          "aria-hidden": "true", "data-width": String(W), "data-height": String(H) });
    svgEl.appendChild(node("image", { href: data.image_url, x: -0.5, y: -0.5, width: W, height: H, preserveAspectRatio: "none" }));
    layer = node("g", { "class": "regions" });
    handles = node("g", { "class": "handles" });
    draft = node("rect", { "class": "drawing", visibility: "hidden" });
    svgEl.appendChild(layer);
    svgEl.appendChild(draft);
    svgEl.appendChild(handles);
    document.getElementById("editor").appendChild(svgEl);
    svgEl.addEventListener("pointerdown", pointerDown);
    svgEl.addEventListener("pointermove", pointerMove);
    svgEl.addEventListener("pointerup", pointerUp);
    svgEl.addEventListener("pointercancel", function () { drag = null; draft.setAttribute("visibility", "hidden"); });
    document.addEventListener("keydown", onKey);
    document.getElementById("apply-class").addEventListener("click", rename);
    document.getElementById("delete-region").addEventListener("click", deleteSelected);
    document.getElementById("accept").addEventListener("click", function () { finish("accept"); });
    document.getElementById("normal").addEventListener("click", function () { finish("normal"); });
    window.addEventListener("resize", render);
    render();
    status(regions.length ? regions.length + " pre-label region(s) to check." : "No pre-labels: draw the defects, or mark the part normal.");
    log("open", { regions: regions.length, scratch: !!data.scratch }, true);
  });
})();
