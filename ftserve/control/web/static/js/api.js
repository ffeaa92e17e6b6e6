// The dashboard's only door to the server: the public /v1 API, with the API key kept in localStorage.
const KEY = "ftserve.apiKey";

export const getKey = () => localStorage.getItem(KEY) || "";
export function setKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// `sentKey`: the key the request carried. A 401 answering an older key (a request still in flight when the user
// entered a new one) says nothing about the key now kept, so it raises no prompt.
async function failure(res, sentKey) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: keep the status */ }
  const err = new ApiError(res.status, body);
  if (res.status === 401 && sentKey === getKey()) {
    window.dispatchEvent(new CustomEvent("ftserve:unauthorized", { detail: err.message }));
  }
  return err;
}

// Paths are relative ("v1/…") so the page also works behind a proxy that serves it under a prefix.
export async function api(path, { method = "GET", json, form } = {}) {
  const sentKey = getKey();
  const init = { method, headers: headers(json ? { "content-type": "application/json" } : {}) };
  if (json) init.body = JSON.stringify(json);
  if (form) init.body = form;
  const res = await fetch(path.replace(/^\//, ""), init);
  if (!res.ok) throw await failure(res, sentKey);
  return res.json();
}

// Events newer than `lastId` (all of them when null), oldest first; the API lists newest first.
export async function newEvents(jobId, lastId) {
  const out = [];
  let after = null;
  for (;;) {
    const q = new URLSearchParams({ limit: "100" });
    if (after) q.set("after", after);
    const page = await api(`v1/fine_tuning/jobs/${jobId}/events?${q}`);
    for (const e of page.data) {
      if (e.id === lastId) return out.reverse();
      out.push(e);
    }
    if (!page.has_more || page.data.length === 0) return out.reverse();
    after = page.data[page.data.length - 1].id;
  }
}

// Save a file the API serves (e.g. a job's result CSV) with the key sent as a header, not in the URL.
export async function download(fileId, filename) {
  const sentKey = getKey();
  const res = await fetch(`v1/files/${fileId}/content`, { headers: headers() });
  if (!res.ok) throw await failure(res, sentKey);
  const url = URL.createObjectURL(await res.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: filename || fileId });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// POST `path` with stream: true; yields each server-sent event's JSON (`data:` lines) until `data: [DONE]` or
// the end of the body (the Responses API's stream ends with its `response.completed` event, no [DONE]).
async function* streamEvents(path, body, signal) {
  const sentKey = getKey();
  const res = await fetch(path, {
    method: "POST",
    headers: headers({ "content-type": "application/json", accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!res.ok) throw await failure(res, sentKey);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let sep;
    while ((sep = buf.match(/\r?\n\r?\n/))) {
      const block = buf.slice(0, sep.index);
      buf = buf.slice(sep.index + sep[0].length);
      for (const line of block.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue; // comments (": ping"), `event:` names and other fields
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return;
        yield JSON.parse(payload);
      }
    }
  }
}

// POST /v1/completions, streamed: each chunk (choices[].text, finish_reason).
export const streamCompletion = (body, signal) => streamEvents("v1/completions", body, signal);

// POST /v1/responses, streamed: OpenAI's semantic events (response.output_text.delta, response.completed, …).
export const streamResponse = (body, signal) => streamEvents("v1/responses", body, signal);
