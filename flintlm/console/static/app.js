// The console shell: sign-in, the nav, hash navigation between page modules.
// Pages are ES modules in ./pages/ exporting `{ id, title, roles, mount(root, ctx) }`; a page
// whose module fails to load, or whose roles exclude the signed-in role, gets no nav entry.

import { clear, el } from "./dom.js";

export const PAGES = ["playground", "keys", "usage", "live", "requests", "data"];
const CONSOLE_HEADER = "x-flintlm-console";

/**
 * fetch() for the console: the session cookie rides along (same origin only) with the header
 * the server requires before it accepts that cookie. An object body is sent as JSON.
 */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, credentials: "same-origin", signal,
                 headers: { [CONSOLE_HEADER]: "1", ...headers } };
  if (body !== undefined && body !== null) {
    const isRaw = typeof body === "string" || body instanceof Blob || body instanceof FormData;
    init.body = isRaw ? body : JSON.stringify(body);
    if (!isRaw) init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401 && !path.startsWith("/console/")) recheckSession();
  return response;
}

const shell = {
  identity: null,
  pages: [],  // the loaded page modules this role may see, in PAGES order
  leave: null,  // cleanup of the mounted page
  mounting: 0,  // generation of the latest navigation
};

async function whoAmI() {
  const response = await api("/console/session");
  if (!response.ok) throw new Error(`GET /console/session: HTTP ${response.status}`);
  return response.json();
}

async function loadPages(role) {
  const loaded = await Promise.allSettled(
    PAGES.map((name) => import(`./pages/${name}.js`)));
  return loaded
    .filter((result) => result.status === "fulfilled")
    .map((result) => result.value.default)
    .filter((page) => page && Array.isArray(page.roles) && page.roles.includes(role));
}

function showSignIn(reason) {
  leavePage();
  shell.identity = null;
  clear(document.getElementById("pages"));
  clear(document.getElementById("nav")).hidden = true;
  document.getElementById("whoami").textContent = "";
  document.getElementById("logout").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = reason || "";
  document.getElementById("signin-secret").focus();
}

async function showShell(identity) {
  shell.identity = identity;
  shell.pages = await loadPages(identity.role);
  document.getElementById("signin").hidden = true;
  const who = {
    admin: "admin",
    open: "open mode (no keys configured)",
    key: `key ${identity.name || ""} (${identity.prefix || identity.key_id}…)`,
  }[identity.role];
  document.getElementById("whoami").textContent = who;
  document.getElementById("logout").hidden = identity.role === "open";
  const nav = clear(document.getElementById("nav"));
  for (const page of shell.pages) {
    nav.append(el("a", { href: `#${page.id}`, "data-testid": `nav-${page.id}` }, page.title));
  }
  nav.hidden = false;
  route();
}

function leavePage() {
  shell.mounting += 1;
  const leave = shell.leave;
  shell.leave = null;
  if (leave) {
    try { leave(); } catch (error) { console.error("page cleanup failed", error); }
  }
}

async function route() {
  if (!shell.identity) return;
  const wanted = location.hash.slice(1);
  const page = shell.pages.find((p) => p.id === wanted) || shell.pages[0];
  leavePage();
  const generation = shell.mounting;
  const container = clear(document.getElementById("pages"));
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", page !== undefined && link.dataset.testid === `nav-${page.id}`);
  }
  if (!page) {
    container.append(el("p", { class: "notice" }, "Nothing to show for this sign-in."));
    return;
  }
  const root = el("section", { id: `page-${page.id}`, "data-testid": `page-${page.id}`,
                               class: "page" });
  container.append(root);
  const ctx = { api, el, role: shell.identity.role, keyId: shell.identity.key_id || null,
                identity: shell.identity };
  try {
    const leave = await page.mount(root, ctx);
    if (typeof leave !== "function") return;
    if (generation === shell.mounting) shell.leave = leave;
    else leave();  // the user left while it mounted
  } catch (error) {
    root.append(el("p", { class: "error" }, `This page failed: ${error.message || error}`));
  }
}

let rechecking = null;

/** After a 401 from the API: has the session ended (logout elsewhere, key revoked), or has
 * an open-mode server got its first key (sign-in needed from now on)? */
function recheckSession() {
  if (rechecking || !shell.identity) return;
  rechecking = whoAmI()
    .then((identity) => { if (!identity.role) showSignIn(identity.reason); })
    .catch(() => {})
    .finally(() => { rechecking = null; });
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("signin-secret");
  const error = document.getElementById("signin-error");
  error.textContent = "";
  const response = await api("/console/session", { method: "POST",
                                                   body: { secret: input.value } });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    error.textContent = (answer.error && answer.error.message) || `HTTP ${response.status}`;
    return;
  }
  input.value = "";
  await showShell(answer);
}

async function logOut() {
  await api("/console/session", { method: "DELETE" });
  location.hash = "";
  showSignIn("");
}

async function start() {
  document.getElementById("signin").addEventListener("submit", signIn);
  document.getElementById("logout").addEventListener("click", logOut);
  window.addEventListener("hashchange", route);
  try {
    const identity = await whoAmI();
    if (identity.role) await showShell(identity);
    else showSignIn(identity.reason);
  } catch (error) {
    document.getElementById("pages").append(
      el("p", { class: "error" }, `The console could not reach the server: ${error.message}`));
  }
}

start();
