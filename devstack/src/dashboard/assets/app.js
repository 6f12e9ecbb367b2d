// The devstack dashboard: renders the `history` and `status` events of /devstack/events (the
// samples devstack kept of the last ten minutes, then the same JSON as /devstack/status), goes on
// sampling once a second for the chart, and runs the actions: a batch, a poison message, the
// faults, the dead-letter operations, a message's timeline. No framework and no build step: this
// file is served as written.
"use strict";

(function () {
  const WINDOW_SECONDS = 600;
  const EVENTS_LISTED = 12;
  const $ = (id) => document.getElementById(id);

  /** Samples of the last ten minutes, one a second: {t (s), active, locked, dead, completed, rate, replicas...}. */
  const samples = [];
  const FAULTS_LISTED = 12;
  const MESSAGES_LISTED = 20;
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
    source.addEventListener("history", (e) => {
      lastEventAt = Date.now();
      try {
        applyHistory(JSON.parse(e.data));
      } catch (err) {
        setConnection("error", "devstack sent a history this page cannot read: " + err.message);
      }
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

  /** Replaces the chart's samples with devstack's own, which reach back before this page. */
  function applyHistory(history) {
    const kept = (history.samples || []).map((s) => ({ ...s }));
    for (let i = 0; i < kept.length; i++) {
      const previous = kept[i - 1];
      const rate = previous && kept[i].t > previous.t
        ? Math.max(0, (kept[i].completed - previous.completed) / (kept[i].t - previous.t))
        : 0;
      kept[i].rate = Math.round(rate * 10) / 10;
    }
    samples.splice(0, samples.length, ...kept);
    scheduleDraw();
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
    $("restarts-total").textContent = status.consumerRestarts ? `${status.consumerRestarts} restart(s) in all` : "";
    renderDeadLetters(status.deadLetters || {});
    renderFaults(status.faults);
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
      restarting: s.scaling ? s.scaling.restarting : null,
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

  /** A button that posts `fault` to /devstack/faults and shows the answer in `output`. */
  function faultButton(text, fault, output) {
    return smallButton(text, () => postJson(output, "faults", fault), "danger");
  }

  function renderConsumers(consumers) {
    const tbody = $("consumers");
    if (!consumers.length) return emptyRow(tbody, 9, "No consumer running.");
    const rows = consumers.map((c) => {
      const row = document.createElement("tr");
      row.dataset.consumer = c.label || c.address;
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
      if (state === "crashloop" && c.restartAt) {
        stateCell.dataset.restartAt = c.restartAt;
        const countdown = document.createElement("span");
        countdown.className = "countdown";
        stateCell.append(" ", countdown);
      }
      cell(row, `${c.inFlight} / ${c.maxConcurrency}`, "num");
      cell(row, c.processed ?? "–", "num processed");
      cell(row, c.failed ?? "–", "num failed");
      cell(row, c.healthy ? "healthy" : "unhealthy", c.healthy ? "ok" : "bad");
      cell(row, c.restarts ?? 0, "num restarts");
      cell(row, c.lastExit ? `${c.lastExit} at ${timeOf(c.lastExitAt)}` : "–", "last-exit");
      const faults = cell(row, "", "faults");
      if (c.label) {
        const output = $("fault-result");
        faults.append(
          faultButton("Kill", { kind: "kill", consumer: c.label }, output),
          faultButton("SIGTERM", { kind: "sigterm", consumer: c.label }, output),
          faultButton("Pause 5 s", { kind: "pause", consumer: c.label, seconds: 5 }, output),
        );
      }
      return row;
    });
    tbody.replaceChildren(...rows);
  }

  function renderFaults(faults) {
    const tbody = $("faults");
    const recent = (faults && faults.recent) || [];
    if (!recent.length) return emptyRow(tbody, 4, "None.");
    const rows = recent.slice(-FAULTS_LISTED).reverse().map((f) => {
      const row = document.createElement("tr");
      cell(row, timeOf(f.at));
      cell(row, f.kind + (f.source === "chaos" ? " (chaos)" : ""));
      cell(row, f.target, "id");
      cell(row, f.detail, "reason");
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
        cell(row, "", "id").append(messageLink(letter.id));
        cell(row, letter.deliveryCount, "num");
        cell(row, letter.reason, "reason");
        cell(row, letter.data, "body");
        const operations = cell(row, "", "operations");
        const output = $("dead-result");
        const path = `dead-letters/${encodeURIComponent(queue)}`;
        operations.append(
          smallButton("Peek", () => peek(queue, letter.id)),
          smallButton("Replay", () => postJson(output, `${path}/replay`, { ids: [letter.id] })),
          smallButton("Purge", () => postJson(output, `${path}/purge`, { ids: [letter.id] }), "danger"),
        );
        rows.push(row);
      }
    }
    if (!rows.length) return emptyRow(tbody, 6, "None.");
    tbody.replaceChildren(...rows);
  }

  function smallButton(text, onClick, className) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small" + (className ? " " + className : "");
    button.textContent = text;
    button.addEventListener("click", onClick);
    return button;
  }

  /** A message id that opens its timeline. */
  function messageLink(id) {
    const link = smallButton(id, () => showTimeline(id));
    link.className = "link message-link";
    link.dataset.id = id;
    return link;
  }

  /** The dead letter `id` of `queue`, whole: body, properties, last error. */
  async function peek(queue, id) {
    let found = null;
    try {
      for (let from = 0; ; from += 1000) {
        const response = await fetch(`dead-letters/${encodeURIComponent(queue)}?from=${from}&limit=1000`, { cache: "no-store" });
        const page = await response.json();
        if (!response.ok) throw new Error(page.error || response.statusText);
        found = (page.deadLetters || []).find((d) => d.id === id) || null;
        if (found || from + 1000 >= page.total) break;
      }
    } catch (err) {
      $("dead-result").className = "bad";
      $("dead-result").textContent = "Cannot peek: " + err.message;
      return;
    }
    const fields = $("peek-fields");
    $("peek").hidden = false;
    if (!found) {
      fields.replaceChildren();
      $("peek-heading").textContent = `Dead letter ${id}: no longer in the dead-letter queue`;
      return;
    }
    $("peek-heading").textContent = `Dead letter ${id}`;
    const entries = [
      ["Queue", queue],
      ["Deliveries", found.deliveryCount],
      ["Last error", found.reason],
      ["Dead-lettered at", found.deadLetteredAt],
      ["Correlation id", found.correlationId ?? "–"],
      ["Subject", found.subject ?? "–"],
      ["Properties", JSON.stringify(found.properties, null, 1)],
      ["Trace id", found.traceId],
      ["Body" + (found.dataIsUtf8 ? "" : " (not UTF-8, shown lossily)"), found.data],
    ];
    const items = [];
    for (const [name, value] of entries) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      items.push(dt, dd);
    }
    fields.replaceChildren(...items);
  }

  // --- messages and their timelines ---------------------------------------------------------

  async function loadMessages() {
    const duplicates = $("duplicates-only").checked;
    let list;
    try {
      const response = await fetch(`messages?limit=${MESSAGES_LISTED}${duplicates ? "&duplicates=true" : ""}`, { cache: "no-store" });
      list = await response.json();
      if (!response.ok) throw new Error(list.error || response.statusText);
    } catch (_) {
      // The connection state already says when devstack is unreachable.
      return;
    }
    const tbody = $("messages");
    const messages = list.messages || [];
    if (!messages.length) return emptyRow(tbody, 5, duplicates ? "No message processed more than once." : "None yet.");
    tbody.replaceChildren(...messages.map((m) => {
      const row = document.createElement("tr");
      if (m.duplicate) row.className = "duplicate";
      cell(row, "", "id").append(messageLink(m.id));
      cell(row, m.place);
      cell(row, m.deliveries, "num");
      cell(row, m.processed, "num");
      cell(row, m.lastEvent ? `${m.lastEvent.event} at ${timeOf(m.lastAt)}` : "–");
      return row;
    }));
  }

  /** What one journey event says, in a line. */
  function describe(e) {
    switch (e.event) {
      case "enqueued": return `enqueued on ${e.queue} by ${e.via}, trace ${e.traceId}`;
      case "delivery": {
        const end = e.outcome ? `${e.outcome}${e.endedAt ? " at " + timeOf(e.endedAt) : ""}` : "in flight";
        return `delivery ${e.deliveryCount} (attempt ${e.attempt}) to ${e.consumer}: ${end}${e.error ? ": " + e.error : ""}`;
      }
      case "lockRenewed": return `lock renewed, until ${timeOf(e.lockedUntil)}`;
      case "lockExpired": return `lock ran out (delivery ${e.deliveryCount}): available again`;
      case "abandoned": return `abandoned: ${e.reason}`;
      case "completed": return "completed";
      case "completeFailed": return `complete failed: ${e.reason}`;
      case "deadLettered": return `dead-lettered: ${e.reason}`;
      case "replayed": return `replayed from ${e.from}`;
      case "purged": return "purged from the dead-letter queue";
      case "fault": return `fault ${e.fault}: ${e.detail}`;
      case "duplicateDropped": return `a send of the same id on ${e.queue} by ${e.via} dropped as a duplicate`;
      case "scheduled": return `scheduled, active at ${timeOf(e.activeAt)}`;
      case "activated": return "its scheduled time came: active";
      case "expired": return "its time-to-live ran out";
      default: return e.event;
    }
  }

  function timelineItem(at, text, bad) {
    const li = document.createElement("li");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = timeOf(at);
    const what = document.createElement("span");
    what.textContent = text;
    if (bad) what.className = "bad";
    li.append(when, what);
    return li;
  }

  /** Message `id`'s journey, next to the scaling events and faults of the same period. */
  async function showTimeline(id) {
    $("timeline").hidden = false;
    $("timeline-heading").textContent = `Timeline of ${id}`;
    let journey;
    try {
      const response = await fetch(`messages/${encodeURIComponent(id)}`, { cache: "no-store" });
      journey = await response.json();
      if (!response.ok) throw new Error(journey.error || response.statusText);
    } catch (err) {
      $("timeline-summary").textContent = err.message;
      $("timeline-events").replaceChildren();
      $("timeline-context").replaceChildren();
      return;
    }
    $("timeline-summary").textContent =
      `${journey.place}; ${journey.deliveries} deliveries, processed ${journey.processed} time(s)` +
      (journey.duplicate ? ": processed more than once (at-least-once delivery allows it)" : "") +
      (journey.eventsDropped ? `; ${journey.eventsDropped} older events not kept` : "");
    const events = journey.events || [];
    const bad = new Set(["abandoned", "completeFailed", "deadLettered", "expired", "fault", "lockExpired"]);
    $("timeline-events").replaceChildren(...events.map((e) => timelineItem(e.at, describe(e), bad.has(e.event))));
    // The same period: from the first event to the last, five seconds either side.
    const first = events.length ? Date.parse(events[0].at) - 5000 : 0;
    const last = events.length ? Date.parse(events[events.length - 1].at) + 5000 : 0;
    const within = (at) => {
      const t = Date.parse(at);
      return t >= first && t <= last;
    };
    const status = latest ? latest.status : {};
    const context = [];
    for (const e of (status.scaling && status.scaling.events) || []) {
      if (within(e.at)) context.push({ at: e.at, text: `${e.by}: ${e.from} → ${e.to} (metric ${e.metric}). ${e.reason}`, bad: false });
    }
    for (const f of (status.faults && status.faults.recent) || []) {
      if (within(f.at)) context.push({ at: f.at, text: `fault ${f.kind} on ${f.target}: ${f.detail}`, bad: true });
    }
    context.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    const none = document.createElement("li");
    none.textContent = "None in that period.";
    $("timeline-context").replaceChildren(...(context.length ? context.map((c) => timelineItem(c.at, c.text, c.bad)) : [none]));
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
    for (const el of document.querySelectorAll("[data-restart-at]")) {
      const left = secondsUntil(el.dataset.restartAt);
      const countdown = el.querySelector(".countdown");
      if (countdown && left !== null) countdown.textContent = left > 0 ? `(back-off: restarts in ${left} s)` : "(restarting)";
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

  /** Tick spacings of the time axis, in seconds: never less than a second. */
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600];

  /** A time-axis tick as the clock reads it (14:03:25). */
  function clockTime(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

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
      // Clock time, to the second: the samples are a second apart.
      { space: 70, incrs: TIME_STEPS, values: (u, ticks) => ticks.map(clockTime) },
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

  /** POSTs `body` as JSON to devstack's `path` and shows the answer in `output`. */
  function postJson(output, path, body) {
    return show(output, () =>
      fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
  }

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

  for (const button of document.querySelectorAll("[data-fault]")) {
    button.addEventListener("click", () => postJson($("fault-result"), "faults", JSON.parse(button.dataset.fault)));
  }
  $("replay-all").addEventListener("click", () => {
    for (const queue of bindings) postJson($("dead-result"), `dead-letters/${encodeURIComponent(queue)}/replay`, { all: true });
  });
  $("purge-all").addEventListener("click", () => {
    for (const queue of bindings) postJson($("dead-result"), `dead-letters/${encodeURIComponent(queue)}/purge`, { all: true });
  });
  $("messages-refresh").addEventListener("click", loadMessages);
  $("duplicates-only").addEventListener("change", loadMessages);
  // The list follows the stack, every two seconds while connected.
  setInterval(() => {
    if (latest && !stopped) loadMessages();
  }, 2000);

  // For a fixture or a test: render a status document as if it had been pushed.
  // `timeAxisLabels`: what the chart's time axis reads now (uPlot draws it on its canvas).
  window.devstackDashboard = {
    apply,
    samples,
    redraw: drawChart,
    showTimeline,
    timeAxisLabels: () => (chart && chart.axes[0]._values ? [...chart.axes[0]._values] : []),
  };

  connect();
  setInterval(tick, 1000);
})();
