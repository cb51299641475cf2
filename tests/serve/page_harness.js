// Runs the web page's script (edgegen/serve/static/app.js) in Node against a live server, with a minimal fake
// DOM: sends one chat message as a user would and prints what the page showed, as JSON.
// Usage: node page_harness.js APP_JS SERVER_URL MESSAGE
"use strict";
const fs = require("fs");
const vm = require("vm");
const [appJs, base, message] = process.argv.slice(2);

class Element {
  constructor(tag, id) {
    this.tag = tag; this.id = id; this.children = []; this.listeners = {}; this.value = "";
    this.hidden = false; this.disabled = false; this.className = ""; this.texts = []; this._text = "";
    const el = this;
    this.classList = {
      add: (c) => { if (!el.className.split(" ").includes(c)) el.className = (el.className + " " + c).trim(); },
      remove: (c) => { el.className = el.className.split(" ").filter((x) => x !== c).join(" "); },
      contains: (c) => el.className.split(" ").includes(c),
    };
  }
  set textContent(t) { this._text = String(t); this.children = []; this.texts.push(this._text); }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set innerHTML(_) { this.children = []; this._text = ""; }
  appendChild(child) {
    this.children.push(child);
    if (this.tag === "select" && !this.value) this.value = child.value;
    return child;
  }
  addEventListener(kind, handler) { (this.listeners[kind] = this.listeners[kind] || []).push(handler); }
  requestSubmit() { for (const h of this.listeners.submit || []) h({ preventDefault() {} }); }
  scrollIntoView() {}
}

const elements = {};
const document = {
  getElementById: (id) => elements[id] || (elements[id] = new Element(id === "model" ? "select" : "div", id)),
  createElement: (tag) => new Element(tag),
};
const storage = {};
const context = {
  document, console, TextDecoder, AbortController, JSON, Math, Number, performance,
  localStorage: { getItem: (k) => storage[k] ?? null, setItem: (k, v) => { storage[k] = String(v); } },
  fetch: (url, options) => fetch(new URL(url, base), options),
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(appJs, "utf8"), context);

const $ = document.getElementById;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  for (let i = 0; i < 200 && $("model").children.length === 0; i++) await sleep(25);
  $("temperature").value = "0";
  $("max-tokens").value = "12";
  $("input").value = message;
  $("chat-form").requestSubmit();
  const log = $("log");
  for (let i = 0; i < 600; i++) {
    const bubble = log.children.find((c) => c.classList.contains("assistant"));
    if (bubble && bubble.classList.contains("done")) {
      const meta = bubble.children.find((c) => c.className === "meta");
      console.log(JSON.stringify({ models: $("model").children.map((c) => c.value), text: bubble._text,
                                   updates: bubble.texts.filter((t) => t !== "").length,
                                   meta: meta ? meta.textContent : null, error: bubble.classList.contains("error") }));
      return;
    }
    await sleep(25);
  }
  console.log(JSON.stringify({ timeout: true }));
})();
