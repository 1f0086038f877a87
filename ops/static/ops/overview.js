/* The admin's platform overview: fetch each panel's JSON, draw it with Chart.js, list its numbers.
   window.cloudscaleCharts holds the Chart objects (the browser tests read their points);
   #overview[data-state] is "loading", then "ready" or "error", and data-refreshes counts the loads. */
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("overview-config").textContent);
  var root = document.getElementById("overview");
  var charts = (window.cloudscaleCharts = {});
  var COLORS = {
    accepted: "#2b6cb0", duplicate: "#a0aec0", rejected: "#c05621", rate_limited: "#d69e2e",
    stored: "#2f855a", dead_lettered: "#c53030", pending: "#6b46c1",
    queue_depth: "#2b6cb0", concurrency_target: "#6b46c1", pool_processes: "#2f855a"
  };
  var PALETTE = ["#c53030", "#c05621", "#d69e2e", "#6b46c1", "#2b6cb0", "#2f855a", "#718096"];

  function query() {
    var params = new URLSearchParams({ hours: String(config.hours) });
    if (config.tenant) params.set("tenant", config.tenant);
    return "?" + params.toString();
  }

  function fetchJson(url) {
    return fetch(url + query(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error(url + " answered " + response.status);
        return response.json();
      });
  }

  function hourLabel(iso) { return iso.slice(11, 16); }
  function timeLabel(iso) { return iso.slice(11, 19); }
  function sum(values) { return values.reduce(function (a, b) { return a + (b || 0); }, 0); }
  function colorOf(name, i) { return COLORS[name] || PALETTE[i % PALETTE.length]; }

  // A chart is empty without points (samples), or, for counts per hour, when every count is 0.
  function draw(name, type, labels, isoLabels, datasets, options, zeroIsData) {
    var canvas = document.getElementById("chart-" + name);
    var empty = canvas.parentNode.querySelector(".chart-empty");
    var hasData = zeroIsData ? labels.length > 0
      : datasets.some(function (d) { return d.data.some(function (v) { return v; }); });
    empty.hidden = hasData;
    var chart = charts[name];
    if (!chart) {
      chart = charts[name] = new window.Chart(canvas, {
        type: type,
        data: { labels: labels, datasets: datasets },
        options: Object.assign({ animation: false, responsive: true, maintainAspectRatio: false,
                                 interaction: { mode: "index", intersect: false } }, options || {})
      });
    } else {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update("none");
    }
    chart.data.isoLabels = isoLabels;
    canvas.parentNode.dataset.points = String(sum(datasets.map(function (d) { return d.data.length; })));
    return hasData;
  }

  function rows(id, pairs) {
    var body = document.getElementById(id);
    body.textContent = "";
    pairs.forEach(function (pair) {
      var tr = body.insertRow();
      var th = document.createElement("th");
      th.textContent = pair[0];
      tr.appendChild(th);
      var td = tr.insertCell();
      td.textContent = pair[1] === null || pair[1] === undefined ? "-" : String(pair[1]);
      td.className = "number";
      tr.dataset.key = pair[2] || pair[0];
    });
  }

  function series(names, data, kind) {
    return names.map(function (name, i) {
      return { label: name.replace("_", " "), key: name, data: data[name] || [], backgroundColor: colorOf(name, i),
               borderColor: colorOf(name, i), fill: false, stepped: kind === "step" ? "before" : false,
               pointRadius: kind === "line" ? 2 : 0, tension: 0 };
    });
  }

  function showLedger(ledger) {
    var labels = ledger.hours.map(hourLabel);
    var received = draw("ledger-received", "bar", labels, ledger.hours,
      series(["accepted", "duplicate", "rejected", "rate_limited"], ledger.series),
      { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } });
    draw("ledger-processing", "line", labels, ledger.hours,
      series(["accepted", "stored", "dead_lettered", "pending"], ledger.series, "line"),
      { scales: { y: { beginAtZero: true } } });
    var t = ledger.totals;
    rows("numbers-ledger-received", [["received", t.received], ["accepted", t.accepted],
      ["duplicate", t.duplicate], ["rejected", t.rejected], ["rate limited", t.rate_limited, "rate_limited"]]);
    rows("numbers-ledger-processing", [["accepted", t.accepted], ["stored", t.stored],
      ["dead-lettered", t.dead_lettered, "dead_lettered"], ["pending", t.pending]]);
    var body = document.getElementById("numbers-ledger-hours");
    body.textContent = "";
    ledger.hours.forEach(function (hour, i) {
      if (!ledger.series.received[i]) return;
      var tr = body.insertRow();
      [hourLabel(hour)].concat(["received", "accepted", "duplicate", "rejected", "rate_limited", "stored",
        "dead_lettered", "pending"].map(function (k) { return ledger.series[k][i]; }))
        .forEach(function (v) { tr.insertCell().textContent = String(v); });
    });
    return received;
  }

  function showPlatform(platform) {
    var labels = platform.times.map(timeLabel);
    var sampled = draw("queue-depth", "line", labels, platform.times,
      series(["queue_depth"], platform, "line"), { scales: { y: { beginAtZero: true, suggestedMax: 10 } } }, true);
    draw("concurrency", "line", labels, platform.times,
      series(["concurrency_target", "pool_processes"], platform, "step"), { scales: { y: { beginAtZero: true } } },
      true);
    var c = platform.current;
    rows("numbers-queue-depth", [["depth now", c.queue_depth, "queue_depth"],
      ["highest in period", c.max_queue_depth, "max_queue_depth"], ["last sample", c.sampled_at && timeLabel(c.sampled_at), "sampled_at"]]);
    rows("numbers-concurrency", [["target", c.concurrency_target, "concurrency_target"],
      ["pool processes", c.pool_processes, "pool_processes"], ["workers alive", c.workers_alive, "workers_alive"]]);
    var body = document.getElementById("numbers-concurrency-changes");
    body.textContent = "";
    platform.changes.slice(0, 10).forEach(function (change) {
      var tr = body.insertRow();
      [change.changed_at.slice(0, 19).replace("T", " "), change.queue_depth,
       (change.old_target === null ? "-" : change.old_target) + " → " + change.new_target]
        .forEach(function (v) { tr.insertCell().textContent = String(v); });
    });
    return sampled;
  }

  function showDeadLetters(data) {
    var reasons = Object.keys(data.series);
    var drawn = draw("dead-letters", "bar", data.hours.map(hourLabel), data.hours, series(reasons, data.series),
      { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } });
    var pairs = reasons.map(function (r) { return [r, data.totals[r]]; });
    Object.keys(data.pending_by_reason).forEach(function (r) {
      pairs.push(["pending review: " + r, data.pending_by_reason[r], "pending:" + r]);
    });
    if (!pairs.length) pairs.push(["dead letters", 0, "none"]);
    rows("numbers-dead-letters", pairs);
    return drawn;
  }

  function showFraud(data) {
    var values = data.rules.map(function (r) { return data.by_rule[r]; });
    var drawn = draw("fraud", "bar", data.rules, data.rules,
      [{ label: "alerts", key: "alerts", data: values, backgroundColor: "#c53030" }],
      { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } });
    rows("numbers-fraud", data.rules.map(function (r) { return [r, data.by_rule[r]]; }));
    return drawn;
  }

  function showWarnings(data) {
    document.getElementById("warnings-unavailable").hidden = data.available;
    document.getElementById("warnings-none").hidden = !data.available || data.results.length > 0;
    var table = document.getElementById("warnings-table");
    table.hidden = !data.results.length;
    var head = document.getElementById("warnings-head");
    var body = document.getElementById("warnings-body");
    head.textContent = "";
    body.textContent = "";
    var tr = head.insertRow();
    data.columns.forEach(function (c) { var th = document.createElement("th"); th.textContent = c; tr.appendChild(th); });
    data.results.forEach(function (row) {
      var r = body.insertRow();
      data.columns.forEach(function (c) {
        var v = row[c];
        r.insertCell().textContent = v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      });
    });
    return data.results.length > 0;
  }

  function refresh() {
    var u = config.urls;
    return Promise.all([fetchJson(u.ledger), fetchJson(u.platform), fetchJson(u.deadLetters),
                        fetchJson(u.fraud), fetchJson(u.warnings)])
      .then(function (all) {
        showLedger(all[0]);
        showPlatform(all[1]);
        var dead = showDeadLetters(all[2]);
        showFraud(all[3]);
        showWarnings(all[4]);
        // Beat samples alone (depth 0) are not traffic: without events the empty state says how to send one.
        document.getElementById("empty-state").hidden = all[0].totals.received > 0 || dead;
        document.getElementById("load-error").hidden = true;
        document.getElementById("updated-at").textContent = new Date().toISOString().slice(11, 19) + " UTC";
        root.dataset.state = "ready";
        root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
      })
      .catch(function (error) {
        var note = document.getElementById("load-error");
        note.textContent = "Could not load the data: " + error.message;
        note.hidden = false;
        root.dataset.state = "error";
      });
  }

  document.getElementById("tenant-select").addEventListener("change", function (event) {
    event.target.form.submit();
  });
  refresh();
  window.setInterval(refresh, config.refreshSeconds * 1000);
})();
