// moslora app: forms and buttons post JSON with the page's CSRF token; photos upload as their
// bytes; a job page follows its job over server-sent events. Every text from the server is set
// with textContent, never as markup.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const errorBox = () => document.getElementById("error");
  function showError(msg) { const e = errorBox(); if (e) e.textContent = msg || ""; }

  async function send(method, url, body, type, name) {
    const headers = { "X-CSRF-Token": csrf, "Content-Type": type || "application/json" };
    if (name) headers["X-File-Name"] = encodeURIComponent(name);
    const r = await fetch(url, { method, body, credentials: "same-origin", headers });
    let data = {};
    try { data = await r.json(); } catch (_) { data = { error: r.statusText }; }
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  function formJson(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.name === "yaml" && !el.dataset.dirty) continue;
      if (el.type === "checkbox") {
        // A list of the ticked values (data-list), or one yes/no.
        if (el.hasAttribute("data-list")) {
          out[el.name] = out[el.name] || [];
          if (el.checked) out[el.name].push(el.value);
        } else out[el.name] = el.checked;
        continue;
      }
      out[el.name] = el.hasAttribute("data-int") ? Number(el.value) : el.value;
    }
    return out;
  }

  document.querySelectorAll("form.api").forEach((form) => {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError("");
      try {
        const data = await send("POST", form.dataset.action, JSON.stringify(formJson(form)));
        if (form.dataset.go === "url" && data.url) location.href = data.url; else location.reload();
      } catch (e) { showError(e.message); }
    });
    const yaml = form.querySelector('textarea[name="yaml"]');
    const verdict = form.querySelector("[data-yaml-check]");
    // The RUN.yaml checked as it is typed (a moment after the last key), with the command
    // line's own messages.
    let timer = null, asked = 0;
    async function checkYaml() {
      const n = ++asked;
      try {
        const data = await send("POST", "/api/check", JSON.stringify({ yaml: yaml.value }));
        if (n !== asked) return;
        verdict.textContent = data.ok ? "RUN.yaml reads: " + data.steps + " steps on " + data.device : data.error;
        verdict.className = "yaml-check " + (data.ok ? "ok" : "bad");
      } catch (e) { if (n === asked) { verdict.textContent = e.message; verdict.className = "yaml-check bad"; } }
    }
    if (yaml) yaml.addEventListener("input", () => {
      yaml.dataset.dirty = "1";
      clearTimeout(timer); timer = setTimeout(checkYaml, 300);
    });
    const preview = form.querySelector("button.preview");
    if (preview) preview.addEventListener("click", async () => {
      showError("");
      try {
        const body = formJson(form); delete body.yaml;
        const data = await send("POST", "/api/preview", JSON.stringify(body));
        yaml.value = data.yaml; delete yaml.dataset.dirty; checkYaml();
      } catch (e) { showError(e.message); }
    });
  });

  document.querySelectorAll("button.post").forEach((b) => {
    b.addEventListener("click", async () => {
      showError("");
      try {
        const data = await send("POST", b.dataset.post, "{}");
        if (b.dataset.go === "url" && data.url) location.href = data.url; else location.reload();
      }
      catch (e) { showError(e.message); }
    });
  });

  // "Sample now": asked without leaving the page; the sample arrives with the job's events.
  document.querySelectorAll("button.sample-now").forEach((b) => {
    b.addEventListener("click", async () => {
      showError("");
      const note = document.querySelector("[data-sample-note]");
      try {
        await send("POST", b.dataset.sample, "{}");
        if (note) note.textContent = "asked: the sample appears below after the next step";
      } catch (e) { showError(e.message); }
    });
  });

  // Photos: dropped or chosen, each sent as its bytes; the server checks and names it.
  document.querySelectorAll("[data-upload]").forEach((zone) => {
    const list = zone.querySelector(".uploads");
    async function upload(files) {
      let ok = 0;
      for (const f of files) {
        const li = document.createElement("li");
        li.textContent = f.name + ": sending";
        list.appendChild(li);
        try {
          const data = await send("PUT", zone.dataset.upload, f, "application/octet-stream", f.name);
          li.textContent = f.name + ": kept" + (data.checks.length ? " (" + data.checks.join("; ") + ")" : "");
          ok++;
        } catch (e) { li.textContent = f.name + ": refused: " + e.message; li.className = "bad"; }
      }
      if (ok && ok === files.length) location.reload();
    }
    zone.querySelector('input[type="file"]').addEventListener("change", (ev) => upload([...ev.target.files]));
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => { ev.preventDefault(); zone.classList.remove("over"); upload([...ev.dataTransfer.files]); });
  });

  // A photo replaced: the new file checked as an upload is, the old one kept if it is refused.
  document.querySelectorAll("input[data-replace]").forEach((input) => {
    input.addEventListener("change", async () => {
      const f = input.files[0];
      if (!f) return;
      showError("");
      try { await send("PUT", input.dataset.replace, f, "application/octet-stream", f.name); location.reload(); }
      catch (e) { showError(f.name + ": refused: " + e.message); }
    });
  });

  // Flip between LoRA and MoSLoRA on one picture.
  document.querySelectorAll("button.flipper").forEach((b) => {
    b.addEventListener("click", () => {
      const img = b.parentElement.querySelector("img[data-flip]");
      const toB = img.getAttribute("src") === img.dataset.a;
      img.setAttribute("src", toB ? img.dataset.b : img.dataset.a);
      const label = toB ? img.dataset.labelB : img.dataset.labelA;
      b.querySelector("span").textContent = label; img.alt = label;
    });
  });

  // A job, live.
  const live = document.querySelector("[data-job]");
  if (live) {
    const id = live.dataset.job;
    const $ = (sel) => live.querySelector(sel);
    // One series per curve the page drew: each adapter kind's training loss (smoothed) and
    // its validation loss, on one scale.
    const series = {};
    live.querySelectorAll("polyline[data-series]").forEach((p) => { series[p.dataset.series] = []; });
    let total = 1;
    function draw() {
      const all = [].concat(...Object.values(series)).map((p) => p[1]).filter(Number.isFinite);
      if (!all.length) return;
      const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
      for (const k of Object.keys(series)) {
        const pts = series[k].map(([s, v]) => ((s / total) * 590 + 5).toFixed(1) + "," + (195 - ((v - lo) / span) * 190).toFixed(1));
        $('polyline[data-series="' + k + '"]').setAttribute("points", pts.join(" "));
      }
    }
    function log(line) {
      const pre = $("[data-log]");
      pre.textContent += (pre.textContent ? "\n" : "") + line;
      pre.scrollTop = pre.scrollHeight;
    }
    // The status line: the phase, then its count, rate and time left, each in its own unit.
    let render = null;
    function rate(n, unit) {
      if (!(n > 0) || !Number.isFinite(n)) return "";
      return n >= 1 ? n.toFixed(2) + " " + unit + "s/s" : (1 / n).toFixed(1) + " s/" + unit;
    }
    function status(count, speed, eta) {
      $("[data-steps]").textContent = count;
      $("[data-speed]").textContent = speed;
      $("[data-eta]").textContent = eta != null && Number.isFinite(eta) ? Math.round(eta) + " s left" : "";
    }
    const es = new EventSource("/jobs/" + id + "/events");
    es.addEventListener("progress", (m) => {
      let e; try { e = JSON.parse(m.data); } catch (_) { return; }
      if (e.event === "phase") { $("[data-phase]").textContent = e.phase; status("", "", null); render = null; }
      else if (e.event === "train") { total = e.total || 1; }
      else if (e.event === "step") {
        total = e.total || 1;
        (series[e.adapter] || []).push([e.step, e.smoothed]);
        status("step " + e.step + " / " + e.total, rate(e.speed, "step"), e.eta);
        $("[data-loss]").textContent = "loss " + Number(e.smoothed).toFixed(4);
        const p = $("[data-progress]"); p.max = e.total; p.value = e.step;
        draw();
      } else if (e.event === "validation") {
        (series[e.adapter + "-validation"] || []).push([e.step, e.loss]);
        $("[data-validation-legend]").hidden = false;
        $("[data-validation]").textContent = "validation " + Number(e.loss).toFixed(4) + " (step " + e.step + ")";
        draw();
      } else if (e.event === "image") {
        // Images per second since the first image of this render.
        if (!render || e.done <= render.done) render = { done: e.done, t: e.t };
        const per = e.t > render.t ? (e.done - render.done) / (e.t - render.t) : NaN;
        status("image " + e.done + " / " + e.total, rate(per, "image"), per > 0 ? (e.total - e.done) / per : null);
        const p = $("[data-progress]"); p.max = e.total; p.value = e.done;
      } else if (e.event === "file" && e.what === "sample" && e.step != null) {
        const img = document.createElement("img");
        img.src = "/jobs/" + id + "/sample/" + encodeURIComponent(e.adapter) + "/" + Number(e.step);
        img.alt = e.adapter + " step " + e.step; img.title = img.alt;
        $("[data-samples]").appendChild(img);
      } else if (e.event === "note") log(e.message);
      else if (e.event === "done" || e.event === "stopped" || e.event === "failed") {
        $("[data-phase]").textContent = e.event; $("[data-speed]").textContent = ""; $("[data-eta]").textContent = "";
        log(e.event + ": " + e.message);
      }
    });
    es.addEventListener("state", (m) => {
      let s; try { s = JSON.parse(m.data); } catch (_) { return; }
      const badge = $("[data-state]");
      if (badge.textContent !== s.state) {
        const was = badge.textContent;
        badge.textContent = s.state; badge.className = "state state-" + s.state;
        $("[data-message]").textContent = s.message || "";
        // The buttons that fit the new state come with the page.
        if (was && ["done", "stopped", "failed", "queued", "running"].includes(s.state)) setTimeout(() => location.reload(), 300);
      }
    });
  }
})();
