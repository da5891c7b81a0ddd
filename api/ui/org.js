// Organisation settings: retention (days; empty keeps forever), the storage quota and the per-job
// transcript cap, and what the org keeps now. Every member reads them; org admins save.
import { api, atLeast, me } from "./api.js";
import { h, when, size, errorBox } from "./ui.js";

const UNITS = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

// "10G", "500M", "1048576" (K, M, G, T, P: powers of 1024, as the CLI reads them); "" is null
export function parseSize(raw, what) {
  const text = raw.trim();
  if (!text) return null;
  const m = text.match(/^(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:i?B)?|B)?$/i);
  if (!m || (m[1].includes(".") && !m[2])) throw new Error(`${what}: "${raw}" is not a size such as 1048576, 500M or 10G`);
  const n = Math.floor(Number(m[1]) * UNITS[(m[2] || "").toUpperCase()]);
  if (!Number.isSafeInteger(n)) throw new Error(`${what}: "${raw}" is too large`);
  return n;
}

// the shortest exact way to write n with a suffix (10737418240 -> "10G")
function compact(n) {
  if (n === null || n === undefined) return "";
  for (const u of ["P", "T", "G", "M", "K"]) if (n >= UNITS[u] && n % UNITS[u] === 0) return `${n / UNITS[u]}${u}`;
  return String(n);
}

function parseDays(raw, what) {
  const text = raw.trim();
  if (!text) return null;
  if (!/^\d+$/.test(text)) throw new Error(`${what}: "${raw}" is not a whole number of days`);
  return Number(text);
}

export async function orgPage(main) {
  const admin = atLeast("admin");
  const [retention, quota, usage] = await Promise.all([api("/api/org/retention"), api("/api/org/quota"), api("/api/org/usage")]);
  const msg = h("div");
  const ro = !admin;

  const dayInput = (id, value) => h("input", { id, type: "number", min: 1, max: 36500, step: 1, size: 8, value: value ?? "", placeholder: "forever", disabled: ro });
  const logs = dayInput("retention-logs", retention.logs_days);
  const artifacts = dayInput("retention-artifacts", retention.artifacts_days);
  const jobs = dayInput("retention-jobs", retention.jobs_days);
  const updated = h("p", { class: "muted", id: "retention-updated" });
  const showUpdated = (r) => { updated.textContent = r.updated_at ? `Last changed ${when(r.updated_at)} by ${r.updated_by}. Enforced by the Temporal Schedule ${r.schedule_id}.` : `Never changed: everything is kept forever. Enforced by the Temporal Schedule ${r.schedule_id}.`; };
  showUpdated(retention);

  const storage = h("input", { id: "quota-storage", size: 12, value: compact(quota.storage_bytes), placeholder: "no quota", disabled: ro, spellcheck: false });
  const cap = h("input", { id: "quota-transcript", size: 12, value: compact(quota.transcript_cap_bytes), placeholder: `default (${compact(quota.default_transcript_cap_bytes)})`, disabled: ro, spellcheck: false });
  const hint = (input) => {
    const el = h("span", { class: "muted" });
    const show = () => { try { const n = parseSize(input.value, ""); el.textContent = n === null ? "" : `= ${size(n)}`; } catch { el.textContent = "?"; } };
    input.addEventListener("input", show); show();
    return el;
  };
  const usageBox = h("div", { id: "usage" });

  function renderUsage(u) {
    const rows = [
      ["Storage (what the quota counts)", `${size(u.storage_bytes)}${u.quota_bytes !== null ? ` of ${size(u.quota_bytes)}` : " (no quota)"}`],
      ["Artifacts", `${u.artifacts} · ${size(u.artifact_bytes)}`],
      ["Log archives", size(u.log_archive_bytes)],
      ["Transcripts in Postgres (not in the quota)", size(u.transcript_bytes)],
      ["Jobs", String(u.jobs)],
    ];
    const share = u.quota_bytes ? Math.min(100, (100 * u.storage_bytes) / u.quota_bytes) : null;
    usageBox.replaceChildren(
      share !== null ? h("div", { class: "meter", title: `${share.toFixed(1)}%` },
        h("div", { class: share >= 90 ? "full" : "", style: `width:${share.toFixed(1)}%` })) : "",
      h("dl", { class: "facts" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }
  renderUsage(usage);

  async function save(what, body, after) {
    msg.replaceChildren();
    try {
      const got = await api(`/api/org/${what}`, { method: "PUT", body: body() });
      after(got);
      msg.replaceChildren(h("p", { class: "muted", id: "notice", role: "status" }, `${what === "retention" ? "Retention" : "Quota"} saved.`));
      renderUsage(await api("/api/org/usage"));
    } catch (err) { msg.replaceChildren(errorBox(err)); }
  }

  const retentionForm = h("form", { class: "card", id: "retention", novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      save("retention", () => ({ logs_days: parseDays(logs.value, "Transcripts"), artifacts_days: parseDays(artifacts.value, "Artifacts"), jobs_days: parseDays(jobs.value, "Jobs") }),
        (r) => { logs.value = r.logs_days ?? ""; artifacts.value = r.artifacts_days ?? ""; jobs.value = r.jobs_days ?? ""; showUpdated(r); });
    } },
    h("div", { class: "toolbar" },
      h("label", {}, "Transcripts (days)", logs),
      h("label", {}, "Artifacts (days)", artifacts),
      h("label", {}, "Jobs themselves (days)", jobs),
      admin ? h("button", { class: "primary", type: "submit", id: "save-retention" }, "Save retention") : ""),
    h("p", { class: "muted", style: "margin:0" }, "Days after a job ended. Empty keeps forever. Deleting a job deletes whatever it still has."),
    updated);

  const quotaForm = h("form", { class: "card", id: "quota", novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      save("quota", () => ({ storage_bytes: parseSize(storage.value, "Storage quota"), transcript_cap_bytes: parseSize(cap.value, "Transcript cap") }),
        (q) => { storage.value = compact(q.storage_bytes); cap.value = compact(q.transcript_cap_bytes); storage.dispatchEvent(new Event("input")); cap.dispatchEvent(new Event("input")); });
    } },
    h("div", { class: "toolbar" },
      h("label", {}, "Storage quota", h("span", {}, storage, " ", hint(storage))),
      h("label", {}, "Transcript cap per job", h("span", {}, cap, " ", hint(cap))),
      admin ? h("button", { class: "primary", type: "submit", id: "save-quota" }, "Save quota") : ""),
    h("p", { class: "muted", style: "margin:0" },
      "Bytes, or with K, M, G, T (powers of 1024): 500M, 10G. Empty: no quota / the deployment's default cap. ",
      "A job whose artifacts would pass the quota fails \"storage quota exceeded\" and uploads nothing; a transcript over its cap keeps its head and tail."));

  main.replaceChildren(h("h1", {}, "Organisation ", h("span", { class: "mono" }, me.org)),
    ro ? h("p", { class: "muted", id: "read-only" }, "Read-only: org admins change these settings.") : "",
    msg,
    h("h2", {}, "Retention"), retentionForm,
    h("h2", {}, "Quota"), quotaForm,
    h("h2", {}, "Usage"), h("div", { class: "card" }, usageBox));
}
