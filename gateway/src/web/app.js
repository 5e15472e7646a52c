"use strict";
// The API key stays in this tab only; every request sends it as a bearer token.
const key = () => sessionStorage.getItem("troupe-gateway-key") || "";
const headers = () => (key() ? { Authorization: "Bearer " + key() } : {});
const $ = (id) => document.getElementById(id);
const shown = (error) => { $("error").textContent = error ? String(error) : ""; };

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
}

async function refresh() {
  try {
    const { tasks } = await api("/api/v1/mesh?limit=50");
    const body = $("tasks");
    body.replaceChildren();
    for (const task of tasks) {
      const row = body.insertRow();
      row.className = "task";
      row.dataset.id = task.id;
      cell(row, task.id);
      cell(row, task.status, task.status);
      cell(row, task.current_actor || "");
      cell(row, String(task.progress.hops));
      cell(row, new Date(task.created_at).toLocaleTimeString());
      row.onclick = () => follow(task.id);
    }
    shown("");
  } catch (error) {
    shown(error);
  }
}

let following = null;

// Server-Sent Events read with fetch, so the API key can go in a header.
async function follow(id) {
  if (following) following.abort();
  following = new AbortController();
  history.replaceState(null, "", "?task=" + encodeURIComponent(id));
  $("task-view").hidden = false;
  $("task-id").textContent = id;
  $("task-status").textContent = "";
  const list = $("events");
  list.replaceChildren();
  try {
    const response = await fetch("/api/v1/mesh/" + encodeURIComponent(id) + "/events",
      { headers: headers(), signal: following.signal });
    if (!response.ok) throw new Error("events: " + response.status + " " + response.statusText);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        show(buffer.slice(0, end), list);
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") shown(error);
  }
}

function show(block, list) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return;
  const event = JSON.parse(data);
  const status = name === "task" ? event.status : name === "status" ? event.status : null;
  if (status) {
    $("task-status").textContent = status;
    $("task-status").className = status;
  }
  const item = document.createElement("li");
  item.className = "event " + name;
  item.dataset.event = name;
  const summary = name === "fly" ? JSON.stringify(event.data)
    : name === "status" ? event.status + (event.result !== undefined ? " " + JSON.stringify(event.result) : "")
      + (event.error !== undefined ? " " + JSON.stringify(event.error) : "")
    : name === "hop" || name === "started" ? event.actor
    : name === "task" ? event.status
    : JSON.stringify(event);
  item.textContent = name + ": " + summary;
  list.append(item);
}

$("key-form").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("troupe-gateway-key", e.target.key.value);
  e.target.key.value = "";
  refresh();
};

$("submit-form").onsubmit = async (e) => {
  e.preventDefault();
  try {
    const route = e.target.route.value.split(",").map((s) => s.trim()).filter(Boolean);
    const payload = JSON.parse(e.target.payload.value || "null");
    const { id } = await api("/api/v1/mesh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ route, payload }),
    });
    await refresh();
    follow(id);
  } catch (error) {
    shown(error);
  }
};

refresh();
setInterval(refresh, 2000);
const asked = new URLSearchParams(location.search).get("task");
if (asked) follow(asked);
