// The status page's only script (served by offboard itself; the CSP allows nothing else).
// - Countdowns: every `.countdown[data-at]` shows the time left until its UTC instant,
//   updated every second from this browser's clock, corrected by the difference between
//   that clock and the server's (`data-server-now` on <main>); once passed, it shows its
//   `data-reached` text and its milestone is marked reached.
// - Refresh: a <main data-refresh="N"> fetches its page again every N seconds and swaps
//   itself for the new one; a lost session (a redirect or a 401) reloads the page, which
//   then shows the sign-in form.
(function () {
  "use strict";

  var skew = 0; // server clock minus this browser's clock, in ms

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function remaining(ms) {
    var left = Math.ceil(ms / 1000);
    var days = Math.floor(left / 86400);
    left -= days * 86400;
    var hours = Math.floor(left / 3600);
    left -= hours * 3600;
    var minutes = Math.floor(left / 60);
    var seconds = left - minutes * 60;
    if (days) return "in " + days + "d " + pad(hours) + "h " + pad(minutes) + "m " + pad(seconds) + "s";
    if (hours) return "in " + hours + "h " + pad(minutes) + "m " + pad(seconds) + "s";
    if (minutes) return "in " + minutes + "m " + pad(seconds) + "s";
    return "in " + seconds + "s";
  }

  function readSkew() {
    var main = document.querySelector("main[data-server-now]");
    var server = main ? Date.parse(main.getAttribute("data-server-now")) : NaN;
    skew = isNaN(server) ? 0 : server - Date.now();
  }

  function tick() {
    var now = Date.now() + skew;
    var nodes = document.querySelectorAll(".countdown[data-at]");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      var at = Date.parse(node.getAttribute("data-at"));
      if (isNaN(at)) continue;
      var left = at - now;
      var reached = Math.ceil(left / 1000) <= 0;
      var text = reached ? node.getAttribute("data-reached") || "reached" : remaining(left);
      if (node.textContent !== text) node.textContent = text;
      var milestone = node.closest(".milestone");
      if (milestone) milestone.classList.toggle("reached", reached);
    }
  }

  function refresh() {
    var main = document.querySelector("main[data-refresh]");
    if (!main) return;
    fetch(window.location.href, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.reload();
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        if (text === null) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("main[data-refresh]");
        var current = document.querySelector("main[data-refresh]");
        if (!fresh || !current) return;
        current.replaceWith(document.adoptNode(fresh));
        readSkew();
        tick();
      })
      .catch(function () {
        var current = document.querySelector("main[data-refresh]");
        if (current) current.classList.add("stale"); // try again at the next period
      });
  }

  function start() {
    readSkew();
    tick();
    window.setInterval(tick, 1000);
    var main = document.querySelector("main[data-refresh]");
    var period = main ? parseInt(main.getAttribute("data-refresh"), 10) : 0;
    if (period > 0) window.setInterval(refresh, period * 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
