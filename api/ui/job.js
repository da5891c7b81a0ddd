// Job detail: facts, state timeline, the live log (SSE with the session cookie), artifacts, the
// frozen spec, Cancel / Run again / Delete outputs where the role allows, the Temporal UI link.
// Outputs deleted (by a person or the org's retention): the API's 410 reason where they were.
import { api, mayChange, ApiError } from "./api.js";
import { h, badge, when, duration, size, errorBox, TERMINAL } from "./ui.js";
import { ansiSpans } from "./ansi.js";
import { fromTemplate } from "./templates.js";

const MAX_LINES = 20000; // lines kept on the page; the transcript download has them all

export async function jobPage(main, id) {
  let job = await api(`/api/jobs/${encodeURIComponent(id)}`);
  const path = `/api/jobs/${encodeURIComponent(job.id)}`;
  const msg = h("div");
  const head = h("div", { class: "toolbar" });
  const facts = h("dl", { class: "facts" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const artifacts = h("div", { id: "artifacts" }, h("p", { class: "muted" }, "—"));
  const spec = h("pre", { class: "spec", id: "spec" }, "…");
  const log = h("div", { class: "log mono", id: "log", role: "log", "aria-live": "polite" });
  const streamSel = h("select", { id: "stream-filter" }, ["all", "stdout", "stderr", "output", "system"].map((s) => h("option", { value: s }, s)));
  const follow = h("input", { type: "checkbox", id: "autoscroll", checked: true });
  const liveNote = h("span", { class: "muted", id: "live" });
  const transcript = h("a", { class: "button", id: "transcript", href: `${path}/logs.txt`, download: `${job.id}.log` }, "Download transcript");
  let source = null;
  let refreshing = null;

  function renderHead() {
    const actions = [];
    if (mayChange(job)) {
      if (!TERMINAL.has(job.state) && job.state !== "cancelling") {
        actions.push(h("button", { class: "danger", id: "cancel", onclick: () => act("cancel") }, "Cancel"));
      }
      if (TERMINAL.has(job.state)) actions.push(h("button", { id: "rerun", onclick: () => act("rerun") }, "Run again"));
      if (TERMINAL.has(job.state) && !job.outputs_deleted_at) {
        actions.push(h("button", { class: "danger", id: "delete-outputs", onclick: deleteOutputs }, "Delete outputs"));
      }
    }
    head.replaceChildren(
      h("h1", { style: "flex:1" }, "Job ", h("span", { class: "mono" }, job.id), " ", badge(job.state)),
      ...actions,
      h("a", { class: "button", href: job.temporal_ui_url, target: "_blank", rel: "noopener", id: "temporal" }, "Temporal UI ↗"),
    );
    const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
    facts.replaceChildren(
      ...row("Owner", job.owner),
      ...row("Box", job.box || "—"),
      ...row("Group", job.box_group ? `${job.box_group}${job.requires.length ? ` (requires ${job.requires.join(", ")})` : ""}` : "—"),
      ...row("Created", when(job.created_at)),
      ...row("Started", when(job.started_at)),
      ...row("Finished", when(job.finished_at)),
      ...row("Duration", duration(job.started_at, job.finished_at)),
      ...row("Exit code", job.exit_code ?? "—"),
      ...row("Timeout", `${job.timeout_s}s${job.lock ? " · box locked" : ""}`),
      ...(job.waiting_reason ? row("Waiting", job.waiting_reason) : []),
      ...(job.error ? row("Error", h("span", { class: "error" }, job.error)) : []),
      ...(job.template ? row("Template", fromTemplate(job.template)) : []),
      ...(job.rerun_of ? row("Rerun of", h("a", { href: `#/jobs/${job.rerun_of}` }, job.rerun_of)) : []),
      ...(job.logs_deleted_at ? row("Transcript deleted", when(job.logs_deleted_at)) : []),
      ...(job.artifacts_deleted_at ? row("Artifacts deleted", when(job.artifacts_deleted_at)) : []),
    );
    transcript.hidden = Boolean(job.logs_deleted_at);
  }

  async function deleteOutputs() {
    if (!confirm(`Delete the transcript and the artifacts of job ${job.id}? This cannot be undone; the job itself stays.`)) return;
    msg.replaceChildren();
    try {
      await api(`${path}/outputs`, { method: "DELETE" });
      msg.replaceChildren(h("p", { class: "muted", id: "notice" }, "Outputs deleted: the transcript and the artifacts are gone."));
      await refresh();
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  // What went, in the API's own words (410: who or what deleted it, and when)
  const gone = (err) => { if (err instanceof ApiError && err.status === 410) return err.message; throw err; };
  const goneNote = (id, reason) => h("p", { class: "muted gone", id }, reason);

  async function showLogGone() {
    close("");
    let reason = "The transcript was deleted.";
    try { await api(`${path}/logs?limit=1`); } catch (err) { reason = gone(err); }
    log.replaceChildren(goneNote("log-gone", reason));
  }

  async function act(what) {
    msg.replaceChildren();
    try {
      const answer = await api(`${path}/${what}`, { method: "POST" });
      if (what === "rerun") { location.hash = `#/jobs/${answer.id}`; return; }
      job = answer; renderHead();
      const button = document.getElementById("cancel");
      if (button) { button.disabled = true; button.textContent = "Cancel requested"; }
      msg.replaceChildren(h("p", { class: "muted", id: "notice" },
        `Cancel requested: the script gets SIGTERM, then SIGKILL after ${job.cancel_grace_s} s; the job ends cancelled.`));
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  async function refresh() {
    // the job, its timeline and artifacts, again (after a state change; coalesced)
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const [j, events, arts] = await Promise.all([api(path), api(`${path}/events`),
          api(`${path}/artifacts?limit=1000`).catch((err) => ({ gone: gone(err) }))]);
        job = j; renderHead();
        if (job.logs_deleted_at && !log.querySelector("#log-gone")) await showLogGone();
        timeline.replaceChildren(...events.data.map((e) => h("li", { dataset: { state: e.to_state } },
          badge(e.to_state), " ", h("span", { class: "muted" }, when(e.at)),
          e.detail && Object.keys(e.detail).length ? h("span", { class: "muted mono" }, " ", JSON.stringify(e.detail)) : "")));
        renderArtifacts(arts);
      } catch (err) { msg.replaceChildren(errorBox(err)); }
      finally { refreshing = null; }
    })();
    return refreshing;
  }

  function renderArtifacts(arts) {
    if (arts.gone) { artifacts.replaceChildren(goneNote("artifacts-gone", arts.gone)); return; }
    if (!arts.data.length) { artifacts.replaceChildren(h("p", { class: "muted" }, TERMINAL.has(job.state) ? "No artifacts." : "None yet.")); return; }
    artifacts.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Path"), h("th", { class: "right" }, "Size"), h("th", {}, "SHA-256"))),
      h("tbody", {}, arts.data.map((a) => h("tr", {},
        h("td", {}, h("a", { href: `${path}/artifacts/${a.path.split("/").map(encodeURIComponent).join("/")}`, download: a.path.split("/").pop(), class: "mono artifact" }, a.path)),
        h("td", { class: "right" }, size(a.size)),
        h("td", { class: "mono", title: a.sha256 }, a.sha256))))),
      arts.count > arts.data.length ? h("p", { class: "muted" }, `${arts.data.length} of ${arts.count} shown`) : "");
  }

  function addLine(line) {
    const el = h("span", { class: `line ${line.stream}`, dataset: { seq: line.seq, stream: line.stream } },
      h("span", { class: "seq" }, String(line.seq)), ...ansiSpans(line.text));
    if (streamSel.value !== "all" && streamSel.value !== line.stream) el.hidden = true;
    log.append(el);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
  }

  function open() {
    if (job.logs_deleted_at) return; // nothing to follow: refresh() shows why
    // EventSource sends the session cookie (same origin) and resumes with Last-Event-ID itself
    // after a dropped connection; `done` and `revoked` end it for good.
    source = new EventSource(`${path}/logs/stream`);
    liveNote.textContent = "● live";
    let pending = [];
    let frame = 0;
    const flush = () => {
      frame = 0;
      const stick = follow.checked;
      for (const line of pending) addLine(line);
      pending = [];
      if (stick) log.scrollTop = log.scrollHeight;
    };
    source.addEventListener("log", (ev) => { pending.push(JSON.parse(ev.data)); if (!frame) frame = requestAnimationFrame(flush); });
    source.addEventListener("state", (ev) => { job.state = JSON.parse(ev.data).state; renderHead(); refresh(); });
    source.addEventListener("done", () => { flush(); close("ended"); refresh(); });
    source.addEventListener("revoked", (ev) => { close(`closed: ${JSON.parse(ev.data).reason}`); });
    source.addEventListener("dropped", () => { /* the browser reconnects after the last id it saw */ });
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) close("disconnected"); else liveNote.textContent = "reconnecting…"; };
    source.onopen = () => { liveNote.textContent = "● live"; };
  }

  function close(why) {
    if (source) { source.close(); source = null; }
    liveNote.textContent = why || "";
  }

  streamSel.addEventListener("change", () => {
    for (const el of log.children) el.hidden = streamSel.value !== "all" && el.dataset.stream !== streamSel.value;
  });
  log.addEventListener("scroll", () => {
    // scrolling up pauses auto-scroll; back at the bottom resumes it
    follow.checked = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  });

  renderHead();
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    head, msg,
    h("div", { class: "grid2" },
      h("div", { class: "card" }, facts),
      h("div", { class: "card" }, h("h2", { style: "margin-top:0" }, "Timeline"), timeline)),
    h("h2", {}, "Log"),
    h("div", { class: "toolbar" },
      h("label", {}, "Stream", streamSel),
      h("label", { class: "inline" }, follow, "auto-scroll"),
      liveNote,
      h("span", { style: "flex:1" }),
      transcript),
    log,
    h("h2", {}, "Artifacts"), artifacts,
    h("h2", {}, "Spec (frozen at submission)"), spec,
  );
  await refresh();
  api(`${path}/spec`).then((s) => { spec.textContent = JSON.stringify(s, null, 2); }).catch((err) => { spec.textContent = err.message; });
  open();
  return () => close();
}
