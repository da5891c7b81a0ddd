// Pipelines: the list, and a detail page drawing the DAG in SVG with live step states (SSE) and
// links to each attempt's job.
import { api } from "./api.js";
import { h, badge, ago, duration, when, errorBox, TERMINAL } from "./ui.js";
import { fromTemplate } from "./templates.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 180, H = 44, GAP_X = 70, GAP_Y = 24, PAD = 20;

export async function pipelinesPage(main) {
  const tbody = h("tbody");
  const msg = h("div");
  async function load() {
    try {
      const page = await api("/api/pipelines?limit=100");
      tbody.replaceChildren(...page.data.map((p) => h("tr", { class: "clickable", onclick: () => { location.hash = `#/pipelines/${p.id}`; } },
        h("td", {}, h("a", { href: `#/pipelines/${p.id}` }, p.name || p.id.slice(0, 8))), h("td", {}, badge(p.state)),
        h("td", {}, p.owner), h("td", { title: p.created_at }, ago(p.created_at)), h("td", {}, duration(p.started_at, p.finished_at)))));
      if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No pipelines yet.")));
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }
  main.replaceChildren(h("h1", {}, "Pipelines"), msg,
    h("table", { id: "pipelines" }, h("thead", {}, h("tr", {}, ["Pipeline", "State", "Owner", "Created", "Duration"].map((t) => h("th", {}, t)))), tbody));
  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

function layout(steps) {
  // column = longest path from a root; rows in stored (topological) order
  const col = {};
  for (const s of steps) col[s.name] = Math.max(0, ...s.needs.map((n) => (col[n] ?? 0) + 1));
  const rows = {};
  const pos = {};
  for (const s of steps) { const c = col[s.name]; rows[c] = (rows[c] ?? -1) + 1; pos[s.name] = { x: PAD + c * (W + GAP_X), y: PAD + rows[c] * (H + GAP_Y) }; }
  const width = PAD * 2 + (Math.max(0, ...Object.values(col)) + 1) * (W + GAP_X) - GAP_X;
  const height = PAD * 2 + (Math.max(0, ...Object.values(rows)) + 1) * (H + GAP_Y) - GAP_Y;
  return { pos, width, height };
}

export async function pipelinePage(main, id) {
  let p = await api(`/api/pipelines/${encodeURIComponent(id)}`);
  const msg = h("div");
  const head = h("div", { class: "toolbar" });
  const dag = h("div", { class: "dag", id: "dag" });
  const steps = h("tbody");
  let source = null;

  function render() {
    head.replaceChildren(h("h1", { style: "flex:1" }, p.name || "Pipeline", " ", h("span", { class: "mono muted" }, p.id.slice(0, 8)), " ", badge(p.state)),
      h("a", { class: "button", href: p.temporal_ui_url, target: "_blank", rel: "noopener" }, "Temporal UI ↗"));
    const { pos, width, height } = layout(p.steps);
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "pipeline steps" },
      svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9ca3af" }))));
    for (const s of p.steps) for (const n of s.needs) {
      const a = pos[n], b = pos[s.name];
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      root.append(svg("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}` }));
    }
    for (const s of p.steps) {
      const { x, y } = pos[s.name];
      const label = s.name.length > 24 ? `${s.name.slice(0, 23)}…` : s.name;
      const node = svg("g", { class: `node ${s.state}`, "data-step": s.name, "data-state": s.state, transform: `translate(${x},${y})` },
        svg("title", {}, `${s.name}: ${s.state}`),
        svg("rect", { width: W, height: H, rx: 6 }),
        svg("text", { x: 10, y: 18, "font-weight": "600" }, label),
        svg("text", { x: 10, y: 34, fill: "#4b5563" }, `${s.state}${s.attempts.length > 1 ? ` · attempt ${s.attempts.length}` : ""}`));
      const link = s.job_id ? svg("a", { href: `#/jobs/${s.job_id}` }, node) : node;
      root.append(link);
    }
    dag.replaceChildren(root);
    steps.replaceChildren(...p.steps.map((s) => h("tr", {},
      h("td", {}, s.name), h("td", {}, badge(s.state)), h("td", {}, s.needs.join(", ") || "—"),
      h("td", {}, s.attempts.map((a) => h("div", {}, h("a", { href: `#/jobs/${a.job_id}`, class: "mono" }, `#${a.attempt} ${a.job_id.slice(0, 8)}`), " ", badge(a.state), a.error ? h("span", { class: "muted" }, ` ${a.error}`) : ""))),
      h("td", { class: "muted" }, s.error || s.reused_from ? (s.error || `reused from ${s.reused_from.slice(0, 8)}`) : ""))));
  }

  async function refresh() { try { p = await api(`/api/pipelines/${encodeURIComponent(p.id)}`); render(); } catch (err) { msg.replaceChildren(errorBox(err)); } }

  render();
  main.replaceChildren(h("p", {}, h("a", { href: "#/pipelines" }, "← Pipelines")), head, msg,
    h("p", { class: "muted" }, `Created ${when(p.created_at)} by ${p.owner}`, p.template ? [" · ", fromTemplate(p.template)] : "", p.error ? h("span", { class: "error" }, ` · ${p.error}`) : ""),
    dag, h("h2", {}, "Steps"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Step", "State", "Needs", "Attempts", ""].map((t) => h("th", {}, t)))), steps));
  if (!TERMINAL.has(p.state) && p.state !== "cancelled" && p.state !== "timed_out") {
    source = new EventSource(`/api/pipelines/${encodeURIComponent(p.id)}/events`);
    source.addEventListener("step", (ev) => {
      const e = JSON.parse(ev.data);
      const s = p.steps.find((x) => x.name === e.step);
      if (s) { s.state = e.state; render(); }
      refresh();
    });
    source.addEventListener("pipeline", () => refresh());
    source.addEventListener("done", () => { source.close(); source = null; refresh(); });
    source.addEventListener("revoked", () => { source.close(); source = null; });
  }
  return () => { if (source) source.close(); };
}
