// Streams the rest of a building job's log into the page (progressive enhancement: without
// JavaScript the page refreshes itself instead). The server sends HTML-escaped, colourised
// chunks as `log` events and `end` once the job finished.
(function () {
  var pre = document.getElementById("log");
  if (!pre || !window.EventSource) return;
  var source = new EventSource(pre.dataset.stream);
  var status = document.getElementById("live-status");
  source.addEventListener("log", function (e) {
    var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    pre.insertAdjacentHTML("beforeend", e.data);
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  });
  source.addEventListener("end", function () {
    source.close();
    if (status) status.textContent = "finished; reloading…";
    // The page's summary (state, duration, build) changed too.
    window.location.reload();
  });
})();
