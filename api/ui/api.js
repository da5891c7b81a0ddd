// The API from the page: same origin, the session cookie, the CSRF header on state changes.
let csrf = null;
export let me = null;

export class ApiError extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

export function setSession(session) { csrf = session ? session.csrf_token : null; me = session ? session.user : null; }

export async function api(path, { method = "GET", body, raw, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD" && csrf) init.headers["X-CSRF-Token"] = csrf;
  if (raw !== undefined) { init.body = raw; init.headers["Content-Type"] ||= "application/octet-stream"; }
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const resp = await fetch(path, init);
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const reason = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && path !== "/api/session") window.dispatchEvent(new CustomEvent("boxrun:signed-out", { detail: reason }));
    throw new ApiError(resp.status, reason);
  }
  return data;
}

// Role checks as the API makes them (docs/access.md): viewers read, operators submit and
// cancel or rerun their own jobs, admins everything in their org.
const RANK = { viewer: 0, operator: 1, admin: 2 };
export function atLeast(role) { return me && RANK[me.role] >= RANK[role]; }
export function mayChange(job) { return atLeast("admin") || (atLeast("operator") && job.owner === me.name); }
