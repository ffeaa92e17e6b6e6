// One eval (#/evals/<id>?run=<run id>, where a run's report_url leads): its testing criteria, its runs side by side
// (model and its kind, status, counts, pass rate overall and per criterion), and the selected run's output items,
// each with its sample, its reference (the item) and every criterion's result. Refreshes while a run goes on.
import { api } from "./api.js";
import { criterionRate, listAll, modelKind, RUN_TERMINAL, runHref, runRate } from "./evals.js";
import { graderBlock } from "./graders.js";
import { badge, fmtNum, fmtTime, h, poll, showError } from "./util.js";

const ITEMS_PAGE = 100;

function criteria(ev) {
  return h("div#criteria", {}, ev.testing_criteria.map((c) => h("div.criterion", { dataset: { criterion: c.name } },
    graderBlock(c), c.pass_threshold !== undefined ? h("div.muted", {}, `pass threshold ${c.pass_threshold}`) : "")));
}

// One row of the runs table: a label, then a cell per run (each cell carries its run and row for the tests).
function runsRow(label, key, runs, value, attrs = {}) {
  return h("tr", { dataset: { row: key } }, h("th", {}, label),
    runs.map((r) => h("td", { dataset: { run: r.id, ...attrs }, className: r.selected ? "selected" : "" }, value(r))));
}

function runsTable(ev, runs) {
  if (!runs.length) return h("p.muted", {}, "No runs yet.");
  const count = (k) => (r) => String(r.result_counts[k]);
  const progress = (r) => {
    const of = r.extensions && r.extensions.item_count;
    return of ? `${r.result_counts.total}/${of}` : String(r.result_counts.total);
  };
  const perCriterion = ev.testing_criteria.map((c) => runsRow(c.name, `criterion`, runs, (r) => {
    const got = r.per_testing_criteria_results.find((x) => x.testing_criteria === c.name);
    return got ? criterionRate(got) : "—";
  }, { criterion: c.name }));
  return h("table#runs.side", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Run"), runs.map((r) => h("th", { dataset: { run: r.id },
      className: r.selected ? "selected" : "" }, h("a", { href: runHref(r) }, r.name || r.id),
      h("div.mono.muted", {}, r.id))))),
    h("tbody", {},
      runsRow("Model", "model", runs, (r) => h("span", {}, h("span.mono", {}, r.model || "—"), " ",
        h(`span.kind.${modelKind(r.model).replace(/ /g, "-")}`, {}, modelKind(r.model)))),
      runsRow("Status", "status", runs, (r) => h("span", {}, badge(r.status),
        r.error ? h("div.item-error", {}, `${r.error.code}: ${r.error.message}`) : "")),
      runsRow("Graded", "graded", runs, progress),
      runsRow("Passed", "passed", runs, count("passed")),
      runsRow("Failed", "failed", runs, count("failed")),
      runsRow("Errored", "errored", runs, count("errored")),
      runsRow("Pass rate", "pass-rate", runs, runRate),
      perCriterion,
      runsRow("Tokens", "tokens", runs, (r) => fmtNum(r.per_model_usage.reduce((n, u) => n + u.total_tokens, 0))),
      runsRow("Created", "created", runs, (r) => fmtTime(r.created_at))));
}

const pre = (text, cls = "") => h(`pre.cell${cls}`, {}, text);
const messagesText = (msgs) => (msgs || []).map((m) => `${m.role}: ${typeof m.content === "string" ? m.content
  : JSON.stringify(m.content)}`).join("\n");

function sampleCell(item) {
  const s = item.sample || {};
  const out = (s.output || []).map((m) => m.content).join("\n");
  return h("td.sample", {},
    s.input && s.input.length ? h("details", {}, h("summary.muted", {}, "input"), pre(messagesText(s.input))) : "",
    s.error ? h("div.item-error", {}, `${s.error.code}: ${s.error.message}`) : pre(out, ".output"),
    s.finish_reason ? h("div.muted", {}, `finish: ${s.finish_reason}`) : "");
}

function resultsCell(item) {
  if (!item.results.length) return h("td.muted", {}, "not graded");
  return h("td.results", {}, item.results.map((r) => {
    const state = r.error ? "error" : r.passed ? "pass" : "fail";
    return h("div.result", { dataset: { criterion: r.name, state } },
      h(`span.badge.${state}`, {}, state), ` ${r.name} `, h("span.mono", {}, fmtNum(r.score)),
      r.error ? h("div.item-error", {}, `${r.error.code}: ${r.error.message}`) : "");
  }));
}

function itemRow(item) {
  return h("tr", { dataset: { item: item.datasource_item_id, status: item.status } },
    h("td.num", {}, String(item.datasource_item_id)),
    h("td", {}, h(`span.badge.${item.status}`, {}, item.status)),
    sampleCell(item),
    h("td", {}, pre(JSON.stringify(item.datasource_item, null, 1), ".reference")),
    resultsCell(item));
}

export function evalView(root, evalId, params) {
  const head = h("div.job-head");
  const error = h("div");
  const criteriaBox = h("div");
  const runsBox = h("div");
  const itemsTitle = h("h3", {}, "Output items");
  const statusFilter = h("select#item-status", {}, ["all", "pass", "fail", "error"].map((s) => h("option", { value: s }, s)));
  const itemsBody = h("tbody");
  const itemsNote = h("span.muted#items-note");
  const more = h("button#more-items", { hidden: true }, "Show more items");
  root.append(
    head, error,
    h("div.card", {}, h("h3", {}, "Testing criteria"), criteriaBox),
    h("div.card", {}, h("h3", {}, "Runs"), runsBox),
    h("div.card", {}, itemsTitle, h("div.toolbar", {}, "Status:", statusFilter, itemsNote),
      h("table#items", {}, h("thead", {}, h("tr", {}, h("th.num", {}, "#"), ...["Status", "Sample", "Reference (item)",
        "Grader results"].map((t) => h("th", {}, t)))), itemsBody), more),
  );
  let ev = null;
  let selected = null; // the run whose items are shown
  let shown = ITEMS_PAGE;
  let drawnFinal = false; // the selected run's items drawn once after it ended

  const loadItems = async () => {
    const q = statusFilter.value === "all" ? "" : `&status=${statusFilter.value}`;
    const items = [];
    let after = null;
    for (;;) { // the first `shown` items, a page at a time
      const page = await api(`v1/evals/${evalId}/runs/${selected.id}/output_items?order=asc&limit=${ITEMS_PAGE}${q}`
        + (after ? `&after=${after}` : ""));
      items.push(...page.data);
      more.hidden = !page.has_more || items.length < shown;
      if (!page.has_more || items.length >= shown) break;
      after = page.last_id;
    }
    items.sort((a, b) => a.datasource_item_id - b.datasource_item_id);
    itemsBody.replaceChildren(...(items.length ? items.map(itemRow)
      : [h("tr", {}, h("td.muted", { colSpan: 5 }, "No output items yet."))]));
    itemsNote.textContent = `${items.length} shown` + (more.hidden ? "" : " (more to load)");
  };

  const refresh = async () => {
    try {
      if (!ev) {
        ev = await api(`v1/evals/${evalId}`);
        head.replaceChildren(h("h2", {}, ev.name || ev.id), h("span.mono.muted", {}, ev.id));
        criteriaBox.replaceChildren(criteria(ev));
      }
      const runs = await listAll(`v1/evals/${evalId}/runs?order=asc`);
      const want = params.get("run");
      selected = runs.find((r) => r.id === want) || runs[runs.length - 1] || null;
      for (const r of runs) r.selected = selected !== null && r.id === selected.id;
      runsBox.replaceChildren(runsTable(ev, runs));
      if (want && (!selected || selected.id !== want)) {
        error.replaceChildren(h("div.errorbox", {}, `No run ${want} in this eval.`));
      } else error.replaceChildren();
      if (selected) {
        itemsTitle.replaceChildren(`Output items of ${selected.name || selected.id} `,
          h("span.mono.muted", {}, selected.model || ""), " ", h("span#items-rate.muted", {}, runRate(selected)));
        if (!drawnFinal) await loadItems();
        drawnFinal = RUN_TERMINAL.has(selected.status);
      }
      return !runs.every((r) => RUN_TERMINAL.has(r.status)) || !drawnFinal;
    } catch (err) {
      showError(error, err);
      return err.status !== 404;
    }
  };
  const reload = () => { drawnFinal = false; loadItems().catch((err) => showError(error, err)); };
  statusFilter.addEventListener("change", () => { shown = ITEMS_PAGE; reload(); });
  more.addEventListener("click", () => { shown += ITEMS_PAGE; reload(); });
  return poll(refresh, 2000);
}
