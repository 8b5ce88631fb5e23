// Raters read this file: like the page, it must not name the compared methods.
// The rater page's link to the study's server. The page calls `studyServer.start` instead
// of reading this browser's storage, and `studyServer.save` whenever its state changes; the
// answers then live on the server, so a reload or another device resumes where the rater was.
// The rater's token is the link's fragment (`/#TOKEN`): browsers never send a fragment to a
// server, so it reaches the server only in the Authorization header of these requests.
// One page is one rater: the token is read once, and every request of the page carries it.
// Opening another rater's link in the same tab changes only the fragment, which browsers do
// without loading the page again; the page then lets the answers already given reach the
// server under their own rater, and loads itself again under the new link (`switchRater`).
// Nothing is kept in this browser's storage: what the page holds lives as long as the page.
"use strict";
window.studyServer = (function () {
  function tokenOf(hash) {
    try { return decodeURIComponent(hash.replace(/^#/, "")); } catch (e) { return hash.replace(/^#/, ""); }
  }
  const token = tokenOf(location.hash);
  let rater = "";            // who this link is, as the organiser named them
  let defaultName = "";      // the name the page uses when the rater types none
  let sentAnswers = {};      // trial id -> the JSON last acknowledged (or in flight)
  let sentSession = "";
  let queue = Promise.resolve();
  let pending = 0;
  let failed = false;
  let latest = null;         // the page's state at the last save, to retry from
  let retryTimer = null;
  let release = null;        // the page's way to let go of its state (a clock, keys)
  let closed = false;        // another link was opened in this tab: no more answers here

  function request(method, path, body) {
    return fetch(path, {
      method, cache: "no-store",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(r => r.json().catch(() => ({})).then(data => {
      if (!r.ok) throw new Error(data.error || ("the server answered " + r.status));
      return data;
    }));
  }
  function note(text) {
    const w = document.getElementById("warning");
    if (!w) return;
    w.textContent = text;
    w.classList.toggle("hidden", !text);
  }
  function status() {
    const s = document.getElementById("serve-status");
    if (s) s.textContent = failed ? "not saved yet" : pending > 0 ? "saving\u2026" : "all answers saved";
    document.body.dataset.pending = String(pending);
  }
  // Requests go one after another, in the order the rater acted.
  function send(method, path, body, onFail) {
    pending += 1; status();
    queue = queue.then(() => request(method, path, body)).then(data => {
      pending -= 1;
      if (failed && pending === 0) { failed = false; note(""); }
      if (data && data.note) note(data.note);
      status();
    }, e => {
      pending -= 1; failed = true; onFail();
      note("Not saved: " + e.message + ". Keep this page open; it tries again.");
      status();
      if (!retryTimer) retryTimer = setTimeout(() => { retryTimer = null; if (latest) push(latest); }, 3000);
    });
  }
  function save(state) {
    if (!closed) push(state);
  }
  function push(state) {
    latest = state;
    for (const [id, a] of Object.entries(state.answers || {})) {
      const body = { trial: id, similarity: a.similarity || null, prompt: a.prompt || null,
        ms: Math.max(0, Math.round(a.ms || 0)) };
      const json = JSON.stringify(body);
      if (sentAnswers[id] === json) continue;
      sentAnswers[id] = json;
      send("POST", "api/rater/answer", body, () => { if (sentAnswers[id] === json) delete sentAnswers[id]; });
    }
    const session = { name: state.rater, order: state.order, pos: state.pos, started: state.started };
    const json = JSON.stringify(session);
    if (json !== sentSession) {
      sentSession = json;
      send("POST", "api/rater/session", session, () => { if (sentSession === json) sentSession = ""; });
    }
  }
  // A free comment for the organiser, under the thank-you.
  function commentBox() {
    const done = document.getElementById("done");
    if (!done || document.getElementById("comment")) return;
    const label = document.createElement("label");
    label.htmlFor = "comment";
    label.textContent = "A comment for the people running the study (optional)";
    const text = document.createElement("textarea");
    text.id = "comment"; text.rows = 3; text.maxLength = 4000;
    text.style.cssText = "width:100%;font:inherit;margin-top:6px";
    // Typing here is text, not the page's answer keys.
    text.addEventListener("keydown", e => e.stopPropagation());
    const button = document.createElement("button");
    button.id = "send-comment"; button.textContent = "Send comment";
    const sent = document.createElement("span");
    sent.id = "comment-sent"; sent.className = "keys";
    button.addEventListener("click", () => {
      sent.textContent = "sending…";
      request("POST", "api/rater/session", { comment: text.value }).then(
        () => { sent.textContent = "comment saved"; },
        e => { sent.textContent = "not saved: " + e.message; });
    });
    const row = document.createElement("div");
    row.className = "row"; row.append(button, sent);
    const box = document.createElement("div");
    box.style.textAlign = "left"; box.style.marginTop = "18px";
    box.append(label, text, row);
    done.append(box);
  }
  // Whom this page answers as, in words nobody can miss.
  function showRater(s) {
    let who = document.getElementById("served-as");
    if (!who) {
      who = document.createElement("div");
      who.id = "served-as";
      who.style.cssText = "background:var(--accent-soft);border:1px solid var(--accent);" +
        "border-radius:8px;padding:8px 14px;margin-bottom:12px";
      const main = document.querySelector("main");
      if (main) main.prepend(who);
    }
    const line = document.createElement("b");
    line.textContent = "You are rating as " + s.rater + (s.name && s.name !== s.rater ? " (" + s.name + ")" : "");
    const hint = document.createElement("span");
    hint.className = "keys";
    hint.textContent = " \u2014 not you? Open your own link.";
    who.replaceChildren(line, hint);
    document.body.dataset.rater = s.rater;
    document.title = "Image comparison study \u2014 " + s.rater;
  }
  // Another link in the address bar of this tab: the answers given so far belong to this
  // page's rater and are sent with this page's token; then the page loads again, as the new
  // link's rater. Until then it takes no answers.
  function switchRater() {
    if (closed || tokenOf(location.hash) === token) return;
    if (release) release();
    closed = true;
    for (const id of ["start", "trial", "done"]) {
      const el = document.getElementById(id);
      if (el) el.classList.add("hidden");
    }
    const who = rater || "the previous rater";
    const wait = () => {
      if (pending === 0 && !failed) { location.reload(); return; }
      note("Another link was opened in this tab. Saving the last answers of " + who +
        " first" + (failed ? " (not saved yet: the page keeps trying)" : "") + "\u2026");
      setTimeout(wait, 100);
    };
    wait();
  }
  window.addEventListener("hashchange", switchRater);
  function start(resume, onRelease) {
    release = onRelease || null;
    // A reload must not bring back a name typed under another link.
    const nameBox = document.getElementById("name");
    if (nameBox) nameBox.autocomplete = "off";
    const sw = document.getElementById("switch");
    if (sw) sw.classList.add("hidden");
    const saving = document.getElementById("saving-note");
    if (saving) saving.textContent = "Your answers are saved on the study's server as you go: you can " +
      "close this page and come back to your link later, on this or another device.";
    const sendNote = document.getElementById("send-note");
    if (sendNote) sendNote.textContent = "Your answers are saved. Downloading them is optional.";
    commentBox();
    const box = document.getElementById("rater-box");
    if (box && !document.getElementById("serve-status")) {
      const s = document.createElement("span");
      s.id = "serve-status";
      s.className = "keys";
      box.prepend(s, " ");
    }
    if (!token) {
      note("This page needs your personal link (the address you were sent, ending in #...).");
      return;
    }
    request("GET", "api/rater").then(data => {
      if (closed) return;
      const s = data.state;
      rater = s.rater;
      showRater(s);
      for (const [id, a] of Object.entries(s.answers)) {
        sentAnswers[id] = JSON.stringify({ trial: id, similarity: a.similarity, prompt: a.prompt, ms: a.ms });
      }
      // The name box offers the rater's name as a placeholder, never as text to type after.
      const name = document.getElementById("name");
      defaultName = s.name || s.rater;
      if (name) {
        name.placeholder = defaultName;
        name.dispatchEvent(new Event("input"));
      }
      const comment = document.getElementById("comment");
      if (comment && s.comment) comment.value = s.comment;
      if (!s.order) { resume(null); status(); return; }
      sentSession = JSON.stringify({ name: s.name || s.rater, order: s.order, pos: s.pos, started: s.started });
      resume({ rater: s.name || s.rater, order: s.order, pos: s.pos, started: s.started,
        answers: s.answers });
      status();
    }, e => note("Cannot load your answers: " + e.message));
  }
  // Leaving while an answer is still on its way would lose it: ask first.
  window.addEventListener("beforeunload", e => { if (pending > 0) e.preventDefault(); });
  return { start, save, pending: () => pending, defaultName: () => defaultName };
})();
