// Audit (org admins): filter by job, actor, action; newest first, page by cursor.
import { api } from "./api.js";
import { h, when, errorBox } from "./ui.js";

export async function auditPage(main) {
  const job = h("input", { name: "job_id", placeholder: "job id", size: 36 });
  const actor = h("input", { name: "actor", placeholder: "user, system or box:NAME", size: 18 });
  const action = h("input", { name: "action", placeholder: "job.cancel or job.*", size: 16 });
  const tbody = h("tbody");
  const msg = h("div");
  const more = h("button", { type: "button", hidden: true }, "Older →");
  let cursor = null;
  async function load(append) {
    const q = new URLSearchParams({ limit: 100 });
    if (job.value.trim()) q.set("job_id", job.value.trim());
    if (actor.value.trim()) q.set("actor", actor.value.trim());
    if (action.value.trim()) q.set("action", action.value.trim());
    if (append && cursor) q.set("cursor", cursor);
    try {
      const page = await api(`/api/audit?${q}`);
      const rows = page.data.map((e) => h("tr", {},
        h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", { class: "mono" }, e.action),
        h("td", {}, e.job_id ? h("a", { href: `#/jobs/${e.job_id}`, class: "mono" }, e.job_id.slice(0, 8)) : ""),
        h("td", {}, e.box || ""), h("td", { class: "mono muted" }, Object.keys(e.detail).length ? JSON.stringify(e.detail) : "")));
      if (append) tbody.append(...rows); else tbody.replaceChildren(...rows);
      cursor = page.next_cursor; more.hidden = !cursor; msg.replaceChildren();
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }
  more.addEventListener("click", () => load(true));
  main.replaceChildren(h("h1", {}, "Audit"),
    h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); load(false); } },
      h("label", {}, "Job", job), h("label", {}, "Actor", actor), h("label", {}, "Action", action), h("button", { type: "submit" }, "Filter")),
    msg, h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ["At", "Actor", "Action", "Job", "Box", "Detail"].map((t) => h("th", {}, t)))), tbody),
    h("div", { class: "pager" }, more));
  await load(false);
}
