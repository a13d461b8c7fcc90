// beads-runner console: live updates over server-sent events, and the action buttons.
// Plain JavaScript, no build step. The token for actions comes from the address' fragment
// (`#token=…`, as `beads-runner ui --open` gives it) or is asked for once; it stays in this
// browser's localStorage and is sent as `Authorization: Bearer …`, never in a URL.
(function () {
  "use strict";
  var KEY = "beads-runner-console-token";
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  function token() { return localStorage.getItem(KEY) || ""; }
  function showToken() {
    var el = document.getElementById("token-state");
    if (el) el.textContent = token() ? "actions enabled" : "actions need the token";
  }
  function flash(text, bad) {
    var el = document.getElementById("flash");
    el.textContent = text;
    el.className = bad ? "warn" : "ok";
  }

  // --- live: refresh the page's live part when the event stream says something changed ---------
  var pending = null, busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var sep = location.search ? "&" : "?";
    fetch(location.pathname + location.search + sep + "partial=1", {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var live = document.getElementById("live");
        var open = Array.prototype.map.call(live.querySelectorAll("details[open] > summary"),
                                            function (s) { return s.textContent; });
        var focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.name : null;
        if (focused) return;  // never replace what someone is typing in
        live.innerHTML = html;
        Array.prototype.forEach.call(live.querySelectorAll("details > summary"), function (s) {
          if (open.indexOf(s.textContent) >= 0) s.parentNode.open = true;
        });
        document.body.dispatchEvent(new CustomEvent("console:refreshed"));
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; schedule(); } });
  }
  function schedule() {
    if (pending) clearTimeout(pending);
    pending = setTimeout(function () { pending = null; refresh(); }, 250);
  }
  var state = document.getElementById("live-state");
  if (window.EventSource) {
    var es = new EventSource("/api/events");
    es.onopen = function () { state.textContent = "live"; state.className = "ok"; };
    es.onerror = function () { state.textContent = "reconnecting…"; state.className = "warn"; };
    es.addEventListener("engine", schedule);
    es.addEventListener("state", schedule);
  }

  // --- actions: the same code paths as the command line -------------------------------------------
  function act(url, body) {
    if (!token()) {
      var t = prompt("The console's token (in .beads-runner/ui.token):");
      if (!t) return;
      localStorage.setItem(KEY, t.trim());
      showToken();
    }
    flash("working…");
    fetch(url, {method: "POST", credentials: "same-origin",
                headers: {"Authorization": "Bearer " + token(), "Content-Type": "application/json"},
                body: JSON.stringify(body || {})})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        var status = res[0], j = res[1];
        if (status === 401) localStorage.removeItem(KEY);
        if (status >= 400) { flash(j.error + (j.fix ? " — fix: " + j.fix : ""), true); showToken(); return; }
        flash(j.run_id ? j.issue_id + ": " + (j.status ? "cancel requested for " : "run ") + j.run_id : "done");
        schedule();
      })
      .catch(function (e) { flash(String(e), true); });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b) return;
    ev.preventDefault();
    var issue = b.getAttribute("data-issue"), what = b.getAttribute("data-action");
    if (what === "submit") act("/api/submit", {issue_id: issue});
    else act("/api/issues/" + encodeURIComponent(issue) + "/" + what, {fresh: b.hasAttribute("data-fresh")});
  });
  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (f.id === "submit-form") {
      ev.preventDefault();
      var id = f.elements.issue_id.value.trim();
      if (id) act("/api/submit", {issue_id: id});
      f.reset();
    } else if (f.id === "goto-issue") {
      ev.preventDefault();
      var i = f.elements.issue.value.trim();
      if (i) location.href = "/issues/" + encodeURIComponent(i);
    }
  });
  showToken();
})();
