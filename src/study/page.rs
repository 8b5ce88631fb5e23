//! The rater page: one self-contained `index.html` (inline CSS and script, the trial list
//! embedded as JSON, images by relative path), so it works from `file://` and from any
//! static host, with no request beyond the study's own images.
//!
//! It asks for a rater name, shuffles the trial order for that rater (keeping the two
//! presentations of a repeated pair apart), shows one pair at a time with the reference
//! photos and the prompt, and asks the paper's two questions, each Left / Tie / Right.
//! Answers are autosaved in `localStorage` under the study id, so a reload or a closed tab
//! loses nothing; the votes are downloaded as JSON. Served by `moslora study serve`, the page
//! gets `serve.js`, which defines `window.studyServer`: answers then load from and save to the
//! server instead (the hooks are the few lines that test `SERVER`).
//!
//! The page must not name the compared methods, not even in its code: the template avoids
//! such words, and the tests search it.

use serde::Serialize;

use crate::error::{Error, Result};

/// What the page knows about a study: nothing that tells the sides apart.
#[derive(Debug, Clone, Serialize)]
pub struct PageStudy {
    pub study_id: String,
    pub subjects: Vec<PageSubject>,
    pub trials: Vec<PageTrial>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageSubject {
    /// Reference photos, relative to the page.
    pub photos: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageTrial {
    pub id: String,
    /// Index into [`PageStudy::subjects`].
    pub subject: usize,
    /// The prompt as raters read it.
    pub prompt: String,
    pub left: String,
    pub right: String,
}

/// The page with the study embedded.
pub fn render(study: &PageStudy) -> Result<String> {
    let json = serde_json::to_string(study).map_err(|e| Error::msg(e.to_string()))?;
    Ok(TEMPLATE.replace("__STUDY_JSON__", &crate::html::script_json(&json)))
}

const TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Image comparison study</title>
<style>
:root {
  --bg: #eef0f4; --card: #ffffff; --ink: #1c2230; --mute: #667085; --line: #d7dbe3;
  --accent: #2f6fde; --accent-soft: #e4edfc; --good: #1f9d55;
}
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif;
  background: var(--bg); color: var(--ink); }
header { display: flex; align-items: center; gap: 18px; padding: 10px 22px; background: var(--card);
  border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 5; }
header h1 { font-size: 17px; margin: 0; font-weight: 650; white-space: nowrap; }
.progress { flex: 1; display: flex; align-items: center; gap: 12px; min-width: 120px; }
.bar { flex: 1; height: 8px; background: #e3e6ec; border-radius: 4px; overflow: hidden; }
.bar > div { height: 100%; width: 0; background: var(--accent); transition: width .2s; }
#progress-text { color: var(--mute); white-space: nowrap; font-variant-numeric: tabular-nums; }
#rater-box { color: var(--mute); white-space: nowrap; }
#rater-box b { color: var(--ink); }
button { font: inherit; border: 1px solid var(--line); background: var(--card); color: var(--ink);
  border-radius: 8px; padding: 7px 14px; cursor: pointer; }
button:hover:not(:disabled) { border-color: var(--accent); }
button:disabled { opacity: .45; cursor: default; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.link { border: none; background: none; color: var(--accent); padding: 4px 6px; }
kbd { font: 12px ui-monospace, Menlo, Consolas, monospace; border: 1px solid var(--line);
  border-bottom-width: 2px; border-radius: 4px; padding: 0 5px; background: #f7f8fa; color: var(--mute); }
main { max-width: 1500px; margin: 0 auto; padding: 12px 22px 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 12px 16px; }
.hidden { display: none !important; }
#start { max-width: 680px; margin: 40px auto; }
#start h2, #done h2 { margin-top: 0; }
#start ul { padding-left: 20px; color: #333b4d; }
#start label { display: block; font-weight: 600; margin: 18px 0 6px; }
#name { font: inherit; width: 100%; padding: 9px 12px; border: 1px solid var(--line); border-radius: 8px; }
#name:focus { outline: 2px solid var(--accent-soft); border-color: var(--accent); }
.row { display: flex; gap: 10px; align-items: center; margin-top: 14px; }
.context { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 14px; }
.label { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--mute);
  margin-bottom: 6px; font-weight: 600; }
.thumbs { display: flex; gap: 8px; overflow-x: auto; }
.thumbs img { height: 66px; width: auto; border-radius: 6px; border: 1px solid var(--line); cursor: zoom-in; }
#prompt-text { font-size: 19px; font-weight: 550; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-top: 12px; }
.pair figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 6px 10px 10px; display: flex; flex-direction: column; align-items: center; }
.pair figcaption { align-self: flex-start; font-weight: 650; margin-bottom: 4px; }
/* Fill the box whatever the render size (small test renders are scaled up, 1024 px ones down). */
.pair img { display: block; width: 100%; height: max(220px, calc(100vh - 430px)); object-fit: contain;
  cursor: zoom-in; }
.questions { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-top: 12px; }
.question .text { font-weight: 600; }
.question .hint { color: var(--mute); font-size: 13px; margin-bottom: 6px; }
.choices { display: grid; grid-template-columns: 1fr .8fr 1fr; gap: 8px; }
.choices button { padding: 7px 6px; display: flex; justify-content: center; gap: 8px; align-items: center; }
.choices button.chosen { background: var(--accent); border-color: var(--accent); color: #fff; }
.choices button.chosen kbd { background: rgba(255,255,255,.2); color: #fff; border-color: rgba(255,255,255,.5); }
.nav { display: flex; justify-content: space-between; align-items: center; margin-top: 10px; }
.nav .keys { color: var(--mute); font-size: 13px; }
#done { max-width: 680px; margin: 40px auto; text-align: center; }
#done .big { font-size: 44px; color: var(--good); }
#warning { background: #fff4e5; border: 1px solid #f5c27a; color: #7a4b00; padding: 8px 14px;
  border-radius: 8px; margin-bottom: 12px; }
#zoom { position: fixed; inset: 0; background: rgba(10, 12, 18, .86); display: flex; align-items: center;
  justify-content: center; z-index: 10; cursor: zoom-out; }
#zoom img { width: 96vw; height: 96vh; object-fit: contain; }
@media (max-width: 800px) {
  .context, .questions { grid-template-columns: 1fr; }
  header { flex-wrap: wrap; }
}
</style>
</head>
<body>
<header>
  <h1>Image comparison study</h1>
  <div class="progress"><div class="bar"><div id="bar"></div></div><span id="progress-text"></span></div>
  <span id="rater-box" class="hidden">Rater: <b id="rater-name"></b>
    <button class="link" id="switch" title="Start again under another name">new rater</button></span>
  <button id="download" class="hidden">Download votes</button>
</header>
<main>
  <div id="warning" class="hidden"></div>

  <section id="start" class="card hidden">
    <h2>Which image is better?</h2>
    <p>You will see pairs of pictures of one subject. For each pair, answer two questions:</p>
    <ul>
      <li><b>Subject:</b> which image shows the subject of the reference photos more faithfully
        (its shape, colours, details)?</li>
      <li><b>Prompt:</b> which image follows the text prompt better (the scene, style, action)?</li>
    </ul>
    <p>Choose <b>Tie</b> when neither is better. There are no right answers: go with your first
      impression. <span id="saving-note">Your answers are saved in this browser as you go; at the end, download them
      and send the file back.</span></p>
    <p>Keys: <kbd>A</kbd> <kbd>S</kbd> <kbd>D</kbd> answer the first question (left, tie, right),
      <kbd>J</kbd> <kbd>K</kbd> <kbd>L</kbd> the second, <kbd>Enter</kbd> goes on,
      <kbd>Backspace</kbd> goes back.</p>
    <label for="name">Your name</label>
    <input id="name" autocomplete="name" placeholder="e.g. Alex">
    <div class="row"><button id="begin" class="primary" disabled>Start</button>
      <span id="count" class="keys"></span></div>
  </section>

  <section id="trial" class="hidden">
    <div class="context">
      <div class="card"><div class="label">Reference photos of the subject</div><div class="thumbs" id="thumbs"></div></div>
      <div class="card"><div class="label">Prompt</div><div id="prompt-text"></div></div>
    </div>
    <div class="pair">
      <figure><figcaption>Left</figcaption><img id="img-left" alt="left image"></figure>
      <figure><figcaption>Right</figcaption><img id="img-right" alt="right image"></figure>
    </div>
    <div class="questions" id="questions"></div>
    <div class="nav">
      <button id="back">&larr; Back</button>
      <span class="keys" id="trial-text"></span>
      <button id="next" class="primary">Next &rarr;</button>
    </div>
  </section>

  <section id="done" class="card hidden">
    <div class="big">&#10003;</div>
    <h2>Thank you, <span id="done-name"></span>!</h2>
    <p id="done-text"></p>
    <div class="row" style="justify-content:center">
      <button id="download-done" class="primary">Download votes</button>
      <button id="review">Review answers</button>
    </div>
    <p class="keys" id="send-note">Send the downloaded file to the person running the study.</p>
  </section>
</main>
<div id="zoom" class="hidden"><img alt="enlarged image"></div>

<script type="application/json" id="study-data">__STUDY_JSON__</script>
<script>
"use strict";
const STUDY = JSON.parse(document.getElementById("study-data").textContent);
const STORE = "study-" + STUDY.study_id;
const SERVER = window.studyServer || null;  // set by serve.js when a server serves the page
const TRIALS = new Map(STUDY.trials.map(t => [t.id, t]));
const N = STUDY.trials.length;
const CHOICES = ["left", "tie", "right"];
const QUESTIONS = [
  { field: "similarity", keys: ["a", "s", "d"], text: "1. Which image shows the subject more faithfully?",
    hint: "Compare both with the reference photos." },
  { field: "prompt", keys: ["j", "k", "l"], text: "2. Which image follows the prompt better?",
    hint: "Judge the scene, style and action the prompt describes." },
];
const $ = id => document.getElementById(id);
let state = null;       // { rater, order, pos, answers: { id: { similarity, prompt, ms } }, started }
let shownAt = null;     // when the current trial was last shown (for the time taken)
let storageOk = true;

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE));
    if (s && Array.isArray(s.order) && s.order.length === N && s.order.every(id => TRIALS.has(id))) return s;
  } catch (e) { /* nothing saved, or unreadable: start afresh */ }
  return null;
}
function save() {
  if (!state) return;
  state.saved = new Date().toISOString();
  if (SERVER) { SERVER.save(state); return; }
  try { localStorage.setItem(STORE, JSON.stringify(state)); }
  catch (e) { warn("Your browser does not let this page save answers: keep this tab open and download your votes at the end."); }
}
function warn(text) { storageOk = false; $("warning").textContent = text; $("warning").classList.remove("hidden"); }

function random(n) {  // uniform in 0..n-1
  const buf = new Uint32Array(1);
  const limit = Math.floor(0x100000000 / n) * n;
  do { crypto.getRandomValues(buf); } while (buf[0] >= limit);
  return buf[0] % n;
}
// A fresh order per rater. The two showings of a repeated pair (same images, sides swapped)
// are kept as far apart as a few tries of shuffling allow.
function shuffledOrder() {
  const ids = STUDY.trials.map(t => t.id);
  const group = id => { const t = TRIALS.get(id); return [t.left, t.right].sort().join("|"); };
  let best = null, bestGap = -1;
  for (let attempt = 0; attempt < 200; attempt++) {
    const o = ids.slice();
    for (let i = o.length - 1; i > 0; i--) { const j = random(i + 1); [o[i], o[j]] = [o[j], o[i]]; }
    const seen = new Map(); let gap = Infinity;
    o.forEach((id, i) => { const g = group(id); if (seen.has(g)) gap = Math.min(gap, i - seen.get(g)); seen.set(g, i); });
    if (gap > bestGap) { best = o; bestGap = gap; }
    if (gap >= Math.min(5, Math.floor(N / 3))) break;
  }
  return best;
}

function answered(id) { const a = state.answers[id]; return !!(a && a.similarity && a.prompt); }
function answeredCount() { return state.order.filter(answered).length; }
function current() { return TRIALS.get(state.order[state.pos]); }

function show(section) {
  for (const s of ["start", "trial", "done"]) $(s).classList.toggle("hidden", s !== section);
  const active = section !== "start";
  $("rater-box").classList.toggle("hidden", !active);
  $("download").classList.toggle("hidden", !active);
}
function updateProgress() {
  const k = state ? answeredCount() : 0;
  $("bar").style.width = (100 * k / N) + "%";
  $("progress-text").textContent = k + " of " + N + " answered";
  $("download").textContent = "Download votes (" + k + "/" + N + ")";
}

// Time taken: the time each trial was on screen, summed over visits, paused while hidden.
function stopClock() {
  if (!state || shownAt === null || state.pos >= N) return;
  const id = state.order[state.pos];
  const a = state.answers[id] || (state.answers[id] = {});
  a.ms = (a.ms || 0) + (Date.now() - shownAt);
  shownAt = null;
}
function startClock() { shownAt = Date.now(); }

function buildQuestions() {
  const box = $("questions");
  QUESTIONS.forEach((q, qi) => {
    const card = document.createElement("div");
    card.className = "card question";
    const text = document.createElement("div"); text.className = "text"; text.textContent = q.text;
    const hint = document.createElement("div"); hint.className = "hint"; hint.textContent = q.hint;
    const row = document.createElement("div"); row.className = "choices";
    CHOICES.forEach((c, ci) => {
      const b = document.createElement("button");
      b.dataset.question = q.field; b.dataset.choice = c;
      const label = document.createElement("span");
      label.textContent = c === "left" ? "\u25C0 Left" : c === "right" ? "Right \u25B6" : "Tie";
      const key = document.createElement("kbd"); key.textContent = q.keys[ci].toUpperCase();
      b.append(label, key);
      b.addEventListener("click", () => choose(qi, c));
      row.append(b);
    });
    card.append(text, hint, row);
    box.append(card);
  });
}

function renderTrial() {
  const t = current();
  const thumbs = $("thumbs");
  thumbs.replaceChildren(...STUDY.subjects[t.subject].photos.map(src => {
    const img = document.createElement("img"); img.src = src; img.alt = "reference photo"; return img;
  }));
  $("prompt-text").textContent = t.prompt;
  $("img-left").src = t.left;
  $("img-right").src = t.right;
  $("trial").dataset.trial = t.id;
  $("trial").dataset.position = String(state.pos + 1);
  renderAnswers();
  $("trial-text").textContent = "Pair " + (state.pos + 1) + " of " + N;
  $("back").disabled = state.pos === 0;
  show("trial");
  updateProgress();
  startClock();
}
function renderAnswers() {
  const a = state.answers[current().id] || {};
  document.querySelectorAll(".choices button").forEach(b => {
    b.classList.toggle("chosen", a[b.dataset.question] === b.dataset.choice);
  });
  $("next").disabled = !answered(current().id);
  $("next").textContent = state.pos === N - 1 ? "Finish \u2192" : "Next \u2192";
}

function choose(qi, choice) {
  if (!state || state.pos >= N) return;
  const id = current().id;
  const a = state.answers[id] || (state.answers[id] = {});
  a[QUESTIONS[qi].field] = choice;
  save();
  renderAnswers();
  updateProgress();
}
function next() {
  if (!state || state.pos >= N || !answered(current().id)) return;
  stopClock();
  state.pos += 1;
  save();
  if (state.pos >= N) finish(); else renderTrial();
}
function back() {
  if (!state || state.pos === 0) return;
  stopClock();
  state.pos -= 1;
  save();
  renderTrial();
}
function finish() {
  const missing = N - answeredCount();
  if (missing > 0) {  // came here by skipping: go to the first open trial
    state.pos = state.order.findIndex(id => !answered(id));
    save();
    renderTrial();
    return;
  }
  $("done-name").textContent = state.rater;
  $("done-text").textContent = "All " + N + " pairs are answered. " +
    (SERVER ? "They are saved: you may close this page." : "Please download your votes now.");
  show("done");
  updateProgress();
}

function votes() {
  const list = [];
  state.order.forEach((id, i) => {
    const a = state.answers[id];
    if (!a || (!a.similarity && !a.prompt)) return;
    list.push({ trial: id, position: i + 1, similarity: a.similarity || null, prompt: a.prompt || null,
      seconds: Math.round((a.ms || 0) / 100) / 10 });
  });
  return { format: "study-votes", format_version: 1, study_id: STUDY.study_id, rater: state.rater,
    trials_total: N, answered: answeredCount(), started: state.started, saved: new Date().toISOString(),
    votes: list };
}
function download() {
  if (!state) return;
  if (shownAt !== null) { stopClock(); startClock(); }
  save();
  const blob = new Blob([JSON.stringify(votes(), null, 1)], { type: "application/json" });
  const safe = state.rater.replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 40) || "rater";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "votes-" + safe + "-" + STUDY.study_id + ".json";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// The typed name; served, the rater's own name when none is typed.
function chosenName() { return $("name").value.trim() || (SERVER ? SERVER.defaultName() : ""); }
function begin() {
  const name = chosenName();
  if (!name) return;
  state = { rater: name, order: shuffledOrder(), pos: 0, answers: {}, started: new Date().toISOString() };
  save();
  resume();
}
function resume() {
  $("rater-name").textContent = state.rater;
  if (state.pos >= N) finish(); else renderTrial();
}
function switchRater() {
  const k = answeredCount();
  if (k > 0 && !confirm("Start again under another name? The " + k + " answers of " + state.rater +
      " are removed from this browser: download them first.")) return;
  try { localStorage.removeItem(STORE); } catch (e) { /* nothing to remove */ }
  state = null; shownAt = null;
  $("name").value = "";
  $("begin").disabled = true;
  show("start");
  updateProgress();
  $("name").focus();
}

function zoom(src) { $("zoom").querySelector("img").src = src; $("zoom").classList.remove("hidden"); }

document.addEventListener("keydown", e => {
  if (e.target && e.target.tagName === "INPUT") {
    if (e.key === "Enter") begin();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (!$("zoom").classList.contains("hidden")) { $("zoom").classList.add("hidden"); e.preventDefault(); return; }
  const key = e.key.toLowerCase();
  if (!$("trial").classList.contains("hidden")) {
    for (let qi = 0; qi < QUESTIONS.length; qi++) {
      const ci = QUESTIONS[qi].keys.indexOf(key);
      if (ci >= 0) { choose(qi, CHOICES[ci]); e.preventDefault(); return; }
    }
    if (e.key === "Enter" || e.key === "ArrowRight") { next(); e.preventDefault(); }
    else if (e.key === "Backspace" || e.key === "ArrowLeft") { back(); e.preventDefault(); }
  } else if (!$("done").classList.contains("hidden")) {
    if (e.key === "Backspace" || e.key === "ArrowLeft") { state.pos = N - 1; save(); renderTrial(); e.preventDefault(); }
  }
});
document.addEventListener("visibilitychange", () => {
  if (!state || state.pos >= N || $("trial").classList.contains("hidden")) return;
  if (document.hidden) { stopClock(); save(); } else startClock();
});
window.addEventListener("pagehide", () => { stopClock(); save(); });

$("name").addEventListener("input", () => { $("begin").disabled = !chosenName(); });
$("begin").addEventListener("click", begin);
$("next").addEventListener("click", next);
$("back").addEventListener("click", back);
$("download").addEventListener("click", download);
$("download-done").addEventListener("click", download);
$("review").addEventListener("click", () => { state.pos = N - 1; save(); renderTrial(); });
$("switch").addEventListener("click", switchRater);
$("zoom").addEventListener("click", () => $("zoom").classList.add("hidden"));
for (const id of ["img-left", "img-right"]) $(id).addEventListener("click", e => zoom(e.target.src));
$("thumbs").addEventListener("click", e => { if (e.target.tagName === "IMG") zoom(e.target.src); });

buildQuestions();
const minutes = Math.max(1, Math.round(N * 12 / 60));  // about 12 s a pair
$("count").textContent = N + " pairs, about " + minutes + (minutes === 1 ? " minute" : " minutes");
function opening() { if (state) resume(); else { show("start"); updateProgress(); $("name").focus(); } }
// Served, the page answers for its link's rater only: when another link is opened in this tab,
// the server script takes the page's last state and the page lets go of it.
if (SERVER) SERVER.start(saved => { state = saved; opening(); },
  () => { stopClock(); save(); state = null; shownAt = null; });
else {
  try { localStorage.getItem(STORE); } catch (e) { warn("Your browser does not let this page save answers: keep this tab open and download your votes at the end."); }
  state = load();
  opening();
}
</script>
</body>
</html>
"##;
