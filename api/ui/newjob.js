// New job: a box picker (only boxes the user may use: GET /api/boxes answers exactly those),
// or a group with capabilities; the script; files (uploaded by POST /api/files, referenced by
// SHA-256); env; timeout; lock.
import { api, atLeast } from "./api.js";
import { h, errorBox } from "./ui.js";

async function sha256Hex(buf) {
  if (!crypto.subtle) return null; // only in secure contexts (https, localhost)
  const digest = await crypto.subtle.digest("SHA-256", buf);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function newJobPage(main) {
  if (!atLeast("operator")) {
    main.replaceChildren(h("h1", {}, "New job"), h("p", { class: "muted" }, "Submitting needs the operator role."));
    return;
  }
  const boxes = (await api("/api/boxes")).data;
  const groups = [...new Set(boxes.flatMap((b) => b.groups))].sort();
  const target = h("select", { name: "target", id: "box" },
    h("optgroup", { label: "Box" }, boxes.map((b) => h("option", { value: `box:${b.name}` }, `${b.name} (${b.status}${b.maintenance ? ", maintenance" : ""})`))),
    groups.length ? h("optgroup", { label: "Group" }, groups.map((g) => h("option", { value: `group:${g}` }, `group ${g}`))) : null);
  const requires = h("input", { name: "requires", placeholder: "gpu, usb (group only)", size: 24 });
  const script = h("textarea", { name: "script", id: "script", rows: 14, cols: 90, spellcheck: false, required: true }, "#!/bin/sh\necho hello from boxrun\n");
  const files = h("input", { type: "file", name: "files", id: "files", multiple: true });
  const env = h("textarea", { name: "env", id: "env", rows: 3, cols: 40, placeholder: "KEY=value, one a line" });
  const timeout = h("input", { type: "number", name: "timeout_s", id: "timeout", value: 3600, min: 1, size: 8 });
  const lock = h("input", { type: "checkbox", name: "lock", id: "lock" });
  const msg = h("div");
  const submit = h("button", { class: "primary", type: "submit", id: "submit" }, "Submit");

  async function onSubmit(ev) {
    ev.preventDefault();
    msg.replaceChildren();
    submit.disabled = true;
    try {
      const body = { script: script.value, timeout_s: Number(timeout.value), lock: lock.checked };
      const [kind, name] = target.value.split(/:(.*)/s);
      if (kind === "box") body.box = name; else body.box_group = name;
      const caps = requires.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (caps.length) body.requires = caps;
      const vars = {};
      for (const line of env.value.split("\n")) {
        if (!line.trim()) continue;
        const i = line.indexOf("=");
        if (i < 1) throw new Error(`env line "${line}" is not KEY=value`);
        vars[line.slice(0, i).trim()] = line.slice(i + 1);
      }
      if (Object.keys(vars).length) body.env = vars;
      if (files.files.length) {
        body.files = {};
        for (const f of files.files) {
          const buf = await f.arrayBuffer();
          const sha = await sha256Hex(buf);
          if (sha === null) { body.files[f.name] = new TextDecoder().decode(buf); continue; } // plain http: inline text
          msg.replaceChildren(h("p", { class: "muted" }, `uploading ${f.name}…`));
          body.files[f.name] = await api(`/api/files?sha256=${sha}`, { method: "POST", raw: buf });
        }
      }
      const job = await api("/api/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) { msg.replaceChildren(errorBox(err)); }
    finally { submit.disabled = false; }
  }

  main.replaceChildren(h("h1", {}, "New job"),
    boxes.length ? "" : h("p", { class: "muted" }, "No box you may use is registered."),
    h("form", { class: "card", id: "new-job", onsubmit: onSubmit, style: "display:flex;flex-direction:column;gap:.8rem" },
      h("div", { class: "toolbar" }, h("label", {}, "Run on", target), h("label", {}, "Requires (group)", requires)),
      h("label", {}, "Script", script),
      h("div", { class: "toolbar" },
        h("label", {}, "Files (into the workspace)", files),
        h("label", {}, "Environment", env),
        h("label", {}, "Timeout (s)", timeout),
        h("label", { class: "inline" }, lock, "lock the box (run alone)")),
      h("div", {}, submit), msg));
}
