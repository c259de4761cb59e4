// The translation page: languages from /v1/models, the translation streamed from /v1/translate/stream
// (greedy partials as they decode), alternatives from LibreTranslate's /translate, detection from /detect.
"use strict";

const $ = (id) => document.getElementById(id);
let routes = new Map(); // "source>target" -> {model, multilingual}
let current = null; // the AbortController of the translation in progress

function addRoute(source, target, model, multilingual) {
  const key = `${source}>${target}`;
  if (!routes.has(key)) routes.set(key, { model, multilingual });
}

async function loadLanguages() {
  const response = await fetch("/v1/models");
  const { models = [] } = await response.json();
  for (const model of models) {
    const tags = (model.languages || []).map((language) => language.tag).filter(Boolean);
    if (tags.length) {
      for (const s of tags) for (const t of tags) if (s !== t) addRoute(s, t, model.name, true);
    } else if (model.source_language && model.target_language) {
      addRoute(model.source_language, model.target_language, model.name, false);
    }
  }
  const sources = [...new Set([...routes.keys()].map((key) => key.split(">")[0]))].sort();
  const targets = [...new Set([...routes.keys()].map((key) => key.split(">")[1]))].sort();
  for (const code of sources) $("source").append(new Option(code, code));
  for (const code of targets) $("target").append(new Option(code, code));
  if (sources.length === 1) $("source").value = sources[0];
}

async function detect(text) {
  const response = await fetch("/detect", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ q: text }),
  });
  const found = await response.json();
  return Array.isArray(found) && found.length ? found[0] : null;
}

async function translate() {
  const text = $("text").value;
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  $("status").textContent = "";
  $("alternatives").replaceChildren();
  if (!text.trim()) { $("translation").textContent = ""; $("detected").textContent = ""; return; }
  let source = $("source").value;
  const target = $("target").value;
  if (source === "auto") {
    const found = await detect(text);
    if (signal.aborted) return;
    if (!found) { $("status").textContent = "cannot tell the language of this text"; return; }
    source = found.language;
    $("detected").textContent = `detected: ${source} (${found.confidence}%)`;
  } else {
    $("detected").textContent = "";
  }
  const route = routes.get(`${source}>${target}`);
  if (!route) { $("status").textContent = `${source} to ${target} is not served`; return; }
  const request = { texts: [text], model: route.model, partial_results: true };
  if (route.multilingual) Object.assign(request, { source_language: source, target_language: target });
  try {
    const response = await fetch("/v1/translate/stream", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request), signal,
    });
    if (!response.ok) { $("status").textContent = (await response.json()).error; return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const message = JSON.parse(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
        if (message.error) $("status").textContent = message.error;
        else if (message.partial) $("translation").textContent = message.partial.text || "";
        else if (message.result) $("translation").textContent = message.result.text || "";
      }
    }
    await alternatives(text, source, target, signal);
  } catch (error) {
    if (error.name !== "AbortError") $("status").textContent = String(error);
  }
}

async function alternatives(text, source, target, signal) {
  const response = await fetch("/translate", {
    method: "POST", headers: { "content-type": "application/json" }, signal,
    body: JSON.stringify({ q: text, source, target, alternatives: 2 }),
  });
  if (!response.ok) return;
  const body = await response.json();
  const shown = new Set([$("translation").textContent]);
  for (const alternative of body.alternatives || []) {
    if (shown.has(alternative)) continue;
    shown.add(alternative);
    const item = document.createElement("li");
    item.textContent = alternative;
    $("alternatives").append(item);
  }
}

let typing = null;
$("text").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(translate, 300); });
$("source").addEventListener("change", translate);
$("target").addEventListener("change", translate);
$("swap").addEventListener("click", () => {
  const source = $("source").value;
  if (source === "auto") return;
  const target = $("target").value;
  if ([...$("source").options].some((o) => o.value === target) && [...$("target").options].some((o) => o.value === source)) {
    $("source").value = target;
    $("target").value = source;
    $("text").value = $("translation").textContent;
    translate();
  }
});
loadLanguages().catch((error) => { $("status").textContent = `cannot list the languages: ${error}`; });
