// The devstack dashboard: renders the `status` events of /devstack/events (the same JSON as
// /devstack/status), keeps a ten-minute history sampled once a second for the chart, and runs the
// two actions. No framework and no build step: this file is served as written.
"use strict";

(function () {
  const WINDOW_SECONDS = 600;
  const EVENTS_LISTED = 12;
  const $ = (id) => document.getElementById(id);

  /** Samples of the last ten minutes, one a second: {t (s), active, locked, dead, completed, rate, replicas...}. */
  const samples = [];
  let latest = null;
  let lastEventAt = 0;
  let heartbeatSeconds = 5;
  let stopped = false;
  let chart = null;
  let chartHasScaling = null;
  let bindings = ["message-queue"];

  // --- the connection ----------------------------------------------------------------------

  function setConnection(state, text) {
    const el = $("connection");
    el.className = "connection " + state;
    el.textContent = text;
  }

  function connect() {
    const source = new EventSource("events");
    source.addEventListener("open", () => {
      stopped = false;
      lastEventAt = Date.now();
      setConnection("live", "Live: connected to devstack.");
      loadConfig();
    });
    source.addEventListener("status", (e) => {
      lastEventAt = Date.now();
      let status;
      try {
        status = JSON.parse(e.data);
      } catch (err) {
        setConnection("error", "devstack sent a status this page cannot read: " + err.message);
        return;
      }
      if (!stopped) setConnection("live", "Live: connected to devstack.");
      apply(status);
    });
    source.addEventListener("heartbeat", () => {
      lastEventAt = Date.now();
    });
    source.addEventListener("stopping", () => {
      stopped = true;
      setConnection("stopped", "devstack stopped. The numbers below are its last ones; this page reconnects when it is back.");
    });
    source.addEventListener("error", () => {
      if (stopped) return;
      setConnection("down", "Disconnected: devstack is not running or not reachable. Retrying…");
    });
  }

  // Every second: a chart sample, the countdowns, and a watch on the heartbeat.
  function tick() {
    const now = Date.now();
    if (!stopped && lastEventAt && now - lastEventAt > 3 * heartbeatSeconds * 1000) {
      setConnection("down", `No news from devstack for ${Math.round((now - lastEventAt) / 1000)} s: the connection has stalled.`);
    }
    if (latest && !stopped && now - lastEventAt <= 3 * heartbeatSeconds * 1000) {
      sample(now / 1000);
    }
    renderCountdowns();
    drawChart();
  }

  async function loadConfig() {
    try {
      const response = await fetch("config.json", { cache: "no-store" });
      if (!response.ok) return;
      const config = await response.json();
      heartbeatSeconds = config.heartbeatSeconds || heartbeatSeconds;
      if (Array.isArray(config.bindings) && config.bindings.length) bindings = config.bindings;
      $("binding-name").textContent = bindings[0];
      $("producer-address").textContent = config.producer
        ? `The producer's POST /MessageProducer at ${config.producer}, through devstack.`
        : "No producer is known to devstack (devstack sidecar runs without one).";
    } catch (_) {
      // The connection state already says devstack is unreachable.
    }
  }

  // --- status -> page ----------------------------------------------------------------------

  function totals(status) {
    const t = { produced: 0, active: 0, locked: 0, completed: 0, deadLettered: 0 };
    for (const counts of Object.values(status.queues || {})) {
      for (const key of Object.keys(t)) t[key] += counts[key] || 0;
    }
    return t;
  }

  /** Renders one status document; also what a test or a fixture calls. */
  function apply(status) {
    latest = { status, totals: totals(status), at: Date.now() };
    const t = latest.totals;
    $("produced").textContent = t.produced;
    $("active").textContent = t.active;
    $("locked").textContent = t.locked;
    $("completed").textContent = t.completed;
    $("dead-lettered").textContent = t.deadLettered;
    renderScaling(status.scaling);
    renderConsumers(status.consumers || []);
    renderDeadLetters(status.deadLetters || {});
    renderCountdowns();
    if (samples.length === 0) sample(Date.now() / 1000);
    scheduleDraw();
  }

  // At most one redraw a frame, however many statuses arrive.
  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      drawChart();
    });
  }

  function sample(t) {
    const s = latest.status;
    const totals = latest.totals;
    const previous = samples[samples.length - 1];
    let rate = 0;
    if (previous && t > previous.t) {
      rate = Math.max(0, (totals.completed - previous.completed) / (t - previous.t));
    }
    samples.push({
      t,
      active: totals.active,
      locked: totals.locked,
      dead: totals.deadLettered,
      completed: totals.completed,
      rate: Math.round(rate * 10) / 10,
      replicas: s.scaling ? s.scaling.replicas : null,
      ready: s.scaling ? s.scaling.ready : null,
      terminating: s.scaling ? s.scaling.terminating : null,
    });
    while (samples.length && samples[0].t < t - WINDOW_SECONDS) samples.shift();
    $("rate").textContent = samples[samples.length - 1].rate;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function emptyRow(tbody, columns, text) {
    const row = document.createElement("tr");
    const td = cell(row, text);
    td.colSpan = columns;
    tbody.replaceChildren(row);
  }

  /** A consumer's state: the replicas' `state` when devstack reports it, else what the rest says. */
  function consumerState(c) {
    if (c.state) return c.state;
    return c.bindings ? "ready" : "starting";
  }

  function renderConsumers(consumers) {
    const tbody = $("consumers");
    if (!consumers.length) return emptyRow(tbody, 6, "No consumer running.");
    const rows = consumers.map((c) => {
      const row = document.createElement("tr");
      const name = cell(row, "");
      if (c.label) {
        const label = document.createElement("strong");
        label.textContent = c.label;
        name.append(label, " ");
      }
      const address = document.createElement("span");
      address.className = "address";
      address.textContent = c.address;
      name.append(address);
      const state = consumerState(c);
      const stateCell = cell(row, state, "state " + state);
      if (state === "terminating" && c.killAt) {
        stateCell.dataset.killAt = c.killAt;
        const countdown = document.createElement("span");
        countdown.className = "countdown";
        stateCell.append(" ", countdown);
      }
      cell(row, `${c.inFlight} / ${c.maxConcurrency}`, "num");
      cell(row, c.processed ?? "–", "num processed");
      cell(row, c.failed ?? "–", "num failed");
      cell(row, c.healthy ? "healthy" : "unhealthy", c.healthy ? "ok" : "bad");
      return row;
    });
    tbody.replaceChildren(...rows);
  }

  function renderDeadLetters(deadLetters) {
    const tbody = $("dead-letters");
    const rows = [];
    for (const [queue, letters] of Object.entries(deadLetters)) {
      // Newest first: the list is kept oldest first.
      for (const letter of [...letters].reverse()) {
        const row = document.createElement("tr");
        cell(row, queue);
        cell(row, letter.id, "id");
        cell(row, letter.deliveryCount, "num");
        cell(row, letter.reason, "reason");
        cell(row, letter.data, "body");
        rows.push(row);
      }
    }
    if (!rows.length) return emptyRow(tbody, 5, "None.");
    tbody.replaceChildren(...rows);
  }

  function renderScaling(scaling) {
    $("scaling").hidden = !scaling;
    $("events-block").hidden = !scaling;
    if (!scaling) return;
    const settings = scaling.settings || {};
    $("scaling-target").textContent = settings.name
      ? `${settings.name}: ${settings.minReplicaCount}–${settings.maxReplicaCount} replicas` +
        (settings.timeScale && settings.timeScale !== 1 ? `, time scale ${settings.timeScale}` : "")
      : "";
    $("replicas").textContent = scaling.replicas;
    $("ready").textContent = scaling.ready;
    $("starting").textContent = scaling.starting;
    $("terminating").textContent = scaling.terminating;
    $("metric").textContent = scaling.metric ?? "–";
    $("cooldown").dataset.endsAt = scaling.cooldownEndsAt || "";
    const events = scaling.events || [];
    // The newest few; every one is marked on the chart, and all are in /devstack/status.
    const shown = events.slice(-EVENTS_LISTED).reverse();
    $("events-heading").textContent =
      events.length > EVENTS_LISTED ? `Scaling events (the last ${EVENTS_LISTED} of ${events.length})` : "Scaling events";
    const rows = shown.map((e) => {
      const row = document.createElement("tr");
      cell(row, timeOf(e.at));
      cell(row, e.by);
      cell(row, `${e.from} → ${e.to}`, "num");
      cell(row, e.metric, "num");
      cell(row, e.reason, "reason");
      return row;
    });
    if (!rows.length) emptyRow($("events"), 5, "No scaling yet.");
    else $("events").replaceChildren(...rows);
  }

  function timeOf(rfc3339) {
    const d = new Date(rfc3339);
    return isNaN(d) ? String(rfc3339) : d.toLocaleTimeString([], { hour12: false });
  }

  function secondsUntil(rfc3339) {
    const at = Date.parse(rfc3339);
    return isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
  }

  function renderCountdowns() {
    for (const el of document.querySelectorAll("[data-kill-at]")) {
      const left = secondsUntil(el.dataset.killAt);
      const countdown = el.querySelector(".countdown");
      if (countdown && left !== null) countdown.textContent = left > 0 ? `(killed in ${left} s)` : "(grace period over)";
    }
    const cooldown = $("cooldown");
    if (!latest || !latest.status.scaling) return;
    const scaling = latest.status.scaling;
    const left = cooldown.dataset.endsAt ? secondsUntil(cooldown.dataset.endsAt) : null;
    if (left !== null && left > 0) cooldown.textContent = `to 0 in ${left} s`;
    else if (scaling.active) cooldown.textContent = "active";
    else cooldown.textContent = scaling.replicas > 0 ? "ending" : "–";
  }

  // --- the chart ---------------------------------------------------------------------------

  const COLORS = {
    active: "#1f5fa8", locked: "#b35900", dead: "#b3261e", rate: "#2e7d32",
    replicas: "#5b2a86", ready: "#00796b", terminating: "#6d4c41",
  };

  function chartWidth() {
    return Math.max(280, $("chart").clientWidth || 600);
  }

  function makeChart(withScaling) {
    if (typeof uPlot === "undefined") return null;
    const series = [
      {},
      { label: "active", stroke: COLORS.active, width: 2, scale: "messages" },
      { label: "locked", stroke: COLORS.locked, width: 2, scale: "messages" },
      { label: "dead-lettered", stroke: COLORS.dead, width: 2, scale: "messages" },
      { label: "completions/s", stroke: COLORS.rate, width: 2, scale: "messages", dash: [4, 3] },
    ];
    const axes = [
      {},
      { scale: "messages", label: "messages, completions/s" },
    ];
    if (withScaling) {
      series.push(
        { label: "desired replicas", stroke: COLORS.replicas, width: 3, scale: "replicas", dash: [8, 4], paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "ready", stroke: COLORS.ready, width: 2, scale: "replicas", paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "terminating", stroke: COLORS.terminating, width: 1, scale: "replicas", dash: [2, 2], paths: uPlot.paths.stepped({ align: 1 }) },
      );
      axes.push({ scale: "replicas", side: 1, label: "replicas", grid: { show: false } });
    }
    const opts = {
      width: chartWidth(),
      height: 260,
      series,
      axes,
      scales: {
        x: { time: true },
        messages: { range: (u, min, max) => [0, Math.max(5, max)] },
        replicas: { range: (u, min, max) => [0, Math.max(4, max)] },
      },
      legend: { live: true },
      hooks: { draw: [drawEventMarkers] },
    };
    const el = $("chart");
    el.replaceChildren();
    return new uPlot(opts, chartData(withScaling), el);
  }

  function chartData(withScaling) {
    // The samples, then the latest status as it is now, so the chart's right edge is never
    // behind the numbers above it.
    const points = samples.slice();
    if (latest && points.length && !stopped) {
      const previous = points[points.length - 1];
      const scaling = latest.status.scaling;
      const now = Math.max(previous.t, Date.now() / 1000);
      points.push({
        t: now,
        active: latest.totals.active,
        locked: latest.totals.locked,
        dead: latest.totals.deadLettered,
        rate: previous.rate,
        replicas: scaling ? scaling.replicas : null,
        ready: scaling ? scaling.ready : null,
        terminating: scaling ? scaling.terminating : null,
      });
    }
    const data = [
      points.map((s) => s.t),
      points.map((s) => s.active),
      points.map((s) => s.locked),
      points.map((s) => s.dead),
      points.map((s) => s.rate),
    ];
    if (withScaling) {
      data.push(points.map((s) => s.replicas), points.map((s) => s.ready), points.map((s) => s.terminating));
    }
    return data;
  }

  /** Scaling events as marks on the time axis; each has its reason as a tooltip. */
  function drawEventMarkers(u) {
    for (const old of u.over.querySelectorAll(".event-marker")) old.remove();
    const scaling = latest && latest.status.scaling;
    if (!scaling || !scaling.events) return;
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    for (const e of scaling.events) {
      const t = Date.parse(e.at) / 1000;
      if (isNaN(t) || t < min || t > max) continue;
      const left = u.valToPos(t, "x");
      const marker = document.createElement("div");
      marker.className = "event-marker " + (e.by === "hpa" ? "hpa" : "keda");
      marker.style.left = `${left}px`;
      marker.title = `${timeOf(e.at)} ${e.by}: ${e.from} → ${e.to} (metric ${e.metric}). ${e.reason}`;
      u.over.appendChild(marker);
    }
  }

  function drawChart() {
    const withScaling = !!(latest && latest.status.scaling);
    if (!chart || chartHasScaling !== withScaling) {
      chart = makeChart(withScaling);
      chartHasScaling = withScaling;
      return;
    }
    chart.setData(chartData(withScaling));
  }

  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: chartWidth(), height: 260 });
  });

  // --- actions -----------------------------------------------------------------------------

  /** Shows a response's status and body, or why there is none. */
  async function show(output, request) {
    output.className = "pending";
    output.textContent = "Sending…";
    let response;
    try {
      response = await request();
    } catch (err) {
      output.className = "bad";
      output.textContent = "devstack is unreachable: " + err.message;
      return;
    }
    const text = await response.text().catch(() => "");
    let detail = text;
    try {
      const body = JSON.parse(text);
      detail = body.error || body.message || JSON.stringify(body);
    } catch (_) {
      // Not JSON: shown as it came.
    }
    output.className = response.ok ? "ok" : "bad";
    output.textContent = `${response.status} ${response.statusText}${detail ? ": " + detail : ""}`;
  }

  $("produce").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = {
      count: Number($("count").value),
      intervalMilliseconds: Number($("interval").value),
    };
    const text = $("text").value;
    if (text) body.text = text;
    show($("produce-result"), () =>
      fetch("produce", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
  });

  $("poison").addEventListener("click", () => {
    // A JSON string, not an object {"text": ...}: the consumer refuses it on every delivery.
    const body = { data: `poison sent from the dashboard at ${new Date().toISOString()}`, operation: "create" };
    show($("poison-result"), () =>
      fetch(`/v1.0/bindings/${encodeURIComponent(bindings[0])}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
  });

  // For a fixture or a test: render a status document as if it had been pushed.
  window.devstackDashboard = { apply, samples, redraw: drawChart };

  connect();
  setInterval(tick, 1000);
})();
