// The consumer's web app: market, wallet, sessions and streamed chat, using only
// this consumer's own API (same origin). Plain DOM, no framework, no build step.
// Amounts arrive as wei decimal strings and stay BigInt here; see format.js.

import {
  SseParser, costAfter, describeDuration, formatDuration, formatPercent, formatUnits, shortHex,
} from "./format.js";

const MARKET_REFRESH_MS = 5000;   // market, wallet and session list
const SESSION_RESYNC_MS = 30000;  // the timer ticks locally; the chain is asked this often
const EXPIRED_RESYNC_MS = 5000;   // after time is up, until the consumer has settled it
const TOKEN_KEY = "proxy-router.api-token";

// -- API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, { method = "GET", body, signal, headers = {} } = {}) {
  const init = {
    method, signal, credentials: "same-origin",
    headers: { Accept: "application/json", ...authHeaders(), ...headers },
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable",
      "cannot reach the consumer proxy-router; is it still running?");
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

async function errorOf(resp) {
  let code = `http_${resp.status}`;
  let message = resp.statusText || "request failed";
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch { /* not JSON: keep the status line */ }
  if (resp.status === 401) {
    $("token-form").hidden = false;
    message = `not authorized (${message}). Reload this page from the consumer's own ` +
      "loopback address so it can set its access cookie, or enter an API token below";
  }
  return new ApiError(resp.status, code, message);
}

const getJson = async (path) => (await api(path)).json();
const postJson = async (path, body) => (await api(path, { method: "POST", body })).json();

// -- DOM helpers -----------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

/** An amount element: readable MOR, exact wei in data-wei and the tooltip. */
function mor(wei, { maxFraction = 18, unit = "MOR" } = {}) {
  const exact = BigInt(wei).toString();
  return h("span", { class: "amount", "data-wei": exact, title: `${exact} wei` },
    formatUnits(exact, { maxFraction }), h("span", { class: "unit" }, ` ${unit}`));
}

function setAmount(el, wei, opts) {
  el.replaceChildren(mor(wei, opts));
  el.dataset.wei = BigInt(wei).toString();
}

function hex(value) {
  return h("code", { title: value }, shortHex(value));
}

const lastRender = new WeakMap();

/** Replace a tbody's rows unless nothing changed; keep keyboard focus on the
 *  element with the same data-focus-key, so a refresh never steals focus. */
function renderRows(tbody, signature, build) {
  if (lastRender.get(tbody) === signature) return;
  lastRender.set(tbody, signature);
  const focused = tbody.contains(document.activeElement)
    ? document.activeElement.dataset.focusKey : null;
  tbody.replaceChildren(...build());
  if (focused) tbody.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td", { colspan: columns, class: "empty" }, text));
}

// -- notices ---------------------------------------------------------------------

let errorSource = null;

function say(text) {
  $("status").textContent = text;
}

function reportError(err, context, source = "action") {
  if (err && err.name === "AbortError") return;
  const detail = err instanceof ApiError
    ? `${err.message}${err.code ? ` [${err.code}${err.status ? `, HTTP ${err.status}` : ""}]` : ""}`
    : String(err && err.message ? err.message : err);
  const text = `${context}: ${detail}`;
  if ($("error-text").textContent !== text || $("error").hidden) {
    $("error-text").textContent = text;
  }
  $("error").hidden = false;
  errorSource = source;
  console.error(context, err);
}

function clearError(source) {
  if (source && errorSource !== source) return;
  $("error").hidden = true;
  $("error-text").textContent = "";
  errorSource = null;
}

// -- state -----------------------------------------------------------------------

const state = {
  models: [],             // /blockchain/models
  listed: new Map(),      // modelId (lower) -> /v1/models entry (models with active bids)
  providers: [],
  selectedModel: null,    // modelId (lower)
  bids: [],               // rated bids of the selected model, best first
  sessions: [],           // /blockchain/sessions rows
  active: null,           // the session shown in the panel and used for chat
  busy: null,             // "open" | "close" while such a request is in flight
  chat: { history: [], controller: null },
  sessionsLoaded: false,
};

const modelName = (id) => {
  const model = state.models.find((m) => m.id.toLowerCase() === String(id).toLowerCase());
  return model ? model.name : shortHex(id);
};

function durationSeconds() {
  const input = $("duration");
  const minutes = Number(input.value);
  const ok = Number.isInteger(minutes) && minutes >= 5 && minutes <= 10080;
  input.setAttribute("aria-invalid", ok ? "false" : "true");
  return ok ? minutes * 60 : null;
}

// -- wallet and market -------------------------------------------------------------

async function loadBalance() {
  const wallet = await getJson("/blockchain/balance");
  const address = $("wallet-address");
  address.textContent = shortHex(wallet.address, 8, 6);
  address.title = wallet.address;
  address.dataset.address = wallet.address;
  setAmount($("wallet-eth"), wallet.eth, { maxFraction: 4, unit: "ETH" });
  setAmount($("wallet-mor"), wallet.mor, { maxFraction: 6 });
  const morpheus = wallet.flavor === "morpheus";
  $("wallet-flavor").textContent = morpheus ? "Morpheus-Lumerin" : "proxy-router";
  const held = BigInt(wallet.morHeld || "0") + BigInt(wallet.morWithdrawable || "0");
  $("wallet-held-row").hidden = !morpheus || held === 0n;
  setAmount($("wallet-held"), held.toString(), { maxFraction: 6 });
  $("withdraw-held").hidden = !morpheus || BigInt(wallet.morWithdrawable || "0") === 0n;
}

async function withdrawHeld() {
  const button = $("withdraw-held");
  button.disabled = true;
  try {
    const done = await postJson("/blockchain/stakes/withdraw", {});
    say(`Withdrew ${done.amount} wei of held stake.`);
    await loadBalance();
  } catch (err) {
    reportError(err, "Withdrawing the held stake");
  } finally {
    button.disabled = false;
  }
}

async function loadMarket() {
  const [openai, models, providers] = await Promise.all([
    getJson("/v1/models"), getJson("/blockchain/models"), getJson("/blockchain/providers"),
  ]);
  state.listed = new Map(openai.data.map((m) => [m.modelId.toLowerCase(), m]));
  state.models = models.filter((m) => !m.isDeleted);
  state.providers = providers;
  const known = state.models.some((m) => m.id.toLowerCase() === state.selectedModel);
  if (!known) {
    const first = state.models.find((m) => state.listed.has(m.id.toLowerCase())) || state.models[0];
    state.selectedModel = first ? first.id.toLowerCase() : null;
  }
  state.bids = state.selectedModel
    ? await getJson(`/blockchain/models/${state.selectedModel}/bids/rated`) : [];
  renderMarket();
  $("market-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function renderMarket() {
  renderModels();
  renderBids();
  renderProviders();
}

function renderModels() {
  const busy = state.busy !== null;
  const minutes = $("duration").value;
  const sig = JSON.stringify([state.models, [...state.listed], state.selectedModel, busy, minutes]);
  renderRows($("models-body"), sig, () => {
    if (!state.models.length) return [emptyRow(4, "No model is registered on the marketplace yet.")];
    return state.models.map((model) => {
      const id = model.id.toLowerCase();
      const bids = state.listed.get(id)?.activeBids ?? 0;
      const selected = id === state.selectedModel;
      return h("tr", { class: selected ? "selected" : null, "data-testid": "model-row",
        "data-model-id": id },
      h("th", { scope: "row" }, h("span", { class: "name" }, model.name),
        h("br"), hex(model.id)),
      h("td", {}, (model.tags || []).map((t) => h("span", { class: "tag" }, t))),
      h("td", { class: "num" }, String(bids)),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", "aria-pressed": String(selected),
          "data-focus-key": `bids-${id}`, onclick: () => selectModel(id),
          "aria-label": `Bids for ${model.name}` }, "Bids"),
        h("button", { type: "button", disabled: busy || !bids, "data-testid": "open-model-session",
          "data-focus-key": `open-${id}`, onclick: () => openSession("model", id, model.name),
          "aria-label": `Open session on ${model.name} (best rated bid, ${minutes} minutes)` },
        "Open session"))));
    });
  });
}

function renderBids() {
  const model = state.models.find((m) => m.id.toLowerCase() === state.selectedModel);
  $("bids-heading").textContent = model ? `Bids for ${model.name}` : "Bids";
  const seconds = durationSeconds();
  const busy = state.busy !== null;
  const sig = JSON.stringify([state.bids, seconds, busy, state.providers]);
  renderRows($("bids-body"), sig, () => {
    if (!model) return [emptyRow(7, "Choose a model.")];
    if (!state.bids.length) return [emptyRow(7, "No active bid for this model.")];
    return state.bids.map((bid, i) => {
      const id = bid.id.toLowerCase();
      const price = BigInt(bid.pricePerSecond);
      return h("tr", { "data-testid": "bid-row", "data-bid-id": id },
        h("th", { scope: "row" }, hex(bid.provider), h("br"),
          h("small", { class: "muted nowrap" }, `bid ${shortHex(bid.id)}`),
          i === 0 ? h("span", { class: "badge" }, "best") : null),
        h("td", { class: "num" }, h("div", { "data-testid": "bid-price" }, mor(price)),
          h("div", { class: "small muted", "data-testid": "bid-stake" },
            seconds ? ["stake ", mor(price * BigInt(seconds))] : "")),
        h("td", { class: "num", "data-testid": "bid-score" }, bid.score.toFixed(3)),
        h("td", { class: "num", "data-testid": "bid-success",
          title: "(successful sessions + 1) / (sessions + 2), from on-chain receipts" },
        formatPercent(bid.successRate)),
        h("td", { class: "num", "data-testid": "bid-tps" },
          bid.meanTps > 0 ? bid.meanTps.toFixed(1) : "—"),
        h("td", { class: "num", "data-testid": "bid-ttft" },
          bid.meanTtftMs > 0 ? `${Math.round(bid.meanTtftMs)} ms` : "—"),
        h("td", {}, h("div", { class: "actions" },
          h("button", { type: "button", disabled: busy || !seconds, "data-testid": "open-bid-session",
            "data-focus-key": `open-bid-${id}`, onclick: () => openSession("bid", id, bid.provider),
            "aria-label": `Open session on bid ${shortHex(bid.id)} from provider ${shortHex(bid.provider)}` },
          "Open session"))));
    });
  });
}

function renderProviders() {
  renderRows($("providers-body"), JSON.stringify(state.providers), () => {
    if (!state.providers.length) return [emptyRow(5, "No provider is registered yet.")];
    return state.providers.map((p) => h("tr", { "data-testid": "provider-row" },
      h("th", { scope: "row" }, hex(p.id)),
      h("td", {}, h("code", {}, p.endpoint)),
      h("td", { class: "num" }, mor(p.stake, { maxFraction: 6 })),
      h("td", { class: "num" }, String(p.activeBids ?? "—")),
      h("td", { class: "num" }, String(p.sessionCount ?? "—"))));
  });
}

async function selectModel(id) {
  state.selectedModel = id;
  renderModels();
  try {
    state.bids = await getJson(`/blockchain/models/${id}/bids/rated`);
    renderBids();
  } catch (err) {
    reportError(err, "Loading the bids failed");
  }
}

// -- sessions ----------------------------------------------------------------------

/** A row of GET /blockchain/sessions (camelCase; older consumers sent snake_case). */
function sessionRow(r) {
  return {
    id: String(r.sessionId ?? r.session_id).toLowerCase(),
    modelId: String(r.modelId ?? r.model_id).toLowerCase(),
    stake: String(r.stake), status: r.status, closeTx: r.closeTx ?? r.close_tx ?? null,
    openedAt: Number(r.openedAt ?? r.opened_at), endsAt: Number(r.endsAt ?? r.ends_at),
  };
}

async function loadSessions() {
  state.sessions = (await getJson("/blockchain/sessions")).map(sessionRow);
  renderSessions();
  const active = state.active;
  if (!state.sessionsLoaded) {
    state.sessionsLoaded = true;
    // After a reload, pick up the open session that lasts longest.
    const now = Date.now() / 1000;
    const open = state.sessions.filter((s) => s.status === "open" && s.endsAt > now)
      .sort((a, b) => b.endsAt - a.endsAt)[0];
    if (!active && open) await activate(open.id);
  } else if (active && !active.closed) {
    // Settled by someone else (the consumer's sweeper, the provider): show it.
    const row = state.sessions.find((s) => s.id === active.id);
    if (row && row.status !== "open") await resync();
  }
}

function renderSessions() {
  const rows = [...state.sessions].sort((a, b) => b.openedAt - a.openedAt).slice(0, 20);
  const activeId = state.active?.id;
  const busy = state.busy !== null;
  const sig = JSON.stringify([rows, activeId, busy, state.models.length]);
  renderRows($("sessions-body"), sig, () => {
    if (!rows.length) return [emptyRow(6, "No session yet.")];
    const now = Date.now() / 1000;
    return rows.map((s) => {
      const open = s.status === "open";
      const status = open && s.endsAt <= now ? "expired" : s.status;
      const isActive = s.id === activeId;
      return h("tr", { class: isActive ? "selected" : null, "data-testid": "session-row",
        "data-session-id": s.id },
      h("th", { scope: "row" }, hex(s.id)),
      h("td", {}, modelName(s.modelId)),
      h("td", {}, h("span", { class: `pill ${status}` }, status)),
      h("td", { class: "num" }, mor(s.stake)),
      h("td", { class: "nowrap" }, h("time", { datetime: new Date(s.endsAt * 1000).toISOString() },
        when(s.endsAt))),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", "aria-pressed": String(isActive),
          "data-focus-key": `show-${s.id}`, onclick: () => activate(s.id),
          "aria-label": `${open ? "Use" : "Show"} session ${shortHex(s.id)}` },
        open ? "Use" : "Show"),
        open ? h("button", { type: "button", class: "danger", disabled: busy,
          "data-focus-key": `close-${s.id}`,
          onclick: async () => { await activate(s.id); await closeActive(); },
          "aria-label": `Close session ${shortHex(s.id)}` }, "Close") : null)));
    });
  });
}

/** A chain timestamp as local time, with the date only when it is not today. */
function when(seconds) {
  const date = new Date(seconds * 1000);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return date.toDateString() === new Date().toDateString()
    ? time : `${date.toLocaleDateString()} ${time}`;
}

function sessionFrom(detail) {
  return {
    id: detail.id.toLowerCase(), modelId: detail.modelId.toLowerCase(), provider: detail.provider,
    stake: BigInt(detail.stake), price: BigInt(detail.pricePerSecond),
    openedAt: Number(detail.openedAt), endsAt: Number(detail.endsAt),
    secondsLeft: Number(detail.secondsLeft), syncedAt: performance.now(), closed: detail.closed,
    settlement: detail.closed ? {
      stake: detail.stake, providerEarned: detail.providerEarned, userRefund: detail.userRefund,
      held: detail.held, disputed: detail.disputed, tx: null, gasUsed: null,
    } : null,
  };
}

/** Show session `id` in the panel (and use it for chat when it is open). */
async function activate(id) {
  id = id.toLowerCase();
  try {
    const session = sessionFrom(await getJson(`/blockchain/sessions/${id}`));
    if (session.settlement) {
      session.settlement.tx = state.sessions.find((s) => s.id === id)?.closeTx ?? null;
    }
    if (state.active?.id !== id) resetChat();
    state.active = session;
    renderSession();
    renderSessions();
  } catch (err) {
    reportError(err, `Loading session ${shortHex(id)} failed`);
  }
}

let resyncing = null;

/** Ask the chain for the active session's time left, cost and settlement. */
function resync() {
  const active = state.active;
  if (!active || resyncing) return resyncing;
  resyncing = getJson(`/blockchain/sessions/${active.id}`).then((detail) => {
    if (state.active !== active) return;
    const fresh = sessionFrom(detail);
    if (active.settlement?.tx) fresh.settlement = active.settlement;  // keep the close receipt
    state.active = fresh;
    if (fresh.closed && !active.closed) say(`Session ${shortHex(fresh.id)} was settled.`);
    renderSession();
  }).catch((err) => {
    active.syncedAt = performance.now() - (SESSION_RESYNC_MS - EXPIRED_RESYNC_MS);
    reportError(err, "Refreshing the session failed", "refresh");
  }).finally(() => { resyncing = null; });
  return resyncing;
}

function secondsLeft(session) {
  const elapsed = Math.floor((performance.now() - session.syncedAt) / 1000);
  return Math.max(0, session.secondsLeft - elapsed);
}

function tick() {
  const session = state.active;
  if (!session || session.closed) return;
  const left = secondsLeft(session);
  const timeLeft = $("session-time-left");
  timeLeft.textContent = formatDuration(left);
  timeLeft.dataset.seconds = String(left);
  timeLeft.title = describeDuration(left);
  const duration = session.endsAt - session.openedAt;
  const elapsed = duration - left;
  setAmount($("session-cost"), costAfter(elapsed, session.price, session.stake));
  const used = $("session-used");
  used.max = duration;
  used.value = elapsed;
  used.textContent = `${Math.round((elapsed / duration) * 100)}%`;
  const expired = left === 0;
  $("session-status").textContent = expired
    ? "time is up: the consumer settles it automatically" : "open";
  setChatEnabled(!expired && state.busy !== "close");
  const since = performance.now() - session.syncedAt;
  if (since > (expired ? EXPIRED_RESYNC_MS : SESSION_RESYNC_MS)) resync();
}

function renderSession() {
  const session = state.active;
  $("session-empty").hidden = Boolean(session);
  $("session-info").hidden = !session;
  $("settlement").hidden = !session?.settlement;
  $("session-used-row").hidden = Boolean(session?.closed);
  if (!session) {
    setChatEnabled(false);
    return;
  }
  $("session-id").textContent = shortHex(session.id, 10, 8);
  $("session-id").title = session.id;
  $("session-id").dataset.sessionId = session.id;
  $("session-model").textContent = modelName(session.modelId);
  $("session-provider").textContent = shortHex(session.provider, 8, 6);
  $("session-provider").title = session.provider;
  $("session-price").replaceChildren(mor(session.price), " per second");
  setAmount($("session-stake"), session.stake);
  const close = $("close-session");
  close.hidden = session.closed;
  close.disabled = state.busy !== null;
  close.textContent = state.busy === "close" ? "Closing…" : "Close session";
  if (session.closed) {
    const timeLeft = $("session-time-left");
    timeLeft.textContent = "closed";
    timeLeft.dataset.seconds = "0";

    const s = session.settlement;
    setAmount($("session-cost"), BigInt(s.providerEarned) + BigInt(s.held));
    $("session-status").textContent = "closed";
    setChatEnabled(false);
    renderSettlement(s);
  } else {
    tick();
  }
}

function renderSettlement(s) {
  setAmount($("settlement-stake"), s.stake);
  setAmount($("settlement-provider"), s.providerEarned);
  setAmount($("settlement-refund"), s.userRefund);
  setAmount($("settlement-held"), s.held);
  $("settlement-receipt").textContent = s.disputed
    ? "disputed: no provider receipt, its share is held for the dispute window"
    : "signed by the provider";
  const tx = $("settlement-tx");
  tx.textContent = s.tx ? shortHex(s.tx, 10, 8) : "—";
  tx.title = s.tx || "";
  $("settlement-gas").textContent = s.gasUsed ? ` ${s.gasUsed} gas` : "";
  const sum = BigInt(s.providerEarned) + BigInt(s.userRefund) + BigInt(s.held);
  const balanced = sum === BigInt(s.stake);
  const check = $("settlement-check");
  check.classList.toggle("bad", !balanced);
  check.textContent = balanced
    ? "✓ Provider paid + refund + held = stake: every wei is accounted for."
    : `✗ Provider paid + refund + held = ${formatUnits(sum)} MOR, not the stake.`;
}

async function openSession(kind, id, label) {
  const seconds = durationSeconds();
  if (!seconds) {
    reportError(new Error("enter a whole number of minutes between 5 and 10080"),
      "Session length");
    $("duration").focus();
    return;
  }
  const path = kind === "bid" ? `/blockchain/bids/${id}/session` : `/blockchain/models/${id}/session`;
  state.busy = "open";
  renderMarket();
  renderSessions();
  say(`Opening a ${describeDuration(seconds)} session (${kind} ${shortHex(label)}): ` +
    "asking the provider for an approval, then escrowing MOR on chain…");
  try {
    const opened = await postJson(path, { sessionDuration: seconds });
    clearError();
    await activate(opened.sessionId);
    say(`Session ${shortHex(opened.sessionId)} is open: ${formatUnits(opened.stake)} MOR in ` +
      `escrow for ${describeDuration(seconds)}. You can chat now.`);
    $("prompt").focus();
  } catch (err) {
    say("");
    reportError(err, "Opening the session failed");
  } finally {
    state.busy = null;
    renderMarket();
    renderSession();
    refresh();
  }
}

async function closeActive() {
  const session = state.active;
  if (!session || session.closed || state.busy) return;
  state.chat.controller?.abort();
  state.busy = "close";
  renderSession();
  renderMarket();
  say("Closing: getting the provider's signed receipt and settling on chain…");
  try {
    const result = await postJson(`/blockchain/sessions/${session.id}/close`);
    clearError();
    if (state.active === session) {
      session.closed = true;
      session.settlement = result;
    }
    say(`Session ${shortHex(session.id)} closed: ${formatUnits(result.userRefund)} MOR refunded, ` +
      `${formatUnits(result.providerEarned)} MOR paid to the provider.`);
  } catch (err) {
    if (err.code === "session_closed") {
      say("The session was already settled.");
      session.syncedAt = -Infinity;
    } else {
      reportError(err, "Closing the session failed");
    }
  } finally {
    state.busy = null;
    if (session.syncedAt === -Infinity) await resync();
    renderSession();
    renderMarket();
    if (state.active?.closed) $("settlement-heading").focus();
    refresh();
  }
}

// -- chat ------------------------------------------------------------------------

function setChatEnabled(enabled) {
  const fieldset = $("chat-fieldset");
  const disabled = !enabled && state.chat.controller === null;  // Stop stays usable
  if (fieldset.disabled !== disabled) fieldset.disabled = disabled;
  const session = state.active;
  const hint = enabled
    ? "Enter sends, Shift+Enter adds a line, Escape stops an answer."
    : session?.closed ? "This session is settled: open a new one to keep chatting."
      : session ? "This session's time is up: open a new one to keep chatting."
        : "Open a session first: prompts are paid from its escrow.";
  if ($("prompt-hint").textContent !== hint) $("prompt-hint").textContent = hint;
}

function resetChat() {
  state.chat.controller?.abort();
  state.chat.history = [];
  $("chat-log").replaceChildren(h("p", { class: "empty-note", id: "chat-empty" },
    "Messages in the open session appear here, streamed from the provider."));
}

function scrollChat() {
  const log = $("chat-log");
  log.scrollTop = log.scrollHeight;
}

function appendMessage(role, text) {
  $("chat-empty")?.remove();
  const body = h("div", { class: "content" }, text);
  const meta = h("p", { class: "meta" });
  const msg = h("article", { class: `msg ${role}`, "data-role": role,
    "data-testid": role === "assistant" ? "assistant-message" : "user-message" },
  h("p", { class: "who" }, role === "user" ? "You" : "Model"), body, meta);
  $("chat-log").append(msg);
  scrollChat();
  return { msg, body, meta };
}

async function sendPrompt(event) {
  event.preventDefault();
  const session = state.active;
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || !session || session.closed || state.chat.controller) return;
  const maxTokens = Math.max(1, Math.min(2048, Number($("max-tokens").value) || 128));
  const history = state.chat.history;
  history.push({ role: "user", content: text });
  appendMessage("user", text);
  prompt.value = "";
  const reply = appendMessage("assistant", "");
  const textNode = document.createTextNode("");
  reply.body.append(textNode);
  reply.msg.dataset.state = "streaming";
  reply.msg.dataset.chunks = "0";

  const controller = new AbortController();
  state.chat.controller = controller;
  $("chat-send").disabled = true;
  $("chat-stop").hidden = false;
  $("chat-log").setAttribute("aria-busy", "true");
  say("The model is answering…");

  const started = performance.now();
  let firstAt = null;
  let content = "";
  let chunks = 0;
  let usage = null;
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal, headers: { session_id: session.id },
      body: { model: session.modelId, messages: history, stream: true, max_tokens: maxTokens,
        stream_options: { include_usage: true } },
    });
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let done = false;
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      for (const data of parser.push(decoder.decode(value, { stream: true }))) {
        if (data === "[DONE]") { done = true; break; }
        const message = JSON.parse(data);
        if (message.error) {
          throw new ApiError(0, message.error.code, message.error.message);
        }
        const delta = message.choices?.[0]?.delta?.content;
        if (delta) {
          firstAt ??= performance.now();
          content += delta;
          textNode.data = content;
          chunks += 1;
          reply.msg.dataset.chunks = String(chunks);
          scrollChat();
        }
        if (message.usage) usage = message.usage;
      }
    }
    if (!done) {
      throw new ApiError(0, "stream_cut", "the answer stopped before it was complete " +
        "(the connection closed without [DONE])");
    }
    reader.cancel().catch(() => {});
    reply.msg.dataset.state = "done";
    if (!content) reply.body.append(h("em", {}, "(empty answer)"));
    history.push({ role: "assistant", content });
    const generating = (performance.now() - (firstAt ?? started)) / 1000;
    const parts = [];
    if (usage) parts.push(`${usage.completion_tokens} tokens`);
    if (firstAt !== null) parts.push(`first token in ${Math.round(firstAt - started)} ms`);
    if (usage && firstAt !== null && generating > 0 && usage.completion_tokens > 1) {
      parts.push(`${(usage.completion_tokens / generating).toFixed(1)} tokens/s`);
    }
    reply.meta.textContent = parts.join(" · ");
    say("Answer complete.");
  } catch (err) {
    if (err.name === "AbortError") {
      reply.msg.dataset.state = "stopped";
      reply.meta.textContent = "stopped";
      if (content) history.push({ role: "assistant", content });
      else history.pop();
      say("Answer stopped.");
    } else {
      reply.msg.dataset.state = "error";
      reply.msg.classList.add("failed");
      reply.meta.textContent = `failed: ${err.message}`;
      if (content) {
        history.push({ role: "assistant", content });
      } else {
        history.pop();  // nothing came back: the prompt can be sent again as it was
        if (!prompt.value) prompt.value = text;
      }
      say("");
      reportError(err, "The prompt failed");
      if (/session/.test(err.code || "")) resync();
    }
  } finally {
    state.chat.controller = null;
    $("chat-send").disabled = false;
    $("chat-stop").hidden = true;
    $("chat-log").setAttribute("aria-busy", "false");
    renderSession();
  }
}

// -- refresh loop ------------------------------------------------------------------

let refreshing = null;

function refresh() {
  if (refreshing) return refreshing;
  refreshing = Promise.allSettled([loadBalance(), loadMarket(), loadSessions()])
    .then((results) => {
      const failed = results.find((r) => r.status === "rejected");
      if (failed) reportError(failed.reason, "Refreshing the market failed", "refresh");
      else clearError("refresh");
    })
    .finally(() => { refreshing = null; });
  return refreshing;
}

function schedule() {
  setTimeout(async () => {
    if (!document.hidden) await refresh();
    schedule();
  }, MARKET_REFRESH_MS);
}

function start() {
  $("chat-form").addEventListener("submit", sendPrompt);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    } else if (event.key === "Escape") {
      state.chat.controller?.abort();
    }
  });
  $("chat-stop").addEventListener("click", () => state.chat.controller?.abort());
  $("chat-clear").addEventListener("click", () => { resetChat(); $("prompt").focus(); });
  $("close-session").addEventListener("click", closeActive);
  $("withdraw-held").addEventListener("click", withdrawHeld);
  $("duration").addEventListener("input", () => { renderModels(); renderBids(); });
  $("error-dismiss").addEventListener("click", () => clearError());
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    $("token-form").hidden = true;
    clearError();
    refresh();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  setInterval(tick, 1000);
  refresh();
  schedule();
}

start();
