"use strict";
(() => {
  const { t, get, el, num, when } = ASD;
  const body = document.querySelector("#fleet tbody");
  function row(d) {
    const monitors = Object.entries(d.monitors).map(([name, m]) =>
      el("div", { class: m.anomaly ? "anomaly" : "" },
        `${name}: ${m.anomaly ? t("anomaly") : t("normal")}`,
        m.machine ? ` · ${t(m.machine)}` : "",
        typeof m.index === "number" ? ` · ${num(m.index)}` : ""));
    const models = Object.entries(d.models).map(([name, m]) =>
      el("div", {}, `${name}: ${m.name ?? "?"} ${m.version ?? ""} (${m.source ?? ""})`));
    const last = d.last_alert;
    return el("tr", { "data-device": d.key, class: d.online ? "" : "offline" },
      el("td", {}, el("a", { href: "/device/" + encodeURIComponent(d.key) }, d.device_id)),
      el("td", {}, el("span", { class: "badge " + (d.online ? "ok" : "bad") }, d.online ? t("online") : t("offline"))),
      el("td", {}, monitors.length ? monitors : "–"),
      el("td", {}, last ? `${when(last.started_at)} · ${last.monitor ?? last.condition ?? ""} · ${last.phase}` : t("none")),
      el("td", {}, models.length ? models : "–"),
      el("td", { class: d.problems.length ? "bad" : "" }, d.problems.length ? d.problems.join(", ") : t("none")));
  }
  async function refresh() {
    const data = await get("/api/devices");
    body.replaceChildren(...(data.devices.length ? data.devices.map(row)
      : [el("tr", { class: "empty" }, el("td", { colspan: 6 }, t("no_devices")))]));
  }
  let pending = null;
  const source = new EventSource("/api/events");
  for (const kind of ["status", "health", "model", "monitor", "alert", "learn"]) {
    source.addEventListener(kind, () => { pending ??= setTimeout(() => { pending = null; refresh(); }, 300); });
  }
  refresh();
})();
