// Schedules (docs/templates.md, "Schedules"): a template run on a cron (UTC) by a Temporal
// Schedule. The list with cron, paused, next runs; create from a template + cron + params
// (operators and admins); pause/unpause and delete (with confirm) for its creator or an admin.
import { api, atLeast, me } from "./api.js";
import { h, badge, when, errorBox } from "./ui.js";
import { paramFields, templateHref } from "./templates.js";

const mayChange = (s) => atLeast("admin") || (atLeast("operator") && s.created_by === me.name);

function nextRuns(s) {
  if (!s.next_runs || !s.next_runs.length) return h("span", { class: "muted" }, s.paused ? "paused" : "—");
  return h("div", { class: "next-runs", style: "white-space:nowrap" }, s.next_runs.slice(0, 3).map((t) => h("div", { title: t }, when(t))));
}

export async function schedulesPage(main) {
  const tbody = h("tbody");
  const msg = h("div");
  const form = h("div");

  async function load() {
    const listed = (await api("/api/schedules")).data;
    // the list leaves next_runs out: each schedule's own answer has them
    const full = await Promise.all(listed.map((s) => api(`/api/schedules/${encodeURIComponent(s.id)}`).catch(() => s)));
    tbody.replaceChildren(...full.map((s) => {
      const actions = mayChange(s) ? [
        h("button", { type: "button", class: s.paused ? "unpause" : "pause", onclick: () => act(s, s.paused ? "unpause" : "pause") }, s.paused ? "Unpause" : "Pause"), " ",
        h("button", { type: "button", class: "danger delete", onclick: () => remove(s) }, "Delete"),
      ] : "";
      return h("tr", { dataset: { schedule: s.id } },
        h("td", {}, h("a", { href: templateHref(s.template, s.version) }, s.template), s.version ? ` v${s.version}` : h("span", { class: "muted" }, " (latest)")),
        h("td", { class: "mono", style: "white-space:nowrap" }, s.cron),
        h("td", { class: "mono" }, Object.entries(s.params).map(([k, v]) => `${k}=${v}`).join(" ") || "—"),
        h("td", {}, s.paused ? badge("paused") : badge("active")),
        h("td", {}, nextRuns(s)),
        h("td", {}, s.created_by, h("div", { class: "muted mono", title: "the Temporal Schedule" }, s.temporal_schedule_id)),
        h("td", { style: "white-space:nowrap" }, actions));
    }));
    if (!full.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No schedules.")));
  }

  async function act(s, action) {
    msg.replaceChildren();
    try { await api(`/api/schedules/${encodeURIComponent(s.id)}/${action}`, { method: "POST" }); await load(); }
    catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  async function remove(s) {
    if (!confirm(`Delete the schedule of ${s.template} (${s.cron})? Its Temporal Schedule goes too; the runs it made stay.`)) return;
    msg.replaceChildren();
    try { await api(`/api/schedules/${encodeURIComponent(s.id)}`, { method: "DELETE" }); await load(); }
    catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  async function createForm() {
    const templates = (await api("/api/templates")).data;
    if (!templates.length) { form.replaceChildren(h("p", { class: "muted" }, "No template to schedule yet.")); return; }
    const pick = h("select", { id: "schedule-template", name: "template" }, templates.map((t) => h("option", { value: t.name }, t.name)));
    const version = h("select", { id: "schedule-version", name: "version" });
    const cron = h("input", { id: "schedule-cron", name: "cron", class: "mono", placeholder: "0 3 * * *", size: 16, required: true });
    const fieldsBox = h("div", { class: "toolbar", id: "schedule-params" });
    const note = h("div");
    const create = h("button", { class: "primary", type: "submit", id: "create-schedule" }, "Create");
    let current = null;
    async function choose() {
      const t = templates.find((x) => x.name === pick.value);
      version.replaceChildren(h("option", { value: "" }, "latest at each run"),
        ...Array.from({ length: t.latest_version }, (_, i) => t.latest_version - i).map((v) => h("option", { value: v }, `v${v}`)));
      current = paramFields(t.params);
      fieldsBox.replaceChildren(...(current.fields.length ? current.fields : [h("span", { class: "muted" }, "No params.")]));
    }
    pick.addEventListener("change", choose);
    await choose();
    form.replaceChildren(h("h2", {}, "New schedule"),
      h("form", { class: "card", id: "new-schedule", style: "display:flex;flex-direction:column;gap:.8rem", onsubmit: async (ev) => {
        ev.preventDefault();
        note.replaceChildren();
        create.disabled = true;
        try {
          const body = { template: pick.value, cron: cron.value.trim(), params: current.values() };
          if (version.value) body.version = Number(version.value);
          await api("/api/schedules", { method: "POST", body });
          cron.value = "";
          note.replaceChildren(h("p", { class: "muted", id: "notice" }, `Scheduled ${body.template} on ${body.cron} (UTC).`));
          await load();
        } catch (err) { note.replaceChildren(errorBox(err)); }
        finally { create.disabled = false; }
      } },
      h("div", { class: "toolbar" }, h("label", {}, "Template", pick), h("label", {}, "Version", version),
        h("label", {}, "Cron (UTC: minute hour day month weekday, or @daily, @hourly)", cron)),
      fieldsBox, h("div", {}, create), note));
  }

  main.replaceChildren(h("h1", {}, "Schedules"),
    h("p", { class: "muted" }, "Each schedule runs a template on a cron (UTC) through a Temporal Schedule; its runs are owned by schedule:<id>."),
    msg,
    h("table", { id: "schedules" },
      h("thead", {}, h("tr", {}, ["Template", "Cron (UTC)", "Params", "State", "Next runs", "Created by", ""].map((x) => h("th", {}, x)))), tbody),
    form);
  await load();
  if (atLeast("operator")) await createForm();
}
