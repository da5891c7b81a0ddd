// Templates (docs/templates.md): the list; one template (description, params, the spec as JSON,
// its versions by ?version=N) with a Run form of one field per declared param (operators and
// admins); for org admins the trigger secret, kept out of the page until "Show" is pressed, the
// trigger URL and Rotate.
import { api, atLeast } from "./api.js";
import { h, when, errorBox } from "./ui.js";

export const templateHref = (name, version) => `#/templates/${encodeURIComponent(name)}${version ? `?version=${version}` : ""}`;

// "from template flash v3" for a job or pipeline made from one (its `template` mark), else null
export function fromTemplate(mark) {
  if (!mark || !mark.name) return null;
  return h("span", { id: "from-template" }, "from template ",
    h("a", { href: templateHref(mark.name, mark.version) }, `${mark.name} v${mark.version}`));
}

function paramText(p) {
  const bits = [p.type];
  if (p.choices) bits.push(`[${p.choices.join(" | ")}]`);
  if (p.default !== null && p.default !== undefined) bits.push(`default ${JSON.stringify(p.default)}`);
  else if (p.required !== false) bits.push("required");
  return bits.join(" · ");
}

const isRequired = (p) => (p.required ?? (p.default === null || p.default === undefined));

// One field per declared param, typed: choice → select, bool → checkbox, int → number, string →
// text. Returns { fields: [label elements], values(): the params to send } (a field left empty
// is not sent: the API applies the default or names the missing param).
export function paramFields(params) {
  const inputs = Object.entries(params).map(([name, p]) => {
    const attrs = { name: `param-${name}`, id: `param-${name}`, dataset: { param: name } };
    let input;
    if (p.type === "choice") {
      const options = p.choices.map((c) => h("option", { value: c, selected: p.default === c }, c));
      if (p.default === null || p.default === undefined) options.unshift(h("option", { value: "" }, isRequired(p) ? "— pick one —" : "(none)"));
      input = h("select", attrs, options);
    } else if (p.type === "bool") {
      input = h("input", { ...attrs, type: "checkbox", checked: p.default === true });
    } else if (p.type === "int") {
      input = h("input", { ...attrs, type: "number", step: 1, size: 8, value: p.default ?? "", required: isRequired(p) });
    } else {
      input = h("input", { ...attrs, type: "text", size: 32, value: p.default ?? "", required: isRequired(p) });
    }
    return { name, p, input };
  });
  const fields = inputs.map(({ name, p, input }) => p.type === "bool"
    ? h("label", { class: "inline", title: p.description || "" }, input, name)
    : h("label", { title: p.description || "" }, `${name}${isRequired(p) ? " *" : ""}`, input));
  function values() {
    const out = {};
    for (const { name, p, input } of inputs) {
      if (p.type === "bool") { out[name] = input.checked; continue; }
      if (input.value === "") continue;
      if (p.type === "int") {
        if (!/^[+-]?\d+$/.test(input.value.trim())) throw new Error(`${name}: a whole number`);
        out[name] = Number(input.value);
      } else out[name] = input.value;
    }
    return out;
  }
  return { fields, values };
}

export async function templatesPage(main) {
  const tbody = h("tbody");
  const found = (await api("/api/templates")).data;
  tbody.replaceChildren(...found.map((t) => h("tr", { class: "clickable", dataset: { template: t.name }, onclick: () => { location.hash = templateHref(t.name); } },
    h("td", {}, h("a", { href: templateHref(t.name) }, h("strong", {}, t.name))),
    h("td", {}, t.kind),
    h("td", {}, `v${t.latest_version}`),
    h("td", { class: "mono" }, Object.keys(t.params).join(", ") || "—"),
    h("td", {}, t.description),
    h("td", {}, `${when(t.updated_at)} by ${t.updated_by}`))));
  if (!found.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No templates. Put one with PUT /api/templates/{name} or `boxrun template put NAME -f FILE`.")));
  main.replaceChildren(h("h1", {}, "Templates"),
    h("p", { class: "muted" }, "Presets of a job or a pipeline with params; run them here, from CI (signed triggers) or on a schedule."),
    h("table", { id: "templates" },
      h("thead", {}, h("tr", {}, ["Template", "Kind", "Version", "Params", "Description", "Updated"].map((x) => h("th", {}, x)))), tbody));
}

function triggerCard(t) {
  // The secret stays in this closure until "Show": never in the page's HTML before that.
  let secret = t.trigger_secret;
  const url = `${location.origin}/api/templates/${encodeURIComponent(t.name)}/trigger`;
  const slot = h("span", { id: "trigger-secret-slot", class: "muted" }, "hidden");
  const msg = h("div");
  const show = h("button", { type: "button", id: "show-secret", onclick: () => {
    if (slot.dataset.shown) { slot.dataset.shown = ""; slot.replaceChildren("hidden"); slot.className = "muted"; show.textContent = "Show"; return; }
    slot.dataset.shown = "1";
    slot.className = "";
    slot.replaceChildren(h("input", { id: "trigger-secret", class: "mono", readonly: true, size: 52, value: secret, onfocus: (ev) => ev.target.select() }));
    show.textContent = "Hide";
  } }, "Show");
  const rotate = h("button", { type: "button", class: "danger", id: "rotate-secret", onclick: async () => {
    if (!confirm(`Rotate the trigger secret of ${t.name}? CI webhooks signed with the old one are refused from now on.`)) return;
    msg.replaceChildren();
    try {
      secret = (await api(`/api/templates/${encodeURIComponent(t.name)}/trigger-secret`, { method: "POST" })).trigger_secret;
      if (slot.dataset.shown) slot.querySelector("input").value = secret;
      msg.replaceChildren(h("p", { class: "muted", id: "notice" }, "A new trigger secret: give it to the CI webhook."));
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  } }, "Rotate");
  return h("div", { class: "card", id: "trigger", style: "margin-top:1rem" },
    h("h2", { style: "margin-top:0" }, "CI trigger (admins)"),
    h("dl", { class: "facts" },
      h("dt", {}, "URL"), h("dd", {}, h("code", { id: "trigger-url" }, url)),
      h("dt", {}, "Secret"), h("dd", {}, h("div", { class: "toolbar", style: "margin:0" }, slot, show, rotate))),
    h("p", { class: "muted" }, "GitHub: Secret = the trigger secret (X-Hub-Signature-256). GitLab: Secret token = the trigger secret (X-Gitlab-Token). See docs/templates.md for the params a payload fills."),
    msg);
}

export async function templatePage(main, ref) {
  // the route's part after #/templates/: NAME or NAME?version=N
  const [name, query] = ref.split("?");
  const version = new URLSearchParams(query || "").get("version");
  const q = version ? `?version=${encodeURIComponent(version)}` : "";
  const t = await api(`/api/templates/${encodeURIComponent(name)}${q}`);
  const versions = h("select", { id: "version", onchange: (ev) => { location.hash = templateHref(t.name, ev.target.value === String(t.latest_version) ? null : ev.target.value); } },
    Array.from({ length: t.latest_version }, (_, i) => t.latest_version - i).map((v) => h("option", { value: v, selected: v === t.version }, `v${v}${v === t.latest_version ? " (latest)" : ""}`)));
  const params = Object.entries(t.params);
  const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  const parts = [
    h("p", {}, h("a", { href: "#/templates" }, "← Templates")),
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1" }, "Template ", h("span", { class: "mono" }, t.name), " ", h("span", { class: "muted" }, `v${t.version}`)),
      h("label", {}, "Version", versions)),
    h("div", { class: "card" }, h("dl", { class: "facts" },
      ...row("Description", t.description || "—"),
      ...row("Kind", t.kind),
      ...row("This version", `${when(t.version_created_at)} by ${t.version_created_by}`),
      ...row("Created", `${when(t.created_at)} by ${t.created_by}`))),
    h("h2", {}, "Params"),
    h("table", { id: "params" }, h("thead", {}, h("tr", {}, ["Param", "Type", "Description"].map((x) => h("th", {}, x)))),
      h("tbody", {}, params.length ? params.map(([n, p]) => h("tr", { dataset: { param: n } }, h("td", { class: "mono" }, n), h("td", {}, paramText(p)), h("td", {}, p.description || "")))
        : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No params.")))),
  ];
  if (atLeast("operator")) {
    const { fields, values } = paramFields(t.params);
    const msg = h("div");
    const submit = h("button", { class: "primary", type: "submit", id: "run" }, `Run v${t.version}`);
    parts.push(h("h2", {}, "Run"), h("form", { class: "card", id: "run-form", onsubmit: async (ev) => {
      ev.preventDefault();
      msg.replaceChildren();
      submit.disabled = true;
      try {
        const made = await api(`/api/templates/${encodeURIComponent(t.name)}/run`, { method: "POST", body: { params: values(), version: t.version } });
        location.hash = made.kind === "job" ? `#/jobs/${made.job.id}` : `#/pipelines/${made.pipeline.id}`;
      } catch (err) { msg.replaceChildren(errorBox(err)); }
      finally { submit.disabled = false; }
    } }, h("div", { class: "toolbar" }, fields.length ? fields : h("span", { class: "muted" }, "No params to give.")), h("div", {}, submit), msg));
  }
  parts.push(h("h2", {}, t.kind === "job" ? "Job" : "Pipeline"),
    h("pre", { class: "spec", id: "spec" }, JSON.stringify(t.job ?? t.pipeline, null, 2)));
  if (atLeast("admin") && t.trigger_secret) parts.push(triggerCard(t));
  main.replaceChildren(...parts);
}
