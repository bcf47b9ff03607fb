// The training start form, live: what "auto" picks for each hyperparameter and why, the memory estimate and its
// verdict, and the first example rendered with its trained tokens marked, recomputed as the form changes.
// The plan comes from the server (the same service that checks the task when it is queued); without JavaScript
// the "Show the plan" button posts the form and the server renders the same table.
(function () {
  "use strict";
  const form = document.getElementById("start-training-form");
  if (!form) return;
  const planUrl = form.dataset.planUrl;
  const previewUrl = form.dataset.previewUrl;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const raw = form.querySelector("textarea[name=params]");
  const paramInputs = {};
  for (const input of form.querySelectorAll("[data-param]")) {
    if (input.name) paramInputs[input.name] = input;
  }
  document.getElementById("show-plan").hidden = true;  // the plan follows the form by itself

  function show(value) {
    if (Array.isArray(value)) return value.join(", ");
    if (value === null || value === undefined) return "—";
    return String(value);
  }

  function asFieldText(value) {
    if (Array.isArray(value)) return value.join(", ");
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  // A key of the raw JSON that has its own field moves into that field: one place holds each value.
  function moveRawKeys() {
    const note = document.getElementById("raw-note");
    const text = raw.value.trim();
    if (!text) return;
    let data;
    try { data = JSON.parse(text); } catch (e) { return; }  // the server names the JSON error
    if (data === null || typeof data !== "object" || Array.isArray(data)) return;
    const moved = [];
    for (const key of Object.keys(data)) {
      const input = paramInputs[key];
      if (!input) continue;
      const value = asFieldText(data[key]);
      if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === value)) continue;
      input.value = value;
      delete data[key];
      moved.push(key);
    }
    if (moved.length) {
      raw.value = Object.keys(data).length ? JSON.stringify(data) : "";
      note.textContent = "Moved to their fields: " + moved.join(", ") + ".";
    }
  }

  function clearErrors() {
    for (const cell of form.querySelectorAll("#param-fields .param-error")) cell.textContent = "";
    const error = document.getElementById("plan-error");
    error.textContent = "";
    error.hidden = true;
  }

  function showErrors(data) {
    const error = document.getElementById("plan-error");
    const general = [];
    for (const [name, messages] of Object.entries(data.errors || {})) {
      const row = form.querySelector(`#param-fields tr[data-param="${name}"] .param-error`);
      if (row) row.textContent = messages.join(" ");
      else general.push((name === "__all__" ? "" : name + ": ") + messages.join(" "));
    }
    if (data.detail && !general.length && !Object.keys(data.errors || {}).some((n) => paramInputs[n])) {
      general.push(data.detail);
    }
    error.textContent = general.join(" ");
    error.hidden = !general.length;
  }

  function showPlan(data) {
    const summary = document.getElementById("plan-summary");
    const memory = document.getElementById("plan-memory");
    const posted = document.getElementById("plan-params");
    if (!data.fields) {
      summary.textContent = data.incomplete || "No plan: correct the fields marked below.";
      memory.textContent = "—";
      memory.className = "";
      posted.textContent = "";
      for (const row of form.querySelectorAll("#param-fields tbody tr")) {
        row.querySelector(".auto-value").textContent = "";
        row.querySelector(".auto-reason").textContent = "";
      }
      return;
    }
    summary.textContent = `${data.examples} examples · ${data.steps_per_epoch} steps per epoch · ` +
      `${data.total_steps} steps · effective batch ${data.effective_batch_size} · device ${data.device}`;
    memory.textContent = data.memory.verdict;
    memory.className = data.memory.fits ? "fits" : "refused";
    posted.textContent = JSON.stringify(data.params);
    for (const row of form.querySelectorAll("#param-fields tbody tr")) {
      const field = data.fields[row.dataset.param];
      row.classList.toggle("given", Boolean(field && field.given));
      row.querySelector(".auto-value").textContent = field ? show(field.auto_value) : "";
      row.querySelector(".auto-reason").textContent = field ? field.auto_reason : "";
    }
  }

  let planRequest = 0;
  async function refreshPlan() {
    const mine = ++planRequest;
    const body = new FormData(form);
    body.delete("config");  // the recipe file is read when the task is queued, not on every change
    let data;
    try {
      const response = await fetch(planUrl, {method: "POST", body, credentials: "same-origin",
                                             headers: {"X-CSRFToken": csrf}});
      data = await response.json();
    } catch (e) {
      return;
    }
    if (mine !== planRequest) return;  // an answer to an older state of the form
    clearErrors();
    if (data.errors || data.detail) showErrors(data);
    showPlan(data);
    form.dataset.planned = String(mine);
  }

  let previewKey = "";
  async function refreshPreview() {
    const model = form.elements.base_model.value;
    const version = form.elements.train_version.value;
    // the template and loss_on the task will train with (empty: auto / the default)
    const template = form.elements.template ? form.elements.template.value : "";
    const lossOn = form.elements.loss_on ? form.elements.loss_on.value : "";
    const key = [model, version, template, lossOn].join("/");
    if (key === previewKey) return;
    previewKey = key;
    const box = document.getElementById("plan-preview-body");
    if (!model || !version) {
      box.innerHTML = '<p class="help">Choose a base model and the training data to see the first example rendered.</p>';
      return;
    }
    let data;
    try {
      const response = await fetch(previewUrl + "?" + new URLSearchParams({base_model: model, train_version: version,
                                                                    template: template, loss_on: lossOn}),
                                   {credentials: "same-origin"});
      data = await response.json();
    } catch (e) {
      return;
    }
    if (key !== previewKey) return;
    box.textContent = "";
    if (data.detail || !(data.examples || []).length) {
      const p = document.createElement("p");
      p.className = "errornote";
      p.textContent = data.detail || "The dataset has no example to show.";
      box.appendChild(p);
      return;
    }
    const ex = data.examples[0];
    const info = document.createElement("p");
    info.className = "help";
    info.textContent = ex.error ? "" : `Chat template: ${data.chat_template} · ${ex.tokens} tokens, ` +
      `${ex.trained_tokens} trained · highlighted text is what the loss is computed on.`;
    box.appendChild(info);
    if (ex.error) {
      const p = document.createElement("p");
      p.className = "errornote";
      p.textContent = ex.error;
      box.appendChild(p);
      return;
    }
    const pre = document.createElement("pre");
    for (const segment of ex.segments) {
      if (segment.trained) {
        const mark = document.createElement("mark");
        mark.className = "trained";
        mark.textContent = segment.text;
        pre.appendChild(mark);
      } else {
        pre.appendChild(document.createTextNode(segment.text));
      }
    }
    box.appendChild(pre);
  }

  let timer = null;
  function changed(event) {
    if (event && event.type === "change" && event.target === raw) moveRawKeys();  // once typed, not mid-word
    clearTimeout(timer);
    timer = setTimeout(refreshPlan, 250);
    refreshPreview();
  }
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  moveRawKeys();
  refreshPlan();
  refreshPreview();
})();
