// Raters read this file: like the page, it must not name the compared methods.
// The rater page's link to the study's server. The page calls `studyServer.start` instead
// of reading this browser's storage, and `studyServer.save` whenever its state changes; the
// answers then live on the server, so a reload or another device resumes where the rater was.
// The rater's token is the link's fragment (`/#TOKEN`): browsers never send a fragment to a
// server, so it reaches the server only in the Authorization header of these requests.
"use strict";
window.studyServer = (function () {
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  let sentAnswers = {};      // trial id -> the JSON last acknowledged (or in flight)
  let sentSession = "";
  let queue = Promise.resolve();
  let pending = 0;
  let failed = false;
  let latest = null;         // the page's state at the last save, to retry from
  let retryTimer = null;

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
    queue = queue.then(() => request(method, path, body)).then(() => {
      pending -= 1;
      if (failed && pending === 0) { failed = false; note(""); }
      status();
    }, e => {
      pending -= 1; failed = true; onFail();
      note("Not saved: " + e.message + ". Keep this page open; it tries again.");
      status();
      if (!retryTimer) retryTimer = setTimeout(() => { retryTimer = null; if (latest) save(latest); }, 3000);
    });
  }
  function save(state) {
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
  function start(resume) {
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
      const s = data.state;
      for (const [id, a] of Object.entries(s.answers)) {
        sentAnswers[id] = JSON.stringify({ trial: id, similarity: a.similarity, prompt: a.prompt, ms: a.ms });
      }
      const name = document.getElementById("name");
      if (name && !name.value) {
        name.value = s.name || s.rater;
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
  return { start, save, pending: () => pending };
})();
