// coldwatch console: live updates of a page region by polling the daemon (no library).
// An element with data-live="URL" is replaced every few seconds by the HTML fragment at URL.
// Polling does not keep the session alive: the daemon does not restart the idle clock for it.
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region) { return; }
  var url = region.getAttribute("data-live");
  var status = document.getElementById("live-status");
  var period = 1000;
  var last = null;
  function show(text) { if (status && status.textContent !== text) { status.textContent = text; } }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "X-Coldwatch-Poll": "1" }, redirect: "manual" })
      .then(function (response) {
        if (response.type === "opaqueredirect" || response.status === 401) {
          show("Session ended: reload to sign in again.");
          return null;
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        if (html !== last) {
          // Keep keyboard focus where it was when the list is redrawn.
          var focused = document.activeElement && region.contains(document.activeElement)
            ? document.activeElement.getAttribute("href") : null;
          region.innerHTML = html;
          last = html;
          if (focused) {
            var again = region.querySelector('a[href="' + focused + '"]');
            if (again) { again.focus(); }
          }
        }
        show("Live: updated " + new Date().toLocaleTimeString());
        window.setTimeout(poll, period);
      })
      .catch(function () {
        show("Live updates interrupted: retrying.");
        window.setTimeout(poll, period * 5);
      });
  }
  window.setTimeout(poll, period);
}());
