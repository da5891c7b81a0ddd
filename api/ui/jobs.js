// Jobs: filters (state, box, owner, mine), a page of jobs, state badges kept live by polling.
import { api, me } from "./api.js";
import { h, badge, ago, duration, errorBox } from "./ui.js";

const STATES = ["", "queued", "dispatched", "running", "cancelling", "succeeded", "failed", "cancelled", "timed_out", "lost", "unschedulable"];
const PAGE = 50;
const POLL_MS = 3000;

export async function jobsPage(main) {
  const params = new URLSearchParams(location.search);
  const state = h("select", { name: "state" }, STATES.map((s) => h("option", { value: s }, s || "any state")));
  const box = h("input", { name: "box", placeholder: "box", size: 12 });
  const owner = h("input", { name: "owner", placeholder: "owner", size: 12 });
  const mine = h("input", { type: "checkbox", name: "mine" });
  state.value = params.get("state") || "";
  const tbody = h("tbody");
  const status = h("div");
  let offset = 0;
  const prev = h("button", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "← Newer");
  const next = h("button", { type: "button", onclick: () => { offset += PAGE; load(); } }, "Older →");
  const pageInfo = h("span", { class: "muted" });

  function query() {
    const q = new URLSearchParams({ limit: PAGE, offset });
    if (state.value) q.set("state", state.value);
    if (box.value.trim()) q.set("box", box.value.trim());
    const who = mine.checked ? me.name : owner.value.trim();
    if (who) q.set("owner", who);
    return q;
  }

  function row(job) {
    return h("tr", { class: "clickable", dataset: { job: job.id }, onclick: () => { location.hash = `#/jobs/${job.id}`; } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id.slice(0, 8))),
      h("td", {}, badge(job.state)),
      h("td", {}, job.box || (job.box_group ? `group ${job.box_group}` : "—")),
      h("td", {}, job.owner),
      h("td", { title: job.created_at }, ago(job.created_at)),
      h("td", {}, duration(job.started_at, job.finished_at)),
      h("td", { class: "right" }, job.exit_code ?? ""),
    );
  }

  let seq = 0;
  async function load() {
    const mySeq = ++seq;
    try {
      const page = await api(`/api/jobs?${query()}`);
      if (mySeq !== seq) return;
      tbody.replaceChildren(...page.data.map(row));
      if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs match.")));
      pageInfo.textContent = page.count ? `${offset + 1}–${offset + page.data.length} of ${page.count}` : "";
      prev.disabled = offset === 0;
      next.disabled = offset + page.data.length >= page.count;
      status.replaceChildren();
    } catch (err) { if (mySeq === seq) status.replaceChildren(errorBox(err)); }
  }

  const form = h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); offset = 0; load(); } },
    h("label", {}, "State", state), h("label", {}, "Box", box), h("label", {}, "Owner", owner),
    h("label", { class: "inline" }, mine, "mine"),
    h("button", { type: "submit" }, "Filter"),
  );
  for (const el of [state, mine]) el.addEventListener("change", () => { offset = 0; load(); });

  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1" }, "Jobs"), h("a", { class: "button", href: "#/new" }, "New job")),
    form, status,
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "State", "Box", "Owner", "Created", "Duration", "Exit"].map((t) => h("th", {}, t)))),
      tbody),
    h("div", { class: "pager" }, prev, next, pageInfo),
  );
  await load();
  const timer = setInterval(load, POLL_MS); // the list has no stream: a light poll keeps badges live
  return () => clearInterval(timer);
}
