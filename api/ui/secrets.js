// Secrets (operators and admins list the names; admins set and delete). A value goes in through a
// password field and is never fetched, echoed or rendered: the API has no route that answers one.
import { api, atLeast } from "./api.js";
import { h, when, errorBox } from "./ui.js";

const NAME = /^[A-Z_][A-Z0-9_]{0,127}$/;

export async function secretsPage(main) {
  if (!atLeast("operator")) {
    main.replaceChildren(h("h1", {}, "Secrets"), h("p", { class: "muted", id: "needs-role" }, "Secret names are listed to operators and admins."));
    return;
  }
  const admin = atLeast("admin");
  const tbody = h("tbody");
  const msg = h("div");

  async function load() {
    const found = (await api("/api/secrets")).data;
    tbody.replaceChildren(...found.map((s) => h("tr", { dataset: { secret: s.name } },
      h("td", { class: "mono" }, s.name),
      h("td", {}, when(s.updated_at)),
      h("td", {}, s.updated_by),
      h("td", {}, when(s.created_at)),
      h("td", {}, admin ? h("button", { type: "button", class: "danger delete", onclick: () => remove(s.name) }, "Delete") : ""))));
    if (!found.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No secrets.")));
  }

  async function remove(name) {
    if (!confirm(`Delete secret ${name}? A job that refers to it and has not started yet will fail at its claim.`)) return;
    msg.replaceChildren();
    try { await api(`/api/secrets/${encodeURIComponent(name)}`, { method: "DELETE" }); await load(); }
    catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  let form = "";
  if (admin) {
    const name = h("input", { name: "name", id: "secret-name", placeholder: "DB_PASSWORD", size: 28, required: true, autocomplete: "off", spellcheck: false });
    const value = h("input", { type: "password", name: "value", id: "secret-value", size: 40, required: true, autocomplete: "new-password" });
    const save = h("button", { class: "primary", type: "submit", id: "save-secret" }, "Save");
    form = h("form", { class: "card", id: "set-secret", style: "display:flex;flex-direction:column;gap:.8rem", onsubmit: async (ev) => {
      ev.preventDefault();
      msg.replaceChildren();
      const key = name.value.trim();
      if (!NAME.test(key)) { msg.replaceChildren(errorBox(new Error("a name is A-Z, 0-9 and _, not starting with a digit, at most 128"))); return; }
      save.disabled = true;
      try {
        await api(`/api/secrets/${encodeURIComponent(key)}`, { method: "PUT", body: { value: value.value } });
        msg.replaceChildren(h("p", { class: "muted", id: "notice", role: "status" }, `Secret ${key} saved. Its value is not shown again.`));
        name.value = "";
        await load();
      } catch (err) { msg.replaceChildren(errorBox(err)); }
      finally { value.value = ""; save.disabled = false; } // the value leaves the page either way
    } },
      h("div", { class: "toolbar" }, h("label", {}, "Name", name), h("label", {}, "Value (never shown again)", value), save),
      h("p", { class: "muted", style: "margin:0" }, "Saving a name that exists replaces its value. A job's env uses it as ${{ secrets.NAME }}; the box masks it as *** in the transcript."));
  }

  main.replaceChildren(h("h1", {}, "Secrets"),
    h("p", { class: "muted" }, "Names only: values are stored encrypted and never leave the API except to the box that runs a job using them."),
    msg,
    h("table", { id: "secrets" },
      h("thead", {}, h("tr", {}, ["Name", "Updated", "By", "Created", ""].map((t) => h("th", {}, t)))), tbody),
    ...(admin ? [h("h2", {}, "Set a secret"), form] : []));
  await load();
}
