// Evals list (#/evals): the org's evals, newest first, each with its criteria and its latest runs (model, status,
// pass rate); and what the eval and job pages share: pass rates, a model's kind, the runs on given models.
import { api } from "./api.js";
import { badge, fmtTime, h, poll, showError } from "./util.js";

export const RUN_TERMINAL = new Set(["completed", "failed", "canceled"]);

// A run's model as base, fine-tuned (ft:…) or checkpoint (ft:…:ckpt-step-N); a jsonl run samples no model.
export function modelKind(model) {
  if (!model) return "file samples";
  if (model.startsWith("ft:")) return model.includes(":ckpt-step-") ? "checkpoint" : "fine-tuned";
  return "base";
}

export const rate = (passed, of) => (of ? `${((100 * passed) / of).toFixed(1)}% (${passed}/${of})` : "—");
// A run's pass rate: items that passed every criterion, of the items graded so far (errored ones included).
export const runRate = (run) => rate(run.result_counts.passed, run.result_counts.total);
// A criterion's: passed of passed + failed (an item it could not grade counts in neither, as OpenAI counts them).
export const criterionRate = (c) => rate(c.passed, c.passed + c.failed);
export const runHref = (run) => `#/evals/${encodeURIComponent(run.eval_id)}?run=${encodeURIComponent(run.id)}`;

// Every page of a list endpoint (`path` may carry a query already).
export async function listAll(path, limit = 100) {
  const out = [];
  let after = null;
  for (;;) {
    const page = await api(`${path}${path.includes("?") ? "&" : "?"}limit=${limit}${after ? `&after=${after}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.last_id;
  }
}

// The evals with runs on any of `models`, each with those runs: ftserve's `model` filter (docs/api.md#evals).
export async function evalsOfModels(models) {
  const q = models.map((m) => `model=${encodeURIComponent(m)}`).join("&");
  const evals = await listAll(`v1/evals?order=desc&${q}`);
  return Promise.all(evals.map(async (ev) => ({ ev, runs: await listAll(`v1/evals/${ev.id}/runs?order=asc&${q}`) })));
}

function runLine(run) {
  return h("div.run-line", { dataset: { run: run.id } },
    badge(run.status), " ", h("a.mono", { href: runHref(run) }, run.model || run.name), " ",
    h("span.muted", {}, modelKind(run.model)), " ", runRate(run));
}

const SHOWN_RUNS = 4;

function row(ev, runs) {
  const newest = [...runs].reverse();
  return h(
    "tr",
    { dataset: { eval: ev.id } },
    h("td", {}, h("a", { href: `#/evals/${ev.id}` }, ev.name || ev.id), h("div.mono.muted", {}, ev.id)),
    h("td", {}, ev.testing_criteria.map((c) => h("div", {}, c.name))),
    h("td", {}, newest.length ? newest.slice(0, SHOWN_RUNS).map(runLine) : h("span.muted", {}, "no runs yet"),
      newest.length > SHOWN_RUNS ? h("div.muted", {}, `and ${newest.length - SHOWN_RUNS} older`) : ""),
    h("td.nowrap", {}, fmtTime(ev.created_at)),
  );
}

export function evalsView(root) {
  const body = h("tbody");
  const error = h("div");
  root.append(
    h("h2", {}, "Evals"),
    h("p.muted", {}, "Create evals and runs with the openai client (client.evals…) or `ftserve evals run`."),
    error,
    h("div.card", {}, h("table#evals", {},
      h("thead", {}, h("tr", {}, ...["Eval", "Testing criteria", "Latest runs", "Created"].map((t) => h("th", {}, t)))),
      body)),
  );
  return poll(async () => {
    try {
      const page = await api("v1/evals?order=desc&limit=50");
      const runs = await Promise.all(page.data.map((ev) => listAll(`v1/evals/${ev.id}/runs?order=asc`)));
      error.replaceChildren();
      body.replaceChildren(...(page.data.length ? page.data.map((ev, i) => row(ev, runs[i]))
        : [h("tr", {}, h("td.muted", { colSpan: 4 }, "No evals yet."))]));
    } catch (err) {
      showError(error, err);
    }
  }, 5000);
}
