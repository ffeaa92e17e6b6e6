// Hash router and API-key form: #/jobs, #/jobs/<id>, #/evals, #/evals/<id>[?run=<run id>], #/files,
// #/playground[?model=…&compare=…&api=completions|responses].
import { api, getKey, setKey } from "./api.js";
import { evalView } from "./eval.js";
import { evalsView } from "./evals.js";
import { filesView } from "./files.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { playgroundView } from "./playground.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let stopCurrent = () => {};

function route() {
  stopCurrent();
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  let section = parts[0] || "jobs";
  view.replaceChildren();
  if (section === "jobs" && parts[1]) stopCurrent = jobView(view, decodeURIComponent(parts[1]));
  else if (section === "evals" && parts[1]) stopCurrent = evalView(view, decodeURIComponent(parts[1]), params);
  else if (section === "evals") stopCurrent = evalsView(view);
  else if (section === "files") stopCurrent = filesView(view);
  else if (section === "playground") stopCurrent = playgroundView(view, params);
  else {
    section = "jobs";
    stopCurrent = jobsView(view);
  }
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
}

function showKeyState() {
  document.getElementById("key-state").textContent = getKey() ? "key saved in this browser" : "no key (single-user)";
}

function setBanner(text, kind = "") {
  banner.hidden = !text;
  banner.className = `banner ${kind}`;
  banner.textContent = text || "";
}

async function checkAccess() {
  try {
    await api("v1/models");
    setBanner("");
  } catch (err) {
    if (err.status !== 401) setBanner(`Cannot reach the API: ${err.message}`, "error");
  }
}

window.addEventListener("ftserve:unauthorized", (e) => {
  setBanner(`This server needs an API key (${e.detail}). Enter it at the top right; it stays in this browser.`, "error");
  document.getElementById("key-input").focus();
});

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("key-input");
  setKey(input.value.trim());
  input.value = "";
  showKeyState();
  checkAccess();
  route();
});
document.getElementById("key-clear").addEventListener("click", () => {
  setKey("");
  showKeyState();
  checkAccess();
  route();
});

window.addEventListener("hashchange", route);
showKeyState();
checkAccess();
route();
