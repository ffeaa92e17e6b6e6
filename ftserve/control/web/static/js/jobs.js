// Jobs list: newest first, refreshed every 2 s; older pages load on demand.
import { api } from "./api.js";
import { badge, fmtNum, fmtTime, h, poll, showError } from "./util.js";

const PAGE = 20;

function row(job) {
  const ft = job.fine_tuned_model;
  return h(
    "tr",
    { dataset: { job: job.id, status: job.status } },
    h("td.mono", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, badge(job.status)),
    h("td.nowrap", {}, job.model),
    h("td.mono.wrap", {}, ft ? h("a", { href: `#/playground?model=${encodeURIComponent(ft)}`, title: "Try it" }, ft) : "—"),
    h("td", {}, fmtTime(job.created_at)),
    h("td", {}, fmtTime(job.finished_at)),
    h("td.num", {}, fmtNum(job.trained_tokens)),
  );
}

export function jobsView(root) {
  const body = h("tbody");
  const older = h("tbody");
  const more = h("button", { hidden: true }, "Load older jobs");
  const error = h("div");
  let cursor = null;
  root.append(
    h("h2", {}, "Fine-tuning jobs"),
    error,
    h(
      "div.card",
      {},
      h(
        "table#jobs",
        {},
        h(
          "thead",
          {},
          h("tr", {}, ...["Job", "Status", "Base model", "Fine-tuned model", "Created", "Finished"].map((t) => h("th", {}, t)),
            h("th.num", {}, "Trained tokens")),
        ),
        body,
        older,
      ),
      more,
    ),
  );
  const stop = poll(async () => {
    try {
      const page = await api(`v1/fine_tuning/jobs?limit=${PAGE}`);
      error.replaceChildren();
      body.replaceChildren(
        ...(page.data.length ? page.data.map(row) : [h("tr", {}, h("td.muted", { colSpan: 7 }, "No jobs yet."))]),
      );
      if (cursor === null && page.has_more) {
        cursor = page.data[page.data.length - 1].id;
        more.hidden = false;
      }
    } catch (err) {
      showError(error, err);
    }
  }, 2000);
  more.addEventListener("click", async () => {
    const page = await api(`v1/fine_tuning/jobs?limit=${PAGE}&after=${cursor}`);
    older.append(...page.data.map(row));
    cursor = page.data.length ? page.data[page.data.length - 1].id : cursor;
    more.hidden = !page.has_more;
  });
  return stop;
}
