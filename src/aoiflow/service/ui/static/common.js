/* aoiflow pages: the operator's name and token, API calls, notices, the live event stream. */
(function () {
  "use strict";
  var KEY_TOKEN = "aoiflow.token", KEY_BY = "aoiflow.by", COOKIE = "aoiflow_token";
  var aoi = (window.aoi = {});

  function read(key) { try { return localStorage.getItem(key) || ""; } catch (e) { return ""; } }
  function write(key, value) { try { if (value) localStorage.setItem(key, value); else localStorage.removeItem(key); } catch (e) { /* private mode */ } }

  aoi.token = function () { return read(KEY_TOKEN); };
  aoi.by = function () { return read(KEY_BY) || "operator"; };

  function setCookie(token) {
    // Reads (page loads, images, the event stream) cannot send headers: the token goes as a
    // same-site cookie, which the service accepts for reads only.
    document.cookie = COOKIE + "=" + encodeURIComponent(token || "") + "; path=/; SameSite=Strict" + (token ? "" : "; max-age=0");
  }

  /** Call the API; resolves to the JSON answer, rejects with an Error carrying the service's detail. */
  aoi.api = function (method, path, body, raw) {
    var headers = {};
    var token = aoi.token();
    if (token) headers.Authorization = "Bearer " + token;
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = raw ? body : JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
        if (!r.ok) {
          var detail = data && data.detail ? data.detail : (text || r.statusText);
          if (Array.isArray(detail)) detail = detail.map(function (d) { return (d.loc || []).slice(1).join(".") + ": " + d.msg; }).join("; ");
          if (r.status === 401) detail = "Not allowed: enter the access token under Operator (top right). " + detail;
          var err = new Error(detail);
          err.status = r.status;
          throw err;
        }
        return data;
      });
    });
  };

  var toastTimer = null;
  aoi.toast = function (message, isError) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = message;
    t.className = "toast" + (isError ? " error" : "");
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, isError ? 8000 : 3500);
  };

  /** Open the event stream from after event ``after``; ``handlers`` maps event names to functions. */
  aoi.events = function (after, handlers) {
    if (!window.EventSource) return null;
    var state = document.getElementById("live-state");
    var source = new EventSource("/api/v1/events?after=" + encodeURIComponent(after || 0));
    source.onopen = function () { if (state) { state.textContent = "live"; state.className = "live-state on"; } };
    source.onerror = function () { if (state) { state.textContent = "reconnecting…"; state.className = "live-state"; } };
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (ev) {
        var data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        handlers[name](data, ev);
      });
    });
    window.addEventListener("pagehide", function () { source.close(); });
    return source;
  };

  aoi.fmtTime = function (iso) {
    if (!iso) return "–";
    return String(iso).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC");
  };
  aoi.num = function (v, digits) { return (typeof v === "number" && isFinite(v)) ? v.toFixed(digits === undefined ? 3 : digits) : "–"; };
  aoi.verdictClass = function (v) {
    if (!v) return "none";
    if (v === "ok") return "ok";
    if (v.indexOf("defect:") === 0) return "defect";
    return v === "unknown_anomaly" ? "unknown" : "anomaly";
  };
  aoi.el = function (tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };
  /** Whether a key press belongs to a text field (then page shortcuts stay out of the way). */
  aoi.typing = function (ev) {
    var t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  };

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("operator-form");
    if (!form) return;
    var name = document.getElementById("operator-name"), token = document.getElementById("operator-token");
    name.value = read(KEY_BY);
    token.value = aoi.token();
    if (aoi.token() && document.cookie.indexOf(COOKIE + "=") < 0) setCookie(aoi.token());
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      write(KEY_BY, name.value.trim());
      write(KEY_TOKEN, token.value.trim());
      setCookie(token.value.trim());
      form.closest("details").open = false;
      aoi.toast("Saved for this browser.");
    });
  });
})();
