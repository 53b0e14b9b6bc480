"use strict";
// The device page: per monitor a live waterfall, a level meter, the score index over
// the last minutes and the machine state; the alerts (newest first, live); model and health.
(() => {
  const { t, get, post, el, num, when, bytes } = ASD;
  const root = document.getElementById("device");
  const key = root.dataset.key;
  const mayAct = root.dataset.mayAct === "yes";
  const HISTORY_S = 300;
  const FLOOR_DB = -120;
  const monitors = new Map();   // name -> view
  const alerts = new Map();     // id -> li
  let device = null;
  let localClips = false;
  // What arrived, for people and tests alike: frames per monitor, each alert's arrival time
  // and the latency of the last live frames (browser clock minus the daemon's "t").
  const stats = (window.ASD_STATS = { frames: 0, alerts_seen: {}, latency_ms: [] });

  function toast(text, bad) {
    const box = document.getElementById("toast");
    box.textContent = text;
    box.className = bad ? "bad" : "ok";
  }
  async function act(name, body, button) {
    if (button) button.disabled = true;
    toast(t("sent"));
    try {
      const { answer } = await post(`/api/devices/${encodeURIComponent(key)}/actions/${name}`, body);
      const detail = answer.result ? " " + JSON.stringify(answer.result) : "";
      toast(`${t("answer")}: ${answer.ok ? "ok" : answer.error}${answer.ok ? detail : ""}`, !answer.ok);
      return answer;
    } finally { if (button) button.disabled = false; }
  }

  // --- colours of the waterfall: viridis, FLOOR_DB .. 0 dB -----------------------------
  const VIRIDIS = [[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],[92,200,99],[170,220,50],[253,231,37]];
  function colour(db) {
    const x = Math.min(1, Math.max(0, (db - FLOOR_DB) / -FLOOR_DB)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * f));
  }

  function monitorView(name) {
    if (monitors.has(name)) return monitors.get(name);
    const waterfall = el("canvas", { class: "waterfall", width: 480, height: 128, "data-frames": 0 });
    const caption = el("figcaption", {}, bandsCaption(null));
    const meter = el("div", { class: "meter" }, el("div", { class: "meter-fill" }));
    const levelText = el("span", { class: "level" }, "–");
    const state = el("span", { class: "badge" }, "…");
    const machine = el("span", { class: "machine" }, "");
    const scoreText = el("span", { class: "score" }, "");
    const chartBox = el("div", { class: "chart" });
    const actions = el("div", { class: "actions" });
    if (mayAct) {
      const seconds = el("input", { type: "number", min: 20, max: 86400, value: 600, class: "seconds", "aria-label": t("seconds") });
      actions.append(
        el("button", { class: "learn", onclick: (e) => act("learn", { monitor: name, seconds: Number(seconds.value) }, e.target) }, t("learn")),
        seconds, ` ${t("seconds")} `,
        el("button", { class: "rollback", onclick: (e) => confirm(t("confirm")) && act("rollback", { monitor: name }, e.target) }, t("rollback")));
    }
    const section = el("article", { class: "monitor", "data-monitor": name },
      el("h2", {}, `${t("monitor")}: ${name} `, state, " ", machine),
      el("div", { class: "live" },
        el("figure", {}, waterfall, caption),
        el("div", { class: "levelbox" }, el("div", {}, t("level")), meter, levelText, el("div", {}, scoreText))),
      chartBox, actions);
    document.getElementById("monitors").append(section);
    const now = Date.now() / 1000;
    const data = [[now - HISTORY_S, now], [null, null], [1, 1]];
    const chart = new uPlot({
      width: Math.min(900, chartBox.clientWidth || 720), height: 180,
      title: t("score_index"),
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(2, hi ?? 2)] } },
      axes: [{ label: t("local_time") }, { label: "index" }],
      series: [{}, { label: "index", stroke: "#3b6fd1", width: 1.5, spanGaps: false },
               { label: t("threshold"), stroke: "#d13b3b", dash: [6, 4], width: 1 }],
    }, data, chartBox);
    const view = { name, waterfall, caption, meter, levelText, state, machine, scoreText, chart, data, section, frames: 0 };
    monitors.set(name, view);
    return view;
  }

  function bandsCaption(edges) {
    const top = Array.isArray(edges) && edges.length ? edges[edges.length - 1] : null;
    const range = top ? `20 ${t("hz")} – ${(top / 1000).toFixed(1)} kHz` : `20 ${t("hz")} – Nyquist`;
    return `${t("waterfall")} · ${t("bands")}: ${range} · ${FLOOR_DB}…0 dB`;
  }

  function showState(name, m) {
    const v = monitorView(name);
    v.state.textContent = m.anomaly ? t("anomaly") : t("normal");
    v.state.className = "badge " + (m.anomaly ? "bad" : "ok");
    v.machine.textContent = m.machine ? `${t("machine")}: ${t(m.machine)}` : "";
    v.scoreText.textContent = `${t("score_index")}: ${num(m.index)} · score ${num(m.score, 3)} / ${num(m.threshold, 3)}`;
  }

  function liveFrame(frame) {
    const v = monitorView(frame.monitor);
    showState(frame.monitor, frame);
    if (typeof frame.level_dbfs === "number") {
      const fill = Math.min(100, Math.max(0, (frame.level_dbfs + 90) / 90 * 100));
      v.meter.firstChild.style.width = fill + "%";
      v.levelText.textContent = `${num(frame.level_dbfs, 1)} ${t("dbfs")}`;
    }
    if (Array.isArray(frame.band_edges_hz)) v.caption.textContent = bandsCaption(frame.band_edges_hz);
    const rows = Array.isArray(frame.spectra) ? frame.spectra : (Array.isArray(frame.spectrum_db) ? [frame.spectrum_db] : []);
    const ctx = v.waterfall.getContext("2d");
    const { width, height } = v.waterfall;
    for (const spectrum of rows) {
      ctx.drawImage(v.waterfall, -2, 0);
      const bands = spectrum.length;
      for (let b = 0; b < bands; b++) {
        const [r, g, bl] = colour(spectrum[b]);
        ctx.fillStyle = `rgb(${r},${g},${bl})`;
        const y0 = height - Math.round((b + 1) * height / bands), y1 = height - Math.round(b * height / bands);
        ctx.fillRect(width - 2, y0, 2, y1 - y0);
      }
      v.frames++;
    }
    v.waterfall.dataset.frames = v.frames;
    const tt = typeof frame.t === "number" ? frame.t : Date.parse(frame.at) / 1000;
    stats.frames++;
    if (isFinite(tt)) {
      stats.latency_ms.push(Date.now() - tt * 1000);
      if (stats.latency_ms.length > 200) stats.latency_ms.shift();
    }
    if (typeof frame.index === "number" && isFinite(tt)) {
      const [xs, ys, th] = v.data;
      if (xs.length === 2 && ys[0] === null) { xs.length = 0; ys.length = 0; th.length = 0; }
      xs.push(tt); ys.push(frame.index); th.push(1);
      while (xs.length && xs[0] < tt - HISTORY_S) { xs.shift(); ys.shift(); th.shift(); }
      v.chart.setData(v.data);
    }
  }

  function evidenceText(evidence) {
    if (!Array.isArray(evidence) || !evidence.length) return "–";
    return evidence.slice(0, 3).map((e) => {
      const band = Array.isArray(e.band_hz) ? `${Math.round(e.band_hz[0])}–${Math.round(e.band_hz[1])} ${t("hz")}` : "?";
      return `${band} ${e.delta_db >= 0 ? "+" : ""}${num(e.delta_db, 1)} dB`;
    }).join("; ");
  }

  function alertItem(a) {
    const id = a.id;
    const clipUrl = `/clips/${encodeURIComponent(key)}/${encodeURIComponent(id)}`;
    const saved = a.clip && a.clip.status === "saved";
    const kind = a.type === "anomaly" || !a.type ? (a.monitor ?? "") : `${a.type}: ${a.condition ?? ""}`;
    const li = el("li", { class: "alert " + (a.phase === "start" ? "open" : "closed"), "data-alert-id": id },
      el("div", { class: "alert-head" },
        el("strong", {}, when(a.started_at)), ` · ${kind} · `,
        el("span", { class: "phase" }, a.phase), ` · ${t("duration")}: ${a.duration_s !== undefined ? num(a.duration_s, 1) + " " + t("s") : "…"}`,
        ` · ${t("peak")}: ${num(a.peak_score ?? a.score, 3)} / ${t("threshold")} ${num(a.threshold, 3)}`),
      el("div", { class: "alert-id" }, "id: ", el("code", {}, id)),
      el("div", {}, `${t("evidence")}: ${evidenceText(a.evidence)}`));
    if (saved) {
      if (localClips) li.append(el("img", { class: "spectrogram", src: clipUrl + ".png", alt: `${t("clip")} ${id}`, loading: "lazy", onerror: (e) => e.target.remove() }));
      li.append(el("audio", { controls: true, preload: "none", src: clipUrl + ".wav" }));
    }
    if (mayAct && a.type !== "input" && a.type !== "machine" && a.phase === "end") {
      li.append(el("button", { class: "false-alarm", onclick: (e) => act("feedback", { alert_id: id, monitor: a.monitor }, e.target) }, t("false_alarm")));
    }
    return li;
  }

  function showAlert(a) {
    if (!a || !a.id) return;
    stats.alerts_seen[a.id + ":" + a.phase] ??= Date.now();
    const li = alertItem(a);
    const old = alerts.get(a.id);
    if (old) old.replaceWith(li); else document.getElementById("alerts").prepend(li);
    alerts.set(a.id, li);
    document.getElementById("no-alerts").hidden = alerts.size > 0;
  }

  function showModels(model) {
    const box = document.getElementById("models");
    const entries = Object.entries((model && model.monitors) || {});
    box.replaceChildren(...entries.map(([name, m]) => el("dl", { class: "facts" },
      el("dt", {}, t("monitor")), el("dd", {}, name),
      el("dt", {}, t("model")), el("dd", {}, `${m.name ?? "?"} (${m.kind ?? ""})`),
      el("dt", {}, t("version")), el("dd", {}, m.version ?? "–"),
      el("dt", {}, t("source")), el("dd", {}, m.source ?? "–"),
      el("dt", {}, t("previous")), el("dd", {}, m.previous ? `${m.previous.name ?? ""} ${m.previous.version ?? ""}` : "–"),
      el("dt", {}, t("loaded_at")), el("dd", {}, when(m.loaded_at)),
      el("dt", {}, t("threshold")), el("dd", {}, num(m.threshold, 3)))));
    if (model && model.last_push) box.append(el("p", {}, `${t("last_push")}: ${JSON.stringify(model.last_push)}`));
  }

  function showHealth(h) {
    const dl = document.getElementById("health");
    if (!h) { dl.replaceChildren(el("dd", {}, "–")); return; }
    const ticks = h.ticks || {};
    const process = h.process || {};
    const outbox = h.outbox || {};
    const clips = h.clips || {};
    const audio = h.audio || {};
    const problems = Array.isArray(h.input) ? h.input.map((p) => p.condition).join(", ") : "";
    const rows = [
      [t("ticks"), `${num(ticks.tick_p50_ms, 2)} / ${num(ticks.tick_p95_ms, 2)} ms`],
      [t("cpu"), `${num(process.cpu_percent, 1)} %`],
      [t("rss"), `${num(process.rss_mb, 1)} MB`],
      [t("outbox"), String(outbox.outbox_depth ?? "–")],
      [t("disk"), `${bytes(clips.bytes)} · ${clips.clips ?? "–"} · free ${num(clips.free_mb, 0)} MB`],
      [t("input"), `${problems || t("none")} · lost ${audio.lost_samples ?? "–"} · overruns ${audio.overruns ?? "–"}`],
      ["", `${when(h.at)}`],
    ];
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function showLearn(l) {
    const box = document.getElementById("learning-box");
    if (!l) return;
    box.hidden = false;
    const done = l.seconds_wanted ? ` ${num(l.seconds_collected, 0)} / ${num(l.seconds_wanted, 0)} ${t("s")}` : "";
    document.getElementById("learning").textContent = `${l.monitor ?? ""}: ${l.state}${done}${l.error ? " · " + l.error : ""}`;
  }

  function showOnline(status) {
    const badge = document.getElementById("online");
    const online = status && status.state === "online";
    badge.textContent = online ? t("online") : t("offline");
    badge.className = "badge " + (online ? "ok" : "bad");
    if (status && status.device_id) document.getElementById("device-name").textContent = status.device_id;
  }

  async function start() {
    if (!mayAct) {
      const hint = document.getElementById("action-hint");
      hint.hidden = false;
      hint.textContent = root.dataset.hasPassword === "yes" ? t("actions_need_login") : t("actions_need_password");
    }
    device = await get(`/api/devices/${encodeURIComponent(key)}`);
    localClips = !!device.local_clips;
    showOnline(device.status);
    for (const [name, m] of Object.entries(device.monitor_states || {})) showState(name, m);
    for (const [name, edges] of Object.entries(device.band_edges_hz || {})) {
      if (monitors.has(name)) monitors.get(name).caption.textContent = bandsCaption(edges);
    }
    for (const a of [...(device.alerts || [])].reverse()) showAlert(a);
    showModels(device.model);
    showHealth(device.health);
    showLearn(device.learn);
    const source = new EventSource(`/api/devices/${encodeURIComponent(key)}/events`);
    const on = (kind, fn) => source.addEventListener(kind, (e) => fn(JSON.parse(e.data).body));
    on("live", liveFrame);
    on("alert", showAlert);
    on("monitor", (m) => showState(m.monitor, m));
    on("model", showModels);
    on("health", showHealth);
    on("learn", showLearn);
    on("status", showOnline);
  }
  start();
})();
