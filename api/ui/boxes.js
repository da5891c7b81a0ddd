// Boxes: status, current job(s), queue, pipelines holding a box between steps (keep_box: pipeline,
// step, since), maintenance toggle (admins).
import { api, atLeast } from "./api.js";
import { h, badge, ago, when, errorBox } from "./ui.js";

export async function boxesPage(main) {
  const tbody = h("tbody");
  const msg = h("div");
  async function load() {
    try {
      const boxes = (await api("/api/boxes")).data;
      const queues = await Promise.all(boxes.map((b) => api(`/api/boxes/${encodeURIComponent(b.name)}/queue`).catch(() => ({ leases: [], waiting: [], holds: [] }))));
      tbody.replaceChildren(...boxes.map((b, i) => {
        const q = queues[i];
        const toggle = atLeast("admin") ? h("button", { type: "button", dataset: { box: b.name }, onclick: async () => {
          try { await api(`/api/boxes/${encodeURIComponent(b.name)}/maintenance`, { method: "PUT", body: { on: !b.maintenance, reason: "dashboard" } }); load(); }
          catch (err) { msg.replaceChildren(errorBox(err)); }
        } }, b.maintenance ? "End maintenance" : "Maintenance") : "";
        return h("tr", { dataset: { box: b.name } },
          h("td", {}, h("strong", {}, b.name)),
          h("td", {}, badge(b.status), b.maintenance ? [" ", badge("maintenance")] : "", b.draining ? [" ", badge("draining")] : ""),
          h("td", {}, q.leases.length ? q.leases.map((l) => h("div", {}, h("a", { href: `#/jobs/${l.job_id}`, class: "mono" }, l.job_id.slice(0, 8)), l.exclusive ? " (lock)" : "")) : h("span", { class: "muted" }, "idle")),
          h("td", {}, q.waiting.length ? `${q.waiting.length} waiting` : "—"),
          h("td", { class: "holds" }, (q.holds || []).length ? q.holds.map((x) => h("div", { dataset: { hold: x.pipeline_id } },
            h("a", { href: `#/pipelines/${x.pipeline_id}`, class: "mono" }, x.pipeline_id.slice(0, 8)), ` after ${x.step}`,
            h("span", { class: "muted", title: when(x.since) }, ` since ${ago(x.since)}`))) : "—"),
          h("td", {}, b.groups.join(", ") || "—"), h("td", {}, b.capabilities.join(", ") || "—"),
          h("td", {}, String(b.capacity)), h("td", { title: b.last_seen_at || "" }, ago(b.last_seen_at)),
          h("td", {}, toggle));
      }));
      if (!boxes.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No boxes.")));
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }
  main.replaceChildren(h("h1", {}, "Boxes"), msg, h("table", { id: "boxes" },
    h("thead", {}, h("tr", {}, ["Box", "Status", "Running", "Queue", "Held by", "Groups", "Capabilities", "Capacity", "Last seen", ""].map((t) => h("th", {}, t)))), tbody));
  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
