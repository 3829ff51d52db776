// The console page: one conversation, live from /api/events (Server-Sent Events).
//
// Everything a user, agent or daemon wrote is put on the page with textContent or
// createTextNode, never as HTML, so nobody's text can run as script (the server's
// Content-Security-Policy refuses inline script as well).
"use strict";

(() => {
  const LEVELS = ["milestone", "decision", "action", "state", "detail"];
  const KEEP = 2000; // rail events held for re-filtering; older ones leave the page
  const SEARCH_DELAY_MS = 250; // typing pauses this long before the search goes out
  const SEARCH_LIMIT = 50;

  const params = new URLSearchParams(location.search);
  const state = {
    cid: params.get("conversation") || "",
    lastSeq: 0, // the newest seq on the page: a repeat is dropped (the stream resumes after it)
    feed: [], // [{event, playbook}] that are not user-visible, for the rail
    tasks: new Map(), // task id -> task
    taskPlaybooks: new Map(), // task id -> the playbook beside its failure
    playbooks: new Map(), // playbook id -> {id, title, matches}
    streaming: new Map(), // grant id -> {node, parts} of a narrator reply still arriving
    source: null,
    searchTimer: 0,
    searchAbort: null, // the AbortController of the search in flight
    pendingSeq: Number(params.get("seq")) || 0, // a search hit to show once its event arrives
    hitSeq: 0, // the event shown as a search hit: the chat stays put while it is there
  };
  const $ = (id) => document.getElementById(id);

  // el("li", {class: "x", "data-seq": 3}, "text", child): a node, its text never parsed.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === "") continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clock(ts) {
    return typeof ts === "string" && ts.length >= 19 ? ts.slice(11, 19) : "";
  }

  function timeEl(ts) {
    return el("time", { datetime: ts }, clock(ts));
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(describeError(body, response.status));
    return body;
  }

  function describeError(body, status) {
    const error = body && body.error;
    if (error && typeof error === "object") return `${error.message || "error"} (${error.code})`;
    return typeof error === "string" ? error : `HTTP ${status}`;
  }

  // --- the chat: user-visible events only ---------------------------------------------------

  function chatNode(type, seq, ts, text, streaming) {
    const who = type === "user.message" ? "You" : "Narrator";
    return el(
      "li",
      { class: "msg", "data-role": "chat-message", "data-type": type, "data-seq": seq, "data-streaming": streaming ? "true" : null, "aria-busy": streaming ? "true" : null },
      el("span", { class: "who" }, who, " ", ts ? timeEl(ts) : ""),
      el("p", { class: "text" }, text),
    );
  }

  function showChat(event) {
    const chat = $("chat");
    const data = event.data || {};
    const text = typeof data.text === "string" ? data.text : JSON.stringify(data);
    const pending = event.type === "narrator.message" && state.streaming.get(data.grant_id);
    const node = chatNode(event.type, event.seq, event.timestamp, text, false);
    if (pending) {
      state.streaming.delete(data.grant_id);
      pending.node.replaceWith(node); // the reply, whole, where it was streaming in
    } else {
      chat.append(node);
    }
    scrollDown(chat);
  }

  function showDelta(delta) {
    let entry = state.streaming.get(delta.grant_id);
    if (!entry) {
      entry = { node: chatNode("narrator.message", null, "", "", true), parts: [] };
      state.streaming.set(delta.grant_id, entry);
      $("chat").append(entry.node);
    }
    if (entry.parts[delta.index] !== undefined) return; // already have this piece
    entry.parts[delta.index] = String(delta.delta);
    entry.node.querySelector(".text").textContent = entry.parts.join("");
    scrollDown($("chat"));
  }

  function scrollDown(list) {
    if (state.hitSeq && list.querySelector('[data-hit="true"]')) return; // the user is looking at a hit
    list.scrollTop = list.scrollHeight;
  }

  // --- the activity rail: status events; internal ones with "all" -----------------------------

  function summary(event) {
    const data = event.data || {};
    if (event.type.startsWith("task.") && data.task && typeof data.task === "object") {
      return `${data.task.id} → ${data.task.status}`;
    }
    if (event.type === "watchdog.idle" && data.idle_for_s !== undefined) {
      return `no sign of life for ${data.idle_for_s} s`;
    }
    if (event.type === "task.stalled" && data.silent_for_s !== undefined) {
      return `${event.task_id || "a task"}: silent for ${Math.round(data.silent_for_s)} s`;
    }
    for (const key of ["msg", "message", "error", "text", "detail"]) {
      if (typeof data[key] === "string") return data[key];
    }
    const json = JSON.stringify(data);
    return json === "{}" ? "" : json.length > 240 ? `${json.slice(0, 240)}…` : json;
  }

  // A playbook's markdown, lightly: paragraphs and **bold**; everything else stays text.
  function paragraphs(markdown) {
    return String(markdown || "").trim().split(/\n\s*\n/).filter(Boolean).map((block) => {
      const p = el("p", {});
      block.replace(/\s*\n\s*/g, " ").split(/\*\*(.+?)\*\*/g).forEach((part, i) => {
        if (part) p.append(i % 2 ? el("strong", {}, part) : document.createTextNode(part));
      });
      return p;
    });
  }

  function playbookNode(playbook) {
    const node = el(
      "details",
      { class: "playbook", "data-role": "playbook", "data-playbook-id": playbook.id, open: "" },
      el("summary", {}, `Playbook: ${playbook.title}`),
      ...paragraphs(playbook.text),
    );
    return node;
  }

  function shown(event) {
    if (event.visibility === "internal" && !$("show-all").checked) return false;
    const box = document.getElementById(`level-${event.level}`);
    return !box || box.checked;
  }

  function railNode({ event, playbook }) {
    return el(
      "li",
      { class: "item", "data-role": "activity-item", "data-seq": event.seq, "data-type": event.type, "data-level": event.level, "data-visibility": event.visibility },
      el("div", { class: "meta" }, timeEl(event.timestamp), el("span", { class: "type" }, event.type), event.agent_id ? el("span", {}, event.agent_id) : "", el("span", {}, event.level)),
      summary(event) ? el("p", { class: "detail" }, summary(event)) : "",
      playbook ? playbookNode(playbook) : "",
    );
  }

  function showRail(entry) {
    if (shown(entry.event)) $("rail").prepend(railNode(entry));
  }

  function redrawRail() {
    const nodes = state.feed.filter((entry) => shown(entry.event)).map(railNode).reverse();
    $("rail").replaceChildren(...nodes);
  }

  // --- tasks ------------------------------------------------------------------------------

  function taskNode(task) {
    const deps = Array.isArray(task.dependency_ids) && task.dependency_ids.length ? task.dependency_ids.join(", ") : "";
    const lease = typeof task.lease_owner === "string" ? `lease ${task.lease_owner} until ${clock(task.lease_expires_at)}` : "";
    const attempts = Number.isInteger(task.attempts) && task.attempts > 0 ? `attempt ${task.attempts} of ${task.max_attempts}` : "";
    const playbook = task.status === "failed" ? state.taskPlaybooks.get(task.id) : null;
    return el(
      "li",
      { class: "item", "data-role": "task", "data-task-id": task.id, "data-status": task.status },
      el("div", { class: "meta" }, el("code", { class: "type" }, task.id), el("span", { class: `badge ${task.status}` }, task.status), task.type ? el("span", {}, task.type) : ""),
      el(
        "p",
        { class: "detail" },
        [
          task.owner ? `owner ${task.owner}` : "no owner",
          deps ? `after ${deps}` : "",
          lease,
          attempts,
          `priority ${task.priority}`,
          `v${task.version}`,
        ].filter(Boolean).join(" · "),
      ),
      playbook ? playbookNode(playbook) : "",
    );
  }

  function showTask(task, playbook) {
    const known = state.tasks.get(task.id);
    if (playbook) state.taskPlaybooks.set(task.id, playbook);
    if (known && known.version > task.version) return; // an older view than the one shown
    state.tasks.set(task.id, task);
    const node = taskNode(task);
    const old = $("tasks").querySelector(`[data-task-id="${CSS.escape(task.id)}"]`);
    if (old) old.replaceWith(node);
    else $("tasks").append(node);
  }

  // --- decisions ----------------------------------------------------------------------------

  function decisionNode(event) {
    const data = event.data || {};
    const speak = data.speak_now === true;
    const playbook = typeof data.playbook === "string" ? data.playbook : "";
    const title = playbook && state.playbooks.get(playbook) ? state.playbooks.get(playbook).title : "";
    const facts = [
      data.grant_id ? `grant ${String(data.grant_id).slice(0, 8)}` : "",
      data.expires_at ? `until ${clock(data.expires_at)}` : "",
      data.summary_ref ? `summary ${String(data.summary_ref).slice(0, 12)}` : "",
    ].filter(Boolean);
    return el(
      "li",
      { class: "item", "data-role": "decision", "data-seq": event.seq, "data-reason": data.reason, "data-speak-now": speak ? "true" : "false" },
      el("div", { class: "meta" }, timeEl(event.timestamp), el("span", { class: `badge ${speak ? "speak" : "wait"}` }, speak ? "speak" : "wait"), el("span", { class: "type" }, String(data.reason || ""))),
      facts.length ? el("p", { class: "detail" }, facts.join(" · ")) : "",
      playbook ? el("p", { class: "detail" }, "playbook ", el("code", {}, playbook), title ? ` (${title})` : "") : "",
    );
  }

  // --- search: /api/search, the selected conversation or all of them -----------------------

  // "the **deploy** failed": text, then a <mark>, then text; never parsed as HTML.
  function snippetNode(snippet) {
    const parts = String(snippet || "").split("**");
    if (parts.length % 2 === 0) { // an unpaired ** is the text's own
      const tail = parts.pop();
      parts[parts.length - 1] += `**${tail}`;
    }
    const node = el("span", { class: "snippet" });
    parts.forEach((part, i) => {
      if (part) node.append(i % 2 ? el("mark", {}, part) : document.createTextNode(part));
    });
    return node;
  }

  function when(ts) {
    return typeof ts === "string" && ts.length >= 19 ? `${ts.slice(0, 10)} ${ts.slice(11, 19)}` : "";
  }

  function hitNode(hit) {
    const event = hit.event || {};
    const current = event.conversation_id === state.cid && event.seq === state.hitSeq;
    const button = el(
      "button",
      { type: "button", class: "hit-button" },
      el("span", { class: "meta" }, el("span", { class: "conversation" }, String(event.conversation_id)), el("span", {}, `#${event.seq}`), el("span", { class: "type" }, String(event.type)), el("time", { datetime: event.timestamp }, when(event.timestamp))),
      snippetNode(hit.snippet),
    );
    button.addEventListener("click", () => goTo(event.conversation_id, event.seq));
    return el(
      "li",
      { class: "item hit", "data-role": "search-hit", "data-conversation-id": event.conversation_id, "data-seq": event.seq, "data-type": event.type, "aria-current": current ? "true" : null },
      button,
    );
  }

  function searchError(message) {
    $("search-error").textContent = message;
    if (message) $("search").setAttribute("aria-invalid", "true");
    else $("search").removeAttribute("aria-invalid");
  }

  function clearSearch() {
    clearTimeout(state.searchTimer);
    if (state.searchAbort) state.searchAbort.abort();
    state.searchAbort = null;
    searchError("");
    $("hits").replaceChildren();
    $("search-status").textContent = "";
    $("search-results").hidden = true;
    unmark();
  }

  async function search() {
    clearTimeout(state.searchTimer);
    const q = $("search").value;
    if (!q.trim()) {
      clearSearch();
      return;
    }
    if (state.searchAbort) state.searchAbort.abort(); // its answer is out of date
    const abort = new AbortController();
    state.searchAbort = abort;
    const all = $("search-all").checked || !state.cid;
    const query = new URLSearchParams({ q, limit: String(SEARCH_LIMIT) });
    if (!all) query.set("conversation_id", state.cid);
    $("hits").setAttribute("aria-busy", "true");
    try {
      const response = await fetch(`/api/search?${query}`, { headers: { accept: "application/json" }, signal: abort.signal });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(describeError(body, response.status));
      const hits = Array.isArray(body.hits) ? body.hits : [];
      searchError("");
      $("hits").replaceChildren(...hits.map(hitNode));
      const where = all ? "in all conversations" : `in ${state.cid}`;
      const count = hits.length ? `${hits.length === SEARCH_LIMIT ? "the best " : ""}${hits.length} ${hits.length === 1 ? "match" : "matches"} ${where}` : `No match ${where}.`;
      $("search-status").textContent = body.indexing ? `${count} (the index is still being built: some may be missing)` : count;
      $("search-results").hidden = false;
    } catch (failure) {
      if (abort.signal.aborted) return; // a newer search, or an emptied box, took its place
      $("hits").replaceChildren();
      $("search-status").textContent = "";
      $("search-results").hidden = true;
      searchError(failure.message);
    } finally {
      if (state.searchAbort === abort) {
        state.searchAbort = null;
        $("hits").removeAttribute("aria-busy");
      }
    }
  }

  // The event's node in the chat, the rail or the decisions, if the page holds it.
  function eventNode(seq) {
    for (const list of ["chat", "rail", "decisions"]) {
      const node = $(list).querySelector(`[data-seq="${seq}"]`);
      if (node) return node;
    }
    return null;
  }

  function unmark() {
    state.hitSeq = 0;
    for (const node of document.querySelectorAll('main [data-hit="true"]')) node.removeAttribute("data-hit");
  }

  // Scroll to the event and highlight it, showing it in the rail if the filters hid it.
  function reveal(seq) {
    state.pendingSeq = 0;
    let node = eventNode(seq);
    const entry = node ? null : state.feed.find((e) => e.event.seq === seq);
    if (entry) {
      if (entry.event.visibility === "internal") $("show-all").checked = true;
      const box = document.getElementById(`level-${entry.event.level}`);
      if (box) box.checked = true;
      redrawRail();
      node = eventNode(seq);
    }
    unmark();
    for (const hit of $("hits").children) {
      const current = hit.dataset.conversationId === state.cid && Number(hit.dataset.seq) === seq;
      if (current) hit.setAttribute("aria-current", "true");
      else hit.removeAttribute("aria-current");
    }
    if (!node) return false;
    state.hitSeq = seq;
    node.dataset.hit = "true";
    node.tabIndex = -1;
    node.scrollIntoView({ block: "center" });
    node.focus({ preventScroll: true });
    return true;
  }

  // A hit chosen: its event here, or the page of its conversation (the search comes along).
  function goTo(cid, seq) {
    if (cid !== state.cid) {
      const next = new URLSearchParams({ conversation: cid, seq: String(seq) });
      if ($("search").value.trim()) next.set("q", $("search").value);
      if ($("search-all").checked) next.set("all", "1");
      location.search = `?${next}`;
      return;
    }
    if (!reveal(seq)) {
      state.pendingSeq = seq; // shown if it arrives
      $("search-status").textContent = `Event #${seq} is not on this page: it opens on the newest events of a conversation.`;
    }
  }

  function setUpSearch() {
    const box = $("search");
    box.value = params.get("q") || "";
    $("search-all").checked = params.get("all") === "1";
    $("search-form").addEventListener("submit", (submit) => {
      submit.preventDefault();
      search();
    });
    box.addEventListener("input", () => {
      clearTimeout(state.searchTimer);
      if (!box.value.trim()) clearSearch();
      else state.searchTimer = setTimeout(search, SEARCH_DELAY_MS);
    });
    box.addEventListener("keydown", (key) => {
      if (key.key === "Enter" && !key.isComposing) {
        key.preventDefault();
        search(); // at once
      }
    });
    $("search-all").addEventListener("change", () => {
      if (box.value.trim()) search();
    });
    document.addEventListener("keydown", (key) => {
      if (key.key !== "/" || key.ctrlKey || key.metaKey || key.altKey || key.isComposing) return;
      const target = key.target;
      const typing = target instanceof HTMLElement && (target.isContentEditable || target.matches("textarea, select, input:not([type=checkbox]):not([type=radio]):not([type=button]):not([type=submit])"));
      if (typing) return;
      key.preventDefault();
      box.focus();
      box.select();
    });
  }

  // --- the live stream ----------------------------------------------------------------------

  function onLog(entry) {
    const event = entry.event;
    if (event.seq <= state.lastSeq) return;
    state.lastSeq = event.seq;
    if (event.visibility === "user") {
      showChat(event);
    } else {
      state.feed.push(entry);
      if (state.feed.length > KEEP) state.feed.shift();
      showRail(entry);
      const rail = $("rail");
      while (rail.childElementCount > KEEP) rail.lastElementChild.remove();
    }
    if (event.type === "controller.decision") $("decisions").prepend(decisionNode(event));
    const task = event.data && event.data.task;
    if (event.type.startsWith("task.") && task && typeof task === "object" && task.id) showTask(task, entry.playbook);
    if (event.seq === state.pendingSeq) reveal(event.seq);
  }

  function setLink(stateName, text) {
    const link = $("link");
    link.dataset.state = stateName;
    link.textContent = text;
  }

  function connect() {
    const source = new EventSource(`/api/events?conversation=${encodeURIComponent(state.cid)}`);
    state.source = source;
    source.addEventListener("log", (m) => onLog(JSON.parse(m.data)));
    source.addEventListener("delta", (m) => showDelta(JSON.parse(m.data)));
    source.addEventListener("status", (m) => {
      const status = JSON.parse(m.data);
      if (status.daemon === "up") setLink("live", "live");
      else setLink("down", `the daemon is not answering; retrying (${status.detail})`);
    });
    source.addEventListener("fatal", (m) => {
      const fatal = JSON.parse(m.data);
      source.close();
      setLink("error", `the daemon refused this conversation: ${fatal.message} (${fatal.code})`);
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setLink("error", "the console stopped answering; reload to retry");
      else setLink("connecting", "reconnecting…");
    };
  }

  // --- sending ------------------------------------------------------------------------------

  async function send(submit) {
    submit.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    const error = $("chat-error");
    if (!text) {
      error.textContent = "Write something first.";
      return;
    }
    $("chat-send").disabled = true;
    error.textContent = "";
    try {
      const response = await fetch("/api/chat", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ conversation_id: state.cid, text }),
      });
      if (!response.ok) throw new Error(describeError(await response.json().catch(() => ({})), response.status));
      input.value = "";
      unmark(); // back to following the chat
    } catch (failure) {
      error.textContent = `Not sent: ${failure.message}`;
    } finally {
      $("chat-send").disabled = false;
      input.focus();
    }
  }

  // --- the page -----------------------------------------------------------------------------

  function setUpTheme() {
    const button = $("theme");
    const apply = (theme) => {
      if (theme) document.documentElement.dataset.theme = theme;
      const dark = theme ? theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
      button.setAttribute("aria-pressed", dark ? "true" : "false");
      button.textContent = dark ? "Light theme" : "Dark theme";
    };
    let saved = null;
    try { saved = localStorage.getItem("sidecar-theme"); } catch { /* storage may be off */ }
    apply(saved === "light" || saved === "dark" ? saved : null);
    button.addEventListener("click", () => {
      const theme = button.getAttribute("aria-pressed") === "true" ? "light" : "dark";
      try { localStorage.setItem("sidecar-theme", theme); } catch { /* kept for this page only */ }
      apply(theme);
    });
  }

  function setUpFilters() {
    const levels = $("levels");
    for (const level of LEVELS) {
      const box = el("input", { type: "checkbox", id: `level-${level}`, "data-role": "filter-level", value: level });
      box.checked = true;
      levels.append(el("label", {}, box, ` ${level}`));
    }
    $("show-all").addEventListener("change", redrawRail);
    levels.addEventListener("change", redrawRail);
  }

  async function setUpPicker() {
    const picker = $("conversation");
    const { conversations } = await getJSON("/api/conversations");
    if (!state.cid && conversations.length) {
      state.cid = conversations[0].conversation_id;
      params.set("conversation", state.cid);
      history.replaceState(null, "", `/?${params}`);
    }
    const ids = conversations.map((c) => c.conversation_id);
    if (state.cid && !ids.includes(state.cid)) ids.unshift(state.cid); // new: no event yet
    for (const id of ids) picker.append(el("option", { value: id }, id));
    picker.value = state.cid;
    picker.addEventListener("change", () => {
      location.search = `?conversation=${encodeURIComponent(picker.value)}`;
    });
  }

  async function start() {
    setUpTheme();
    setUpFilters();
    setUpSearch();
    $("chat-form").addEventListener("submit", send);
    $("chat-input").addEventListener("keydown", (key) => {
      if (key.key === "Enter" && !key.shiftKey && !key.isComposing) {
        key.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    try {
      await setUpPicker();
      if (!state.cid) {
        setLink("idle", "no conversation yet: the daemon has none");
        $("chat-send").disabled = true;
        return;
      }
      document.title = `${state.cid} · sidecar console`;
      const [{ playbooks }, { tasks }] = await Promise.all([
        getJSON("/api/playbooks"),
        getJSON(`/api/tasks?conversation=${encodeURIComponent(state.cid)}`),
      ]);
      for (const playbook of playbooks) state.playbooks.set(playbook.id, playbook);
      for (const task of tasks) showTask(task, null);
    } catch (failure) {
      setLink("error", `could not load the page's data: ${failure.message}`);
    }
    if (state.cid) connect();
    if ($("search").value.trim()) search(); // the search that led here from another conversation
  }

  start();
})();
