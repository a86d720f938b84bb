// The login page: username and password to POST /api/v1/auth/login, which answers with the
// same session token as gRPC's Login and keeps it in an HttpOnly cookie; then back to the page
// that asked for it.

import { api } from "./api.js";
import { navigate } from "./app.js";

export async function loginPage(main) {
  const next = new URLSearchParams(location.search).get("next") || "/";
  const form = document.createElement("form");
  form.className = "panel login";
  form.innerHTML = `
    <h1>Log in</h1>
    <label>Username <input type="text" name="username" autocomplete="username" required></label>
    <label>Password <input type="password" name="password" autocomplete="current-password"></label>
    <p class="error" role="alert" hidden></p>
    <button type="submit">Log in</button>`;
  const error = form.querySelector(".error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    const data = new FormData(form);
    try {
      await api("/auth/login", {
        method: "POST",
        body: { username: data.get("username"), password: data.get("password") || "" },
      });
      // Only a path of this site: never send the browser elsewhere after a login.
      navigate(next.startsWith("/") && !next.startsWith("//") ? next : "/");
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  main.replaceChildren(form);
  form.querySelector("input[name=username]").focus();
}
