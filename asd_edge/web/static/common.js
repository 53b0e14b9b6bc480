// Shared by the dashboard's pages: words, the CSRF token, JSON requests, formatting.
"use strict";
const ASD = (() => {
  const strings = JSON.parse(document.getElementById("strings").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const t = (key) => strings[key] ?? key;
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body ?? {}),
    });
    let answer;
    try { answer = await response.json(); } catch (e) { answer = { ok: false, error: response.statusText }; }
    return { status: response.status, answer };
  }
  async function get(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    return response.json();
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs ?? {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const num = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(document.documentElement.lang);
  }
  function bytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }
  return { t, post, get, el, num, when, bytes, csrf };
})();
document.getElementById("logout")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  await ASD.post("/logout");
  location.href = "/login";
});
