// edgegen serve's page: chat with a text model (tokens streamed over SSE) or draw with an image model,
// through the same OpenAI API as any other client.  No framework, no build step, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], messages: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(response) {
  try { const body = await response.json(); return body.error ? body.error.message : response.statusText; }
  catch (e) { return response.status + " " + response.statusText; }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { setStatus(await errorText(response)); return; }
  state.models = (await response.json()).data;
  const select = $("model");
  const previous = select.value;
  select.innerHTML = "";
  for (const m of state.models) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = m.id + " (" + m.family + ")";
    select.appendChild(option);
  }
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  showPane();
  setStatus(state.models.length + " model(s)");
}

function currentModel() { return state.models.find((m) => m.id === $("model").value); }

function showPane() {
  const model = currentModel();
  const image = model && model.sizes !== undefined;
  $("chat-pane").hidden = image;
  $("image-pane").hidden = !image;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// Reads an SSE body: calls onData with each event's data field ("[DONE]" ends the stream).
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  $("send").disabled = true; $("stop").disabled = false;
  const started = performance.now();
  let reply = "", usage = null, finish = null, first = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value, messages: state.messages, stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || undefined,
        temperature: Number($("temperature").value),
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          if (first === null) first = performance.now();
          reply += choice.delta.content;
          bubble.textContent = reply;
          bubble.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      return true;
    });
    state.messages.push({ role: "assistant", content: reply });
    const meta = document.createElement("span");
    meta.className = "meta";
    const seconds = (performance.now() - started) / 1000;
    meta.textContent = (usage ? usage.completion_tokens + " tokens, " : "") + seconds.toFixed(2) + " s" +
      (first !== null ? ", first token " + Math.round(first - started) + " ms" : "") +
      (finish === "length" ? " (cut at max tokens)" : "");
    bubble.appendChild(meta);
  } catch (e) {
    if (e.name === "AbortError") {
      state.messages.push({ role: "assistant", content: reply });
      bubble.appendChild(Object.assign(document.createElement("span"), { className: "meta", textContent: "[stopped]" }));
    } else {
      bubble.classList.add("error");
      bubble.textContent = (reply ? reply + "\n" : "") + "Error: " + e.message;
      state.messages.pop();
    }
  } finally {
    bubble.classList.remove("streaming");
    bubble.classList.add("done");
    state.controller = null;
    $("send").disabled = false; $("stop").disabled = true;
  }
}

async function draw(event) {
  event.preventDefault();
  const model = currentModel();
  $("draw").disabled = true;
  setStatus("drawing...");
  try {
    const seed = $("image-seed").value;
    const response = await fetch("/v1/images/generations", {
      method: "POST", headers: headers(),
      body: JSON.stringify({
        model: model.id, prompt: $("image-prompt").value || "", n: Number($("image-n").value) || 1,
        size: model.sizes[0], response_format: "b64_json", seed: seed === "" ? undefined : Number(seed),
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    const out = $("images");
    out.innerHTML = "";
    for (const item of body.data) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + item.b64_json;
      img.alt = "generated image";
      out.appendChild(img);
    }
    setStatus(body.data.length + " image(s), " + body.size);
  } catch (e) {
    setStatus("Error: " + e.message);
  } finally {
    $("draw").disabled = false;
  }
}

$("chat-form").addEventListener("submit", sendChat);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("clear").addEventListener("click", () => { state.messages = []; $("log").innerHTML = ""; });
$("image-form").addEventListener("submit", draw);
$("model").addEventListener("change", showPane);
$("key").value = localStorage.getItem("edgegen-key") || "";
$("key").addEventListener("change", () => { localStorage.setItem("edgegen-key", $("key").value); loadModels(); });
loadModels();
