// Webhooks (org admins): the list, create (the signing secret shown once, with a copy button),
// delete, and one webhook's deliveries with every attempt and a Redeliver button.
import { api, atLeast } from "./api.js";
import { h, badge, when, errorBox } from "./ui.js";

const EVENTS = [
  "job.completed", "job.failed", "job.timed_out", "job.cancelled", "job.unschedulable",
  "box.offline", "box.online",
  "pipeline.completed", "pipeline.failed", "pipeline.cancelled", "pipeline.timed_out",
];

function adminsOnly(main, title) {
  main.replaceChildren(h("h1", {}, title), h("p", { class: "muted", id: "needs-role" }, "Webhooks are managed by org admins."));
}

async function copy(text, input, note) {
  // navigator.clipboard exists only in secure contexts (https, localhost); else the selection
  try {
    if (navigator.clipboard) await navigator.clipboard.writeText(text);
    else { input.select(); document.execCommand("copy"); }
    note.textContent = "Copied.";
  } catch { input.select(); note.textContent = "Select it and copy it (Ctrl+C)."; }
}

function secretCard(made) {
  const input = h("input", { id: "webhook-secret", class: "mono", readonly: true, size: 60, value: made.secret, onfocus: (ev) => ev.target.select() });
  const note = h("span", { class: "muted" });
  return h("div", { class: "card", id: "created", role: "status", style: "margin-bottom:1rem" },
    h("p", { style: "margin-top:0" }, h("strong", {}, "Webhook created. "),
      "Its signing secret is shown this once: copy it now and keep it with the receiver (it verifies X-Boxrun-Signature). ",
      "boxrun stores it encrypted and never shows it again."),
    h("div", { class: "toolbar" }, input,
      h("button", { type: "button", id: "copy-secret", onclick: () => copy(made.secret, input, note) }, "Copy"),
      h("button", { type: "button", id: "dismiss-secret", onclick: (ev) => ev.target.closest(".card").remove() }, "Done"),
      note));
}

export async function webhooksPage(main) {
  if (!atLeast("admin")) { adminsOnly(main, "Webhooks"); return; }
  const tbody = h("tbody");
  const msg = h("div");
  const shown = h("div");
  const url = h("input", { name: "url", id: "webhook-url", type: "url", placeholder: "https://hooks.example.com/boxrun", size: 48, required: true });
  const boxes = EVENTS.map((e) => h("input", { type: "checkbox", name: "events", value: e, checked: e === "job.failed" }));
  const create = h("button", { class: "primary", type: "submit", id: "create-webhook" }, "Create");

  async function load() {
    const hooks = (await api("/api/webhooks")).data;
    tbody.replaceChildren(...hooks.map((w) => h("tr", { dataset: { webhook: w.id } },
      h("td", {}, h("a", { href: `#/webhooks/${w.id}`, class: "mono" }, w.url)),
      h("td", {}, w.events.join(", ")),
      h("td", {}, w.created_by),
      h("td", {}, when(w.created_at)),
      h("td", {},
        h("a", { class: "button", href: `#/webhooks/${w.id}` }, "Deliveries"), " ",
        h("button", { type: "button", class: "danger delete", onclick: () => remove(w) }, "Delete")))));
    if (!hooks.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No webhooks.")));
  }

  async function remove(w) {
    if (!confirm(`Delete the webhook to ${w.url}? Its deliveries go with it; one still retrying stops.`)) return;
    msg.replaceChildren();
    try { await api(`/api/webhooks/${encodeURIComponent(w.id)}`, { method: "DELETE" }); await load(); }
    catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    msg.replaceChildren();
    create.disabled = true;
    try {
      const events = boxes.filter((b) => b.checked).map((b) => b.value);
      if (!events.length) throw new Error("pick at least one event");
      const made = await api("/api/webhooks", { method: "POST", body: { url: url.value.trim(), events } });
      url.value = "";
      shown.replaceChildren(secretCard(made));
      await load();
    } catch (err) { msg.replaceChildren(errorBox(err)); }
    finally { create.disabled = false; }
  }

  main.replaceChildren(h("h1", {}, "Webhooks"),
    h("p", { class: "muted" }, "Each event listed is POSTed to the URL, signed with the webhook's secret (docs/webhooks.md)."),
    shown, msg,
    h("table", { id: "webhooks" },
      h("thead", {}, h("tr", {}, ["URL", "Events", "Created by", "Created", ""].map((t) => h("th", {}, t)))), tbody),
    h("h2", {}, "New webhook"),
    h("form", { class: "card", id: "new-webhook", onsubmit: onSubmit, style: "display:flex;flex-direction:column;gap:.8rem" },
      h("label", {}, "URL (http or https; a private address only where the deployment allows it)", url),
      h("fieldset", { id: "webhook-events", style: "border:0;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:.4rem 1rem" },
        h("legend", { class: "muted", style: "font-size:.8rem;margin-bottom:.3rem" }, "Events"),
        boxes.map((b) => h("label", { class: "inline mono" }, b, b.value))),
      h("div", {}, create)));
  await load();
}

function subjectLink(d) {
  if (d.event.startsWith("job.")) return h("a", { href: `#/jobs/${d.subject}`, class: "mono" }, d.subject.slice(0, 8));
  if (d.event.startsWith("pipeline.")) return h("a", { href: `#/pipelines/${d.subject}`, class: "mono" }, d.subject.slice(0, 8));
  return h("span", {}, d.subject);
}

function attemptsTable(attempts) {
  if (!attempts.length) return h("span", { class: "muted" }, "no attempt yet");
  return h("table", { class: "attempts" },
    h("thead", {}, h("tr", {}, ["At", "Status", "Error", "Duration"].map((t) => h("th", {}, t)))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", {}, when(a.at)),
      h("td", { class: a.status_code && a.status_code < 300 ? "" : "error" }, a.status_code ?? "—"),
      h("td", { class: "mono", title: a.response || "" }, a.error || ""),
      h("td", { class: "right" }, `${a.duration_ms} ms`)))));
}

export async function webhookPage(main, id) {
  if (!atLeast("admin")) { adminsOnly(main, "Webhook"); return; }
  const path = `/api/webhooks/${encodeURIComponent(id)}`;
  const hook = await api(path);
  const tbody = h("tbody");
  const msg = h("div");
  const more = h("button", { type: "button", hidden: true }, "Older →");
  let cursor = null;

  function row(d) {
    const redeliver = h("button", { type: "button", class: "redeliver", onclick: async () => {
      msg.replaceChildren();
      redeliver.disabled = true;
      try {
        const again = await api(`${path}/deliveries/${encodeURIComponent(d.id)}/redeliver`, { method: "POST" });
        tr.replaceWith(row(again));
        msg.replaceChildren(h("p", { class: "muted", id: "notice" }, `Delivery ${again.id} queued again (same id and body, a fresh signature).`));
      } catch (err) { msg.replaceChildren(errorBox(err)); redeliver.disabled = false; }
    } }, "Redeliver");
    const tr = h("tr", { dataset: { delivery: d.id } },
      h("td", {}, h("span", { class: "mono", title: d.id }, d.id.slice(0, 8)), h("div", { class: "muted" }, when(d.created_at))),
      h("td", { class: "mono" }, d.event),
      h("td", {}, subjectLink(d)),
      h("td", {}, badge(d.state), d.error ? h("div", { class: "error" }, d.error) : ""),
      h("td", {}, attemptsTable(d.attempts)),
      h("td", {}, redeliver));
    return tr;
  }

  async function load(append) {
    const q = new URLSearchParams({ limit: 50 });
    if (append && cursor) q.set("cursor", cursor);
    try {
      const page = await api(`${path}/deliveries?${q}`);
      const rows = page.data.map(row);
      if (append) tbody.append(...rows); else tbody.replaceChildren(...rows);
      if (!append && !rows.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No deliveries yet.")));
      cursor = page.next_cursor; more.hidden = !cursor;
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }
  more.addEventListener("click", () => load(true));
  const row2 = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/webhooks" }, "← Webhooks")),
    h("h1", {}, "Webhook ", h("span", { class: "mono" }, hook.url)),
    h("div", { class: "card" }, h("dl", { class: "facts" },
      ...row2("Id", h("span", { class: "mono" }, hook.id)),
      ...row2("Events", hook.events.join(", ")),
      ...row2("Created", `${when(hook.created_at)} by ${hook.created_by}`))),
    h("h2", {}, "Deliveries"),
    msg,
    h("table", { id: "deliveries" },
      h("thead", {}, h("tr", {}, ["Delivery", "Event", "Subject", "State", "Attempts", ""].map((t) => h("th", {}, t)))), tbody),
    h("div", { class: "pager" }, more));
  await load(false);
}
