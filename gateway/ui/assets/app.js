// kiln web UI: plain JavaScript, no framework. Loaded with defer on every
// page; each page's part starts from the element it owns.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function stateName(s) { return (s || "BUILD_STATE_UNSPECIFIED").replace("BUILD_STATE_", "").replace("AGENT_STATE_", ""); }
  function ts(s) { return s ? new Date(s) : null; }
  function fmtTime(s) { const d = ts(s); return d ? d.toISOString().replace("T", " ").slice(0, 19) : ""; }
  function fmtDur(sec) {
    if (!isFinite(sec) || sec < 0) return "";
    if (sec < 1) return Math.round(sec * 1000) + " ms";
    if (sec < 120) return sec.toFixed(1) + " s";
    return Math.floor(sec / 60) + " m " + Math.round(sec % 60) + " s";
  }
  function protoDur(d) { if (!d) return 0; const m = /^(-?[\d.]+)s$/.exec(d); return m ? parseFloat(m[1]) : 0; }
  function buildLink(b) { return el("a", { href: "/ui/builds/" + b.id, text: b.id }); }
  function statePill(s) { const n = stateName(s); return el("span", { class: "state state-" + n.toLowerCase(), text: n }); }

  async function post(url, body) {
    const form = new URLSearchParams(body || {});
    const r = await fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf }, body: form, credentials: "same-origin" });
    if (!r.ok) throw new Error((await r.text()).trim() || r.statusText);
    return r.json();
  }
  function showError(msg) {
    let box = document.getElementById("flash");
    if (!box) { box = el("p", { id: "flash", class: "error", role: "alert" }); document.getElementById("main").prepend(box); }
    box.textContent = msg;
  }

  // Forms with class js-post are sent with fetch (the CSRF token in a
  // header); without JavaScript they post as plain forms.
  document.addEventListener("submit", (e) => {
    const f = e.target;
    if (!f.classList || !f.classList.contains("js-post")) return;
    e.preventDefault();
    post(f.action, Object.fromEntries(new FormData(f))).then((res) => {
      if (res && res.id && res.id !== (document.getElementById("build") || {}).dataset?.id) location.href = "/ui/builds/" + res.id;
    }).catch((err) => showError(err.message));
  });

  // ---- Farm overview ------------------------------------------------------
  const overview = document.getElementById("overview");
  if (overview) {
    const fill = (id, rows) => { const tb = document.getElementById(id); if (tb) tb.replaceChildren(...rows); };
    const refresh = async () => {
      try {
        const r = await fetch("/ui/api/overview", { credentials: "same-origin" });
        if (r.status === 401) { location.href = "/ui/login?next=/ui/"; return; }
        const d = await r.json();
        fill("queues", d.queues.map((q) => el("tr", {}, el("td", { text: q.tenant }), el("td", { text: q.queued }), el("td", { text: q.running }),
          el("td", { text: q.queued ? fmtDur(q.max_wait_seconds) : "" }), el("td", { text: q.queued ? fmtDur(q.avg_wait_seconds) : "" }))));
        fill("running", d.running.length ? d.running.map((b) => el("tr", {}, el("td", {}, buildLink(b)), el("td", { text: b.tenant }),
          el("td", { text: (b.spec || {}).repository || "" }), el("td", {}, statePill(b.state)), el("td", { text: b.agent || "" }), el("td", { text: fmtTime(b.started_at) })))
          : [el("tr", {}, el("td", { colspan: 6, text: "Nothing running." }))]);
        fill("failures", d.failures.length ? d.failures.map((b) => el("tr", {}, el("td", {}, buildLink(b)), el("td", { text: b.tenant }),
          el("td", { text: (b.spec || {}).repository || "" }), el("td", { text: fmtTime(b.finished_at) }), el("td", { text: b.error || "" })))
          : [el("tr", {}, el("td", { colspan: 5, text: "No recent failures." }))]);
        fill("agents", d.agents.map((a) => {
          const draining = stateName(a.state) === "DRAINING";
          const form = el("form", { method: "post", action: "/ui/agents/" + encodeURIComponent(a.name) + "/drain", class: "inline js-post" },
            el("input", { type: "hidden", name: "csrf", value: csrf }),
            el("input", { type: "hidden", name: "undrain", value: draining ? "true" : "false" }),
            el("button", { type: "submit", "aria-label": (draining ? "Undrain agent " : "Drain agent ") + a.name, text: draining ? "Undrain" : "Drain" }));
          const age = a.last_seen ? (Date.parse(d.now) - Date.parse(a.last_seen)) / 1000 : NaN;
          const labels = Object.entries(a.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
          return el("tr", {}, el("td", { text: a.name }), el("td", { text: stateName(a.state) }), el("td", { text: (a.busy_slots || 0) + "/" + (a.slots || 0) }),
            el("td", { text: (a.engine_kind || "docker") + " " + (a.engine_version || "") }),
            el("td", { text: (a.platforms || []).concat((a.emulated_platforms || []).map((p) => p + " (emulated)")).join(", ") }),
            el("td", { text: labels }),
            el("td", { text: ((a.cache || {}).lineages || []).length + " lineages" , title: ((a.cache || {}).lineages || []).join(", ") }),
            el("td", { text: isFinite(age) ? fmtDur(age) + " ago" : "" }), el("td", { text: (a.warnings || []).join("; ") }), el("td", {}, form));
        }));
        document.getElementById("updated").textContent = "Updated " + fmtTime(d.now) + " UTC";
      } catch (err) { showError("Could not refresh: " + err.message); }
    };
    refresh();
    setInterval(refresh, 2000);
  }

  // ---- ANSI colours -----------------------------------------------------
  // SGR codes to classes: 30–37/90–97 foreground, 40–47 background, bold.
  const sgrRE = /\x1b\[([0-9;]*)m/g;
  const otherEsc = /\x1b\[[0-9;?]*[A-Za-z]/g;
  function ansiSpans(text) {
    const out = [];
    let fg = "", bg = "", bold = false, last = 0, m;
    const push = (s) => {
      s = s.replace(otherEsc, "");
      if (!s) return;
      const cls = [fg, bg, bold ? "b" : ""].filter(Boolean).join(" ");
      out.push(cls ? el("span", { class: cls, text: s }) : document.createTextNode(s));
    };
    sgrRE.lastIndex = 0;
    while ((m = sgrRE.exec(text))) {
      push(text.slice(last, m.index));
      last = sgrRE.lastIndex;
      for (const c of (m[1] || "0").split(";").map(Number)) {
        if (c === 0) { fg = bg = ""; bold = false; }
        else if (c === 1) bold = true;
        else if (c === 22) bold = false;
        else if (c >= 30 && c <= 37) fg = "f" + (c - 30);
        else if (c >= 90 && c <= 97) fg = "f" + (c - 82);
        else if (c === 39) fg = "";
        else if (c >= 40 && c <= 47) bg = "g" + (c - 40);
        else if (c === 49) bg = "";
      }
    }
    push(text.slice(last));
    return out;
  }
  function stripAnsi(t) { return t.replace(sgrRE, "").replace(otherEsc, ""); }

  // ---- Build page -------------------------------------------------------
  const page = document.getElementById("build");
  if (page) {
    const id = page.dataset.id;
    const ROW = 18; // px: one log line (style.css .ln)
    const state = { build: null, lines: [], seqs: [], steps: new Map(), marks: {}, pushed: [], finished: false, state: "", history: [], initial: "" };
    window.kilnUI = state; // for tests and the curious

    const logBox = document.getElementById("log");
    const spacer = document.getElementById("log-spacer");
    let follow = true, painted = -1, paintQueued = false;
    const rows = new Map();
    function paint() {
      paintQueued = false;
      spacer.style.height = state.lines.length * ROW + "px";
      const first = Math.max(0, Math.floor(logBox.scrollTop / ROW) - 20);
      const last = Math.min(state.lines.length, Math.ceil((logBox.scrollTop + logBox.clientHeight) / ROW) + 20);
      for (const [i, r] of rows) if (i < first || i >= last) { r.remove(); rows.delete(i); }
      for (let i = first; i < last; i++) {
        if (rows.has(i)) continue;
        const seq = state.seqs[i];
        const r = el("div", { class: "ln" + (location.hash === "#L" + seq ? " hl" : ""), id: "L" + seq },
          el("a", { class: "lnum", href: "#L" + seq, "aria-label": "Line " + seq, text: String(seq) }),
          el("span", { class: "lt" }, ...ansiSpans(state.lines[i])));
        r.style.top = i * ROW + "px";
        spacer.append(r);
        rows.set(i, r);
      }
      painted = state.lines.length;
      document.getElementById("log-count").textContent = "(" + state.lines.length + " lines)";
      if (follow && !location.hash) logBox.scrollTop = logBox.scrollHeight;
    }
    function schedule() { if (!paintQueued) { paintQueued = true; requestAnimationFrame(paint); } }
    logBox.addEventListener("scroll", () => {
      follow = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - ROW * 2;
      schedule();
    });
    function jumpToHash() {
      const m = /^#L(\d+)$/.exec(location.hash);
      if (!m) return;
      const i = state.seqs.indexOf(Number(m[1]));
      if (i < 0) return;
      follow = false;
      for (const r of rows.values()) r.remove();
      rows.clear();
      logBox.scrollTop = Math.max(0, i * ROW - logBox.clientHeight / 3);
      schedule();
    }
    window.addEventListener("hashchange", jumpToHash);

    function setState(s) {
      state.state = stateName(s);
      if (state.history[state.history.length - 1] !== state.state) state.history.push(state.state);
      const pill = document.getElementById("state");
      pill.textContent = state.state;
      pill.className = "state state-" + state.state.toLowerCase();
      const done = ["SUCCEEDED", "FAILED", "CANCELLED"].includes(state.state);
      document.getElementById("cancel").disabled = done;
      document.getElementById("retry").disabled = !done;
    }

    function renderTimeline() {
      const b = state.build || {};
      const t0 = ts(b.created_at) || state.marks.first || new Date();
      const tEnd = state.marks.finished || ts(b.finished_at) || new Date();
      const span = Math.max(1, tEnd - t0);
      const rowsOut = [];
      const bar = (label, from, to, extra, cls) => {
        if (!from) return;
        to = to || tEnd;
        const left = Math.max(0, (from - t0) / span * 100), width = Math.max(0.5, (to - from) / span * 100);
        const b = el("span", { class: "bar " + (cls || "") });
        b.style.marginLeft = left.toFixed(2) + "%";
        b.style.width = Math.min(100 - left, width).toFixed(2) + "%";
        rowsOut.push(el("li", { class: "step " + (cls || "") },
          el("span", { class: "label", text: label }), extra || el("span", {}),
          el("span", { class: "dur", text: fmtDur((to - from) / 1000) }),
          el("span", { class: "track", "aria-hidden": "true" }, b)));
      };
      bar("queued", t0, state.marks.assigned || state.marks.running, null, "phase");
      if (state.marks.assigned) bar("assigned", state.marks.assigned, state.marks.running, null, "phase");
      for (const s of [...state.steps.values()].sort((a, b) => a.step - b.step)) {
        const badge = s.done ? el("span", { class: "badge " + (s.cached ? "cached" : "built"), text: s.cached ? "CACHED" : "built" }) : el("span", { class: "badge running", text: "running" });
        const li = bar("#" + s.step + " " + (s.instruction || ""), s.start, s.done ? (s.start ? new Date(+s.start + s.seconds * 1000) : s.end) : null, badge, "instr");
        const last = rowsOut[rowsOut.length - 1];
        if (last) { last.dataset.step = s.step; last.dataset.cached = String(!!s.cached); last.dataset.done = String(!!s.done); }
      }
      if (state.marks.push) bar("push", state.marks.pushStart || state.marks.push, state.marks.push, null, "phase");
      document.getElementById("steps").replaceChildren(...rowsOut);
    }

    function renderFacts() {
      const b = state.build;
      if (!b) return;
      const spec = b.spec || {};
      const ctx = b.context || {};
      const facts = [
        ["Tenant", b.tenant], ["Repository", spec.repository], ["Agent", b.agent], ["Attempt", b.attempt],
        ["Created", fmtTime(b.created_at)], ["Started", fmtTime(b.started_at)], ["Finished", fmtTime(b.finished_at)],
        ["Context", ctx.digest ? ctx.digest.size_bytes + " bytes" + (b.result ? ", " + (b.result.context_transfer_bytes || 0) + " fetched by the agent (the rest deduplicated)" : "") : ""],
        ["Steps", b.result && b.result.steps ? (b.result.cached_steps || 0) + " of " + b.result.steps + " cached" : ""],
        ["Routing", (b.affinity && b.affinity.lineage ? "lineage " + b.affinity.lineage : "") +
          ((b.attempts || []).length ? " · attempts: " + b.attempts.map((a) => a.agent + (a.reason ? " (" + a.reason + ")" : "")).join(", ") : "") +
          ((b.lost_agents || []).length ? " · lost: " + b.lost_agents.join(", ") : "")],
        ["Error", b.error],
      ];
      document.getElementById("facts").replaceChildren(...facts.filter(([, v]) => v !== undefined && v !== "" && v !== null)
        .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
      document.getElementById("metadata").textContent = JSON.stringify(b, null, 2);
      const pushed = (b.result && b.result.pushed) || state.pushed;
      document.getElementById("pushed").replaceChildren(...(pushed.length ? pushed.map((p) => {
        const ref = p.tag + (p.digest ? "@" + p.digest : "");
        const btn = el("button", { type: "button", class: "copy", "aria-label": "Copy " + ref, text: "Copy" });
        btn.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(ref).then(() => { btn.textContent = "Copied"; }));
        return el("li", {}, el("code", { text: ref }), " ", btn);
      }) : [el("li", { text: "None." })]));
    }

    async function loadBuild() {
      const r = await fetch("/ui/api/builds/" + encodeURIComponent(id), { credentials: "same-origin" });
      if (!r.ok) { showError((await r.text()).trim()); return; }
      const d = await r.json();
      state.build = d.build;
      if (!state.initial) state.initial = stateName(d.build.state);
      setState(d.build.state);
      const tr = document.getElementById("trace");
      if (d.trace_url) { tr.href = d.trace_url; tr.hidden = false; tr.rel = "noopener noreferrer"; }
      renderFacts();
      renderTimeline();
    }

    function onEvent(ev) {
      const t = ts(ev.time);
      if (!state.marks.first) state.marks.first = t;
      if (ev.log) {
        state.lines.push(ev.log.text || "");
        state.seqs.push(Number(ev.sequence));
        schedule();
        return;
      }
      if (ev.state) {
        const s = stateName(ev.state.state);
        if (s === "ASSIGNED" && !state.marks.assigned) state.marks.assigned = t;
        if (s === "RUNNING") state.marks.running = t;
        setState(ev.state.state);
      } else if (ev.step_started) {
        const s = state.steps.get(ev.step_started.step) || { step: ev.step_started.step };
        s.start = t; s.instruction = ev.step_started.instruction;
        state.steps.set(s.step, s);
      } else if (ev.step_finished) {
        const f = ev.step_finished;
        const s = state.steps.get(f.step) || { step: f.step };
        s.done = true; s.cached = !!f.cached; s.seconds = protoDur(f.duration); s.end = t;
        if (!s.instruction) s.instruction = f.instruction;
        if (!s.start) s.start = new Date(t - s.seconds * 1000);
        state.steps.set(s.step, s);
        state.marks.pushStart = t;
      } else if (ev.pushed) {
        state.pushed.push(ev.pushed);
        state.marks.push = t;
        renderFacts();
      } else if (ev.finished) {
        state.marks.finished = t;
        state.finished = true;
        setState(ev.finished.state);
      }
      scheduleTimeline();
    }
    let tlQueued = false;
    function scheduleTimeline() { if (!tlQueued) { tlQueued = true; setTimeout(() => { tlQueued = false; renderTimeline(); }, 100); } }

    loadBuild().then(() => {
      const es = new EventSource("/ui/api/builds/" + encodeURIComponent(id) + "/events");
      es.onmessage = (m) => onEvent(JSON.parse(m.data));
      es.addEventListener("logs", (m) => { // consecutive log lines, batched by the server
        const d = JSON.parse(m.data);
        const first = Number(d.first);
        for (let i = 0; i < d.lines.length; i++) { state.lines.push(d.lines[i]); state.seqs.push(first + i); }
        schedule();
      });
      es.addEventListener("end", () => {
        es.close();
        // ended: the page shows the build's final record (loadBuild renders
        // the timeline at once, not on the next scheduled render), whether
        // or not the record could be read again.
        loadBuild().finally(() => { state.ended = true; paint(); jumpToHash(); });
      });
      es.addEventListener("interrupted", () => { /* EventSource reconnects with Last-Event-ID */ });
      setTimeout(jumpToHash, 300);
    });
  }

  // ---- Trends -----------------------------------------------------------
  const trends = document.getElementById("trends");
  if (trends) {
    const repo = document.getElementById("trend-repo").value;
    const n = new URLSearchParams(location.search).get("n") || "20";
    if (repo) {
      fetch("/ui/api/trends?repository=" + encodeURIComponent(repo) + "&n=" + encodeURIComponent(n), { credentials: "same-origin" })
        .then(async (r) => { if (!r.ok) throw new Error((await r.text()).trim()); return r.json(); })
        .then((d) => trends.replaceChildren(chart(d.builds, "seconds", "Build duration (s)", "dur"), chart(d.builds, "cached_pct", "Cached steps (%)", "pct", 100)))
        .catch((err) => showError(err.message));
    }
  }
  function chart(points, key, title, cls, fixedMax) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 600, H = 160, P = 30;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    svg.setAttribute("class", "chart " + cls);
    const maxV = fixedMax || Math.max(1, ...points.map((p) => p[key]));
    const x = (i) => P + (points.length <= 1 ? 0 : i * (W - 2 * P) / (points.length - 1));
    const y = (v) => H - P - v / maxV * (H - 2 * P);
    const axis = document.createElementNS(NS, "path");
    axis.setAttribute("d", `M${P} ${P} V${H - P} H${W - P}`);
    axis.setAttribute("class", "axis");
    svg.append(axis);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", points.map((p, i) => `${x(i)},${y(p[key])}`).join(" "));
    line.setAttribute("class", "line");
    svg.append(line);
    points.forEach((p, i) => {
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", x(i)); c.setAttribute("cy", y(p[key])); c.setAttribute("r", 3);
      const t = document.createElementNS(NS, "title");
      t.textContent = `${p.id}: ${p[key].toFixed(1)}`;
      c.append(t);
      svg.append(c);
    });
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", P); label.setAttribute("y", P - 8);
    label.textContent = `${title}, max ${maxV.toFixed(1)}`;
    svg.append(label);
    return el("figure", {}, svg, el("figcaption", { text: title + " over the last " + points.length + " builds" }));
  }
})();
