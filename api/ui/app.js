// The dashboard's shell: sign-in, the header, and the router (one page per URL hash).
import { api, setSession, me, atLeast } from "./api.js";
import { h, errorBox } from "./ui.js";
import { jobsPage } from "./jobs.js";
import { jobPage } from "./job.js";
import { newJobPage } from "./newjob.js";
import { boxesPage } from "./boxes.js";
import { pipelinesPage, pipelinePage } from "./pipelines.js";
import { auditPage } from "./audit.js";
import { webhooksPage, webhookPage } from "./webhooks.js";
import { secretsPage } from "./secrets.js";
import { orgPage } from "./org.js";
import { templatesPage, templatePage } from "./templates.js";
import { schedulesPage } from "./schedules.js";

const ROUTES = [
  [/^#\/jobs\/([^/]+)$/, jobPage, "jobs"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/new$/, newJobPage, "new"],
  [/^#\/boxes$/, boxesPage, "boxes"],
  [/^#\/pipelines\/([^/]+)$/, pipelinePage, "pipelines"],
  [/^#\/pipelines$/, pipelinesPage, "pipelines"],
  [/^#\/templates\/([^/]+)$/, templatePage, "templates"],
  [/^#\/templates$/, templatesPage, "templates"],
  [/^#\/schedules$/, schedulesPage, "schedules"],
  [/^#\/audit$/, auditPage, "audit"],
  [/^#\/webhooks\/([^/]+)$/, webhookPage, "webhooks"],
  [/^#\/webhooks$/, webhooksPage, "webhooks"],
  [/^#\/secrets$/, secretsPage, "secrets"],
  [/^#\/org$/, orgPage, "org"],
];

const main = document.getElementById("app");
let leave = null; // the current page's cleanup (close its streams and timers)
// Each navigation's number: a page still loading when the next was asked for renders into its own
// detached view and is closed once loaded, so it never covers the page the URL now names (where
// a click on Cancel would act on the wrong job).
let current = 0;

function signInPage(reason) {
  current++;
  document.getElementById("top").hidden = true;
  const token = h("input", { type: "password", name: "token", id: "token", autocomplete: "current-password", required: true, placeholder: "brt_…" });
  const msg = h("div");
  if (reason) msg.append(h("p", { class: "muted" }, reason));
  const form = h("form", { id: "signin", onsubmit: async (ev) => {
      ev.preventDefault();
      msg.replaceChildren();
      try {
        setSession(await api("/api/session", { method: "POST", body: { token: token.value } }));
        token.value = "";
        if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
        route();
      } catch (err) { msg.append(errorBox(err)); }
    } },
    h("label", {}, "API token", token),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  main.replaceChildren(h("div", { class: "card signin" },
    h("h1", {}, "Sign in to boxrun"),
    h("p", { class: "muted" }, "Paste an API token (an admin mints one with POST /api/users/{name}/tokens). The browser keeps only a session cookie."),
    form, msg));
  token.focus();
}

async function route() {
  const ticket = ++current;
  if (leave) { leave(); leave = null; }
  if (!me) {
    try { setSession(await api("/api/session")); } catch { signInPage(); return; }
    if (ticket !== current) return; // a later navigation took over meanwhile
  }
  document.getElementById("top").hidden = false;
  document.getElementById("who").textContent = `${me.name} · ${me.role} · ${me.org}`;
  // entries for pages a role cannot use are hidden (the API refuses them anyway)
  for (const a of document.querySelectorAll("[data-role]")) a.hidden = !atLeast(a.dataset.role);
  const hash = location.hash || "#/jobs";
  for (const [re, page, nav] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    const view = h("div", { class: "view" }, h("p", { class: "muted" }, "Loading…"));
    main.replaceChildren(view);
    try {
      const cleanup = (await page(view, ...m.slice(1).map(decodeURIComponent))) || null;
      if (ticket === current) leave = cleanup;
      else if (cleanup) cleanup(); // navigated away while it loaded
    } catch (err) { view.replaceChildren(errorBox(err)); }
    return;
  }
  location.hash = "#/jobs";
}

document.getElementById("signout").addEventListener("click", async () => {
  try { await api("/api/session", { method: "DELETE" }); } catch { /* signed out either way */ }
  setSession(null);
  if (leave) { leave(); leave = null; }
  signInPage("Signed out.");
});
window.addEventListener("boxrun:signed-out", (ev) => {
  setSession(null);
  if (leave) { leave(); leave = null; }
  signInPage(`Signed out: ${ev.detail}`);
});
window.addEventListener("hashchange", route);
route();
