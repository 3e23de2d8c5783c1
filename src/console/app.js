// walletd operator console (served at /ui, embedded in the binary; no build step).
// Token scheme (docs/security.md): the page asks for an admin token, keeps it in this tab's
// sessionStorage and sends it as `Authorization: Bearer` on its fetch calls to the JSON API.
// `/ui#token=T` (and `&account=A`) is accepted for scripted use: the token is moved to
// sessionStorage and removed from the address bar at once.
"use strict";

const TOKEN_KEY = "walletd-console-token";
const POLL_MS = 1500;
const COMPENSATIONS_SHOWN = 15;
const FEED_PAGE = 1000;
const FEED_PAGES_PER_POLL = 20;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes: never HTML). */
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function fragmentParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function takeTokenFromFragment() {
  const p = fragmentParams();
  const t = p.get("token");
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    p.delete("token");
    const rest = p.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path) {
  const r = await fetch(path, {
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    body = null;
  }
  if (!r.ok) {
    const err = (body && body.error) || {};
    throw new HttpError(r.status, err.code || "http_" + r.status, err.message || r.statusText);
  }
  return body;
}

// ---- state kept between polls ----
const feed = { cursor: null, latest: [], total: 0 };
let account = fragmentParams().get("account") || "";
let timer = null;
// Bumped by every restart and by the token form: a poll still in flight from before then
// renders nothing and schedules nothing.
let generation = 0;

function showLogin(message) {
  generation++;
  $("main").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setLive("idle", "not connected");
  if (timer) clearTimeout(timer);
  timer = null;
}

function setLive(state, text) {
  const l = $("live");
  l.dataset.state = state;
  l.textContent = text;
}

function yesNo(v, good) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "—");
  const ok = v === good;
  return h("span", { class: ok ? "ok" : "bad" }, v ? "yes" : "no");
}

function hlcMs(hlc) {
  if (typeof hlc !== "string") return null;
  const ms = Number(hlc.split(".")[0]);
  return Number.isFinite(ms) ? ms : null;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 2 * 3600000) return Math.round(ms / 60000) + " min";
  if (ms < 2 * 86400000) return Math.round(ms / 3600000) + " h";
  return Math.round(ms / 86400000) + " days";
}

function card(key, value, cls, field) {
  return h("div", { class: "card", "data-field": field },
    h("div", { class: "k" }, key), h("div", { class: "v " + (cls || "") }, value));
}

/** Why settlement is blocked or waiting, from /v1/status and /v1/admin/evidence:
 *  [css class, text, whether it holds settlement back]. */
function reasons(st, evidence) {
  const out = [];
  if (st.storage_failed) out.push(["bad", "storage failed: this region answers 503 and exits (code 70)", true]);
  if (st.restoring) out.push(["warn", "restoring this region's history from its peers", true]);
  for (const m of st.members || []) {
    if (m.self) continue;
    if (m.policy_matches === false)
      out.push(["bad", `policy mismatch: ${m.region} was first started with another seed policy`, true]);
    if (m.equivocated) out.push(["bad", `equivocation: ${m.region} broke the protocol (evidence below)`, true]);
    if (!m.connected) out.push(["warn", `waiting for ${m.region}: not connected`, true]);
    else if (!m.heard) out.push(["warn", `waiting for ${m.region}: no heartbeat heard yet`, true]);
  }
  for (const e of (evidence && evidence.evidence) || [])
    out.push(["bad", `evidence ${e.kind} against ${e.origin} (${e.id})`, true]);
  if (st.policy_file_ignored)
    out.push(["muted", "note: the policy file differs from the recorded seed policy (the recorded one is in force)", false]);
  return out;
}

function renderStatus(st, evidence) {
  $("region-name").textContent = "region " + st.region;
  $("cluster-name").textContent = "cluster " + st.cluster;
  document.title = "walletd " + st.region;
  const lag = st.settlement_lag_ms;
  const blocked = !!st.settlement_blocked;
  const rs = reasons(st, evidence);
  const waiting = !blocked && rs.some(([, , holds]) => holds);
  const state = blocked ? "blocked" : waiting ? "waiting" : "flowing";
  const s = $("settlement");
  s.dataset.state = state;
  s.replaceChildren(
    card("settlement", state, blocked ? "bad" : waiting ? "warn" : "ok", "settlement"),
    // A watermark of 0 means nothing has settled since this region started its history.
    card("settlement lag", hlcMs(st.watermark) === 0 ? "nothing settled yet" : fmtMs(lag),
      lag > 5000 ? "warn" : "", "lag"),
    card("watermark", st.watermark, "mono", "watermark"),
    card("clock", st.clock, "mono", "clock"),
    card("events", st.events, "", "events"),
    card("compensations", st.compensations, "", "compensations"),
    card("policy version", st.policy_version, "", "policy-version"),
  );
  $("reasons").replaceChildren(...rs.map(([cls, text]) => h("li", { class: cls, "data-reason": "" }, text)));

  const clock = hlcMs(st.clock);
  const rows = (st.members || []).map((m) => {
    const contrib = hlcMs(m.watermark_contribution);
    const behind = clock !== null && contrib !== null ? Math.max(0, clock - contrib) : null;
    const conn = m.self ? h("span", { class: "ok" }, "this region")
      : m.connected ? h("span", { class: "ok" }, "connected") : h("span", { class: "bad" }, "disconnected");
    return h("tr", { "data-region": m.region, "data-connected": String(!!m.connected), "data-heard": String(!!m.heard) },
      h("td", {}, h("b", {}, m.region)),
      h("td", {}, conn),
      h("td", {}, yesNo(m.heard, true)),
      h("td", { class: "num" }, m.held),
      h("td", { class: "mono" }, m.watermark_contribution || "—"),
      h("td", { class: "num" + (behind > 5000 ? " warn" : "") }, fmtMs(behind)),
      h("td", {}, m.policy_matches === null ? h("span", { class: "muted" }, "—")
        : m.policy_matches ? h("span", { class: "ok" }, "matches") : h("span", { class: "bad" }, "MISMATCH")),
      h("td", {}, m.equivocated ? h("span", { class: "bad" }, "EQUIVOCATED") : h("span", { class: "ok" }, "ok")),
      h("td", { class: "num" }, m.pending),
    );
  });
  $("regions").tBodies[0].replaceChildren(...rows);
}

function renderPolicy(p) {
  const d = p.policy && p.policy.default;
  const fee = d && d.fee;
  const summary = d
    ? `${d.action} beyond overdraft line ${d.overdraft_line}` +
      (fee ? `; fee flat ${fee.flat} + ${fee.percent}% (min ${fee.minimum}, cap ${fee.cap}, grace ${fee.grace}) per ${fee.per}` : "") +
      `; reversible: ${(d.reversible || []).join(", ") || "none"}; ${(p.policy.rule || []).length} currency rule(s)`
    : "";
  const hist = h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "version"), h("th", {}, "hash"), h("th", {}, "origin"), h("th", {}, "event"), h("th", {}, "hlc"))),
    h("tbody", {}, (p.history || []).map((v) => h("tr", { "data-version": v.version },
      h("td", { class: "num" }, v.version), h("td", { class: "mono" }, (v.hash || "").slice(0, 16) + "…"),
      h("td", {}, v.origin || "seed"), h("td", {}, v.event || "—"), h("td", { class: "mono" }, v.hlc || "—")))));
  $("policy").replaceChildren(
    h("p", { id: "policy-summary", "data-version": p.version },
      h("b", {}, `version ${p.version}`), " ", h("span", { class: "mono muted" }, (p.hash || "").slice(0, 16) + "…"), " — ", summary),
    hist);
}

/** Reads the compensation feed from where the last poll stopped; keeps the latest entries.
 *  One read at a time: a poll started while another reads waits for that read. */
let feedRead = null;
function pollFeed() {
  if (!feedRead) feedRead = readFeed().finally(() => { feedRead = null; });
  return feedRead;
}

async function readFeed() {
  for (let i = 0; i < FEED_PAGES_PER_POLL; i++) {
    const q = `/v1/compensations?limit=${FEED_PAGE}` + (feed.cursor ? `&after=${encodeURIComponent(feed.cursor)}` : "");
    const page = await api(q);
    const list = page.compensations || [];
    feed.latest = feed.latest.concat(list).slice(-COMPENSATIONS_SHOWN);
    feed.total += list.length;
    if (page.next) feed.cursor = page.next;
    if (list.length < FEED_PAGE) break;
  }
}

function signed(c) {
  return `${c.delta || c.amount || ""} ${c.currency || ""}`.trim();
}

function renderFeed() {
  $("comp-count").textContent = `(${feed.total} in the feed)`;
  const rows = feed.latest.slice().reverse().map((c) => h("tr", { "data-id": c.id },
    h("td", { class: "num" }, c.position), h("td", { class: "mono" }, c.id), h("td", {}, c.type),
    h("td", {}, c.account), h("td", { class: "num" }, signed(c)), h("td", { class: "mono" }, c.cause || "—"),
    h("td", { class: "num" }, c.policy_version), h("td", {}, c.status)));
  $("compensations").tBodies[0].replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "none yet"))]));
}

async function pollAccount() {
  if (!account) return null;
  const a = encodeURIComponent(account);
  const [bal, txs] = await Promise.all([
    api(`/v1/accounts/${a}/balances`),
    api(`/v1/accounts/${a}/transactions?limit=1000`),
  ]);
  return { bal, txs };
}

function statusCell(t) {
  const cls = t.status === "settled" ? "ok" : t.status === "reversed" ? "bad" : "warn";
  return h("span", { class: cls }, t.status);
}

function renderAccount(r) {
  const box = $("account");
  if (!account) {
    box.replaceChildren(h("p", { class: "muted" }, "Enter an account id."));
    return;
  }
  if (!r) return;
  const balances = h("table", { id: "balances" },
    h("thead", {}, h("tr", {}, h("th", {}, "currency"), h("th", {}, "provisional"), h("th", {}, "settled"))),
    h("tbody", {}, (r.bal.balances || []).map((b) => h("tr", { "data-currency": b.currency },
      h("td", {}, b.currency), h("td", { class: "num" }, b.provisional), h("td", { class: "num" }, b.settled)))));
  const txs = (r.txs.transactions || []).map((t) => {
    const comp = t.compensation ? `fee ${t.compensation}` : t.reversed_by ? `reversed by ${t.reversed_by}` : t.cause ? `for ${t.cause}` : "—";
    return h("tr", { "data-id": t.id, "data-status": t.status },
      h("td", { class: "mono" }, t.id), h("td", {}, t.type), h("td", { class: "num" }, t.delta || t.amount),
      h("td", {}, t.currency), h("td", {}, statusCell(t)), h("td", {}, comp), h("td", { class: "mono" }, t.hlc));
  });
  const more = r.txs.next ? [h("p", { class: "muted" }, "first 1000 transactions shown")] : [];
  box.replaceChildren(
    h("h3", { id: "account-name" }, account),
    h("h4", {}, "Balances"),
    balances,
    h("h4", {}, "Transactions ", h("span", { class: "muted" }, "in the total order, compensations after their cause")),
    h("table", { id: "transactions" },
      h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "type"), h("th", {}, "amount"), h("th", {}, "currency"),
        h("th", {}, "status"), h("th", {}, "compensation"), h("th", {}, "hlc"))),
      h("tbody", {}, txs.length ? txs : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no transactions"))])),
    ...more);
}

async function poll() {
  timer = null;
  if (!token()) return showLogin();
  const mine = generation;
  try {
    const [st, pol, ev] = await Promise.all([api("/v1/status"), api("/v1/policy"), api("/v1/admin/evidence")]);
    await pollFeed();
    const acc = await pollAccount();
    if (mine !== generation) return;
    $("login").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    renderStatus(st, ev);
    renderPolicy(pol);
    renderFeed();
    renderAccount(acc);
    setLive("live", "live");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(e.status === 403 ? "This token is not an admin token." : "The token was refused.");
    }
    setLive("error", "error: " + e.message);
  }
  timer = setTimeout(poll, POLL_MS);
}

function restart() {
  generation++;
  if (timer) clearTimeout(timer);
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("account-input").value = account;
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    restart();
  });
  $("account-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    account = $("account-input").value.trim();
    const p = fragmentParams();
    if (account) p.set("account", account); else p.delete("account");
    history.replaceState(null, "", location.pathname + location.search + "#" + p.toString());
    restart();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Token forgotten.");
  });
  restart();
});
