// One job: facts, cancel, loss chart growing while it runs (and the reward's, for a reinforcement job), progress,
// hyperparameters, checkpoints, events.
import { api, download, newEvents } from "./api.js";
import { MetricChart, trainAndValid } from "./chart.js";
import { criterionRate, evalsOfModels, modelKind, runHref, runRate } from "./evals.js";
import { graderBlock } from "./graders.js";
import { badge, fmtClock, fmtNum, fmtTime, h, poll, showError, TERMINAL } from "./util.js";

const playLink = (model) => h("a.mono", { href: `#/playground?model=${encodeURIComponent(model)}` }, model);
const methodOf = (job) => (job.method && job.method.type) || "supervised";

// ftserve's `gang` field: the processes and hosts of the torchrun gang that trained the job (absent: one process).
function ranOn(job) {
  if (!job.gang) return job.status === "queued" || job.status === "validating_files" ? "—" : "1 process";
  const { processes, hosts } = job.gang;
  return `${processes} process${processes === 1 ? "" : "es"} on ${hosts} host${hosts === 1 ? "" : "s"}`;
}

// A reinforcement job's grader: its line, and a multi grader's sub-graders one per line under it.
const grader = (job) => graderBlock(job.method.reinforcement.grader, { id: "job-grader" });

function facts(job) {
  const rows = [
    ["Base model", job.model],
    ["Method", h("span#job-method", {}, methodOf(job))],
    ...(job.method && job.method.reinforcement ? [["Grader", grader(job)]] : []),
    ["Fine-tuned model", job.fine_tuned_model ? playLink(job.fine_tuned_model) : "—"],
    ["Created", fmtTime(job.created_at)],
    ["Finished", fmtTime(job.finished_at)],
    ["Estimated finish", TERMINAL.has(job.status) ? "—" : fmtTime(job.estimated_finish)],
    ["Trained tokens", fmtNum(job.trained_tokens)],
    ["Ran on", h("span#job-gang", {}, ranOn(job))],
    ["Training file", h("span.mono", {}, job.training_file)],
    ["Validation file", job.validation_file ? h("span.mono", {}, job.validation_file) : "—"],
    ["Seed", String(job.seed)],
    [
      "Result file",
      job.result_files.length
        ? job.result_files.map((id) =>
            h("a.mono", { href: `v1/files/${id}/content`, id: "result-file", onclick: (e) => {
              e.preventDefault();
              download(id, `${job.id}-results.csv`);
            } }, `${id} (CSV)`))
        : "—",
    ],
  ];
  return h("dl.facts", {}, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function hyperparameters(job) {
  // The method's block holds every hyperparameter (DPO's beta too); the top-level field only the shared three.
  const method = (job.method && job.method[methodOf(job)]) || {};
  const all = { ...job.hyperparameters, ...(method.hyperparameters || {}), ...(job.extensions || {}) };
  return h(
    "table#hyperparameters",
    {},
    h("tbody", {}, Object.entries(all).map(([k, v]) =>
      h("tr", {}, h("td.muted", {}, k), h("td.mono.num", {}, typeof v === "object" ? JSON.stringify(v) : String(v))))),
  );
}

function checkpoints(list) {
  if (!list.length) return h("p.muted", {}, "No checkpoints yet (one per epoch).");
  // A reinforcement job's checkpoints carry its rewards; the others' a validation loss and token accuracy.
  const rewarded = list.some((c) => c.metrics.train_reward_mean !== undefined);
  const columns = rewarded
    ? [["Train loss", (m) => fmtNum(m.train_loss)], ["Train reward", (m) => fmtNum(m.train_reward_mean)],
      ["Valid reward", (m) => fmtNum(m.full_valid_reward_mean ?? m.valid_reward_mean)]]
    : [["Train loss", (m) => fmtNum(m.train_loss)], ["Valid loss", (m) => fmtNum(m.full_valid_loss ?? m.valid_loss)],
      ["Token acc.", (m) => fmtNum(m.train_mean_token_accuracy, 3)]];
  return h(
    "table#checkpoints",
    {},
    h("thead", {}, h("tr", {}, h("th.num", {}, "Step"), columns.map(([name]) => h("th.num", {}, name)),
      h("th", {}, "Model"))),
    h("tbody", {}, [...list].sort((x, y) => y.step_number - x.step_number).map((c) => h(
      "tr", {},
      h("td.num", {}, String(c.step_number)),
      columns.map(([, value]) => h("td.num", {}, value(c.metrics))),
      h("td.wrap", {}, playLink(c.fine_tuned_model_checkpoint)),
    ))),
  );
}

// The reward chart's lines beyond train and valid: a multi grader's sub-graders (train_reward_mean_<name>).
const SUB_REWARD = "train_reward_mean_";
const subRewards = (point) => Object.keys(point).filter((k) => k.startsWith(SUB_REWARD)).map((key) => (
  { key, label: `train ${key.slice(SUB_REWARD.length)}`, dash: [6, 4] }));

// The eval runs that sampled the job's fine-tuned model or one of its checkpoints, each linked to its eval's page.
function evalRuns(found) {
  const rows = found.flatMap(({ ev, runs }) => runs.map((r) => h(
    "tr", { dataset: { run: r.id } },
    h("td", {}, h("a", { href: `#/evals/${ev.id}` }, ev.name || ev.id)),
    h("td", {}, h("a", { href: runHref(r) }, r.name || r.id)),
    h("td.wrap", {}, h("span.mono", {}, r.model), " ", h("span.kind", {}, modelKind(r.model))),
    h("td", {}, badge(r.status)),
    h("td.num", {}, runRate(r)),
    h("td", {}, r.per_testing_criteria_results.map((c) => h("div", {}, `${c.testing_criteria}: ${criterionRate(c)}`))),
  )));
  if (!rows.length) {
    return h("p.muted", {}, "No eval has run on this job's model or checkpoints yet (client.evals.runs.create, or "
      + "ftserve evals run EVAL_ID --model MODEL …).");
  }
  return h("table#job-evals", {},
    h("thead", {}, h("tr", {}, ...["Eval", "Run", "Model", "Status"].map((t) => h("th", {}, t)), h("th.num", {}, "Pass rate"),
      h("th", {}, "Per criterion"))),
    h("tbody", {}, rows));
}

function eventItem(e) {
  return h(`li.${e.level}`, { dataset: { type: e.type } }, h("span.t", {}, fmtClock(e.created_at)), h("span", {}, e.message));
}

function cancelButton(job, refresh) {
  let armed = false;
  const btn = h("button.danger#cancel", {}, "Cancel job");
  btn.addEventListener("click", async () => {
    if (!armed) {
      // A second click confirms, so a stray click does not throw away a run.
      armed = true;
      btn.textContent = "Click again to cancel";
      setTimeout(() => { armed = false; btn.textContent = "Cancel job"; }, 5000);
      return;
    }
    btn.disabled = true;
    btn.textContent = "Cancelling…";
    try {
      await api(`v1/fine_tuning/jobs/${job.id}/cancel`, { method: "POST" });
    } catch (err) {
      btn.disabled = false;
      btn.textContent = `Cancel failed: ${err.message}`;
    }
    refresh();
  });
  return btn;
}

export function jobView(root, jobId) {
  const head = h("div.job-head");
  const error = h("div");
  const warnings = h("div#job-warnings"); // warn events (a DPO job breaking its model, a lost gang): kept in view
  const factsBox = h("div");
  const progressText = h("span.muted", { id: "progress-text" }, "waiting for the first step…");
  const progressBar = h("div");
  const chartEl = h("div#loss-chart");
  // A reinforcement job's mean reward per step, beside the loss (shown once its steps report a reward).
  const rewardEl = h("div#reward-chart");
  const rewardBox = h("div#reward-box", { hidden: true }, h("h4", {}, "Mean reward"), rewardEl,
    h("p.muted", {}, "The grader's mean reward of the step's sampled answers (train), and of one answer per "
      + "validation prompt every eval_interval steps (valid); dashed: each sub-grader's, on the step's answers."));
  const charts = h("div.charts#charts", {}, h("div", {}, h("h4", {}, "Loss"), chartEl), rewardBox);
  const marginCard = h("div.card#margin-card", { hidden: true }, h("h3", {}, "Reward margin (DPO)"));
  const marginEl = h("div#margin-chart");
  marginCard.append(
    h("p.muted", {}, "β × (log-ratio of the preferred reply − log-ratio of the other) against the starting model: "
      + "it grows while the model learns the preference."),
    marginEl,
  );
  const hpBox = h("div");
  const ckptBox = h("div");
  const eventsList = h("ol.events#events");
  const evalsBox = h("div#job-evals-box");
  const evalsCard = h("div.card#evals-card", { hidden: true }, h("h3", {}, "Evals on this model"), evalsBox);
  let models = []; // the fine-tuned model and its checkpoints: the evals card's filter
  const showMetrics = h("input", { type: "checkbox", id: "show-metrics" });
  root.append(
    head,
    error,
    warnings,
    h("div.cols", {},
      h("div.card", {}, h("h3", {}, "Job"), factsBox),
      h("div.card", {}, h("h3", {}, "Hyperparameters (as resolved)"), hpBox)),
    h("div.card", {}, h("h3", {}, "Progress"), h("div.progress", {}, h("div.bar", {}, progressBar), progressText), charts),
    marginCard,
    evalsCard,
    h("div.cols", {},
      h("div.card", {}, h("h3", {}, "Checkpoints"), ckptBox),
      h("div.card", {}, h("h3", {}, "Events ", h("label.muted", {}, showMetrics, " show step metrics")), eventsList)),
  );
  const chart = new MetricChart(chartEl);
  const marginChart = new MetricChart(marginEl, "reward margin", trainAndValid("reward_margin", "reward margin"));
  const rewardSeries = [
    { key: "train_reward_mean", label: "train reward", stroke: "#2563eb", width: 2 },
    { key: "valid_reward_mean", label: "valid reward", stroke: "#ea580c", width: 2, spanGaps: true, points: { show: true } },
  ];
  const rewardChart = new MetricChart(rewardEl, "mean reward", rewardSeries, subRewards);
  let lastEvent = null;
  let status = null;
  let rewards = false; // the job's steps report a reward margin (DPO's do)
  let graded = false; // the job's steps report a mean reward (reinforcement's do)
  let validReward; // the latest validation reward (every eval_interval steps, not every step)
  let refresh = () => {};

  showMetrics.addEventListener("change", () => eventsList.classList.toggle("all", showMetrics.checked));
  const styleMetrics = h("style", {}, "ol.events li[data-type=metrics]{display:none} ol.events.all li[data-type=metrics]{display:flex}");
  root.append(styleMetrics);

  const render = async () => {
    let job;
    try {
      job = await api(`v1/fine_tuning/jobs/${jobId}`);
    } catch (err) {
      showError(error, err);
      return err.status !== 404;
    }
    const fresh = await newEvents(jobId, lastEvent);
    if (fresh.length) lastEvent = fresh[fresh.length - 1].id;
    const metrics = fresh.filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
    // The metrics, not the method's name, say whether there is a reward margin to plot.
    rewards = rewards || metrics.some((m) => m.train_reward_margin !== undefined);
    marginCard.hidden = !rewards;
    if (!graded && metrics.some((m) => m.train_reward_mean !== undefined)) {
      graded = true; // the loss chart makes room for the reward's beside it
      rewardBox.hidden = false;
      charts.classList.add("pair");
      chart.onResize();
    }
    chart.add(metrics);
    if (rewards) marginChart.add(metrics);
    if (graded) rewardChart.add(metrics);
    for (const m of metrics) if (typeof m.valid_reward_mean === "number") validReward = m.valid_reward_mean;
    if (metrics.length) {
      const m = metrics[metrics.length - 1];
      progressBar.style.width = `${(100 * m.step) / m.total_steps}%`;
      progressText.textContent = `step ${m.step}/${m.total_steps} · train loss ${fmtNum(m.train_loss)}` +
        (typeof m.valid_loss === "number" ? ` · valid loss ${fmtNum(m.valid_loss)}` : "") +
        (m.train_reward_margin !== undefined ? ` · reward margin ${fmtNum(m.train_reward_margin)}` : "") +
        (m.train_reward_mean !== undefined ? ` · reward ${fmtNum(m.train_reward_mean)}` : "") +
        (validReward !== undefined ? ` · valid reward ${fmtNum(validReward)}` : "");
    }
    warnings.append(...fresh.filter((e) => e.level === "warn").map((e) => h("div.warnbox", {}, e.message)));
    eventsList.prepend(...fresh.reverse().map(eventItem));
    if (job.status !== status) {
      // Only on a status change, so the cancel button is not replaced under the user's pointer.
      status = job.status;
      head.replaceChildren(
        h("h2.mono", {}, job.id),
        h("span#job-status", { dataset: { status: job.status } }, badge(job.status)),
        h("div.actions", {}, TERMINAL.has(job.status) ? "" : cancelButton(job, () => refresh())),
      );
    }
    factsBox.replaceChildren(facts(job));
    hpBox.replaceChildren(hyperparameters(job));
    const ck = await api(`v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
    ckptBox.replaceChildren(checkpoints(ck.data));
    models = [job.fine_tuned_model, ...ck.data.map((c) => c.fine_tuned_model_checkpoint)].filter(Boolean);
    error.replaceChildren(...(job.error ? [h("div.errorbox#job-error", {}, `${job.error.code}: ${job.error.message}`)] : []));
    return !TERMINAL.has(job.status); // stop polling once the job has ended and been drawn once more
  };
  let busy = false;
  const update = async () => {
    if (busy) return true; // one refresh at a time, so no event is added twice
    busy = true;
    try {
      return await render();
    } finally {
      busy = false;
    }
  };
  let stop = poll(update, 1500);
  // Evals may run on the model long after the job ended: this keeps polling when the job's own refresh stops.
  const stopEvals = poll(async () => {
    if (!models.length) return;
    evalsCard.hidden = false;
    evalsBox.replaceChildren(evalRuns(await evalsOfModels(models)));
  }, 3000);
  refresh = () => {
    stop();
    stop = poll(update, 1500);
  };
  return () => {
    stop();
    stopEvals();
    chart.destroy();
    marginChart.destroy();
    rewardChart.destroy();
  };
}
