"use strict";
(() => {
  const form = document.getElementById("login");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("login-error");
    error.hidden = true;
    const response = await fetch("/login" + location.search, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify({ password: form.password.value }),
    });
    const answer = await response.json().catch(() => ({ ok: false }));
    if (answer.ok) { location.href = answer.next || "/"; return; }
    error.hidden = false;
    form.password.select();
  });
})();
