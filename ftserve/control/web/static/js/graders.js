// Graders in words, shared by the job page (a reinforcement job's grader) and the eval page (testing criteria).
import { h } from "./util.js";

// What a grader is, in a line: its type, name and what it compares by (a multi grader: its formula).
export function graderLine(g) {
  const how = { string_check: g.operation, text_similarity: g.evaluation_metric, score_model: g.model,
    label_model: g.model, multi: g.calculate_output }[g.type];
  return `${g.type} “${g.name}”${how ? ` (${how})` : ""}`;
}

// A grader's line, and a multi grader's sub-graders one per line under it.
export function graderBlock(g, attrs = {}) {
  const subs = g.type === "multi" && g.graders ? Object.entries(g.graders) : [];
  return h("div", attrs,
    h("div", {}, graderLine(g)),
    subs.map(([key, sub]) => h("div.muted", { dataset: { grader: key } }, `${key}: ${graderLine(sub)}`)));
}
