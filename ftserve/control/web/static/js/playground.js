// Playground: stream a completion (/v1/completions) or a response (/v1/responses: the prompt as one user
// message, through the model's chat template) from any model; optionally the same prompt from a second model.
import { api, streamCompletion, streamResponse } from "./api.js";
import { h, showError } from "./util.js";

function modelSelect(id, models, selected) {
  const groups = [
    ["Base models", models.filter((m) => !m.startsWith("ft:"))],
    ["Fine-tuned", models.filter((m) => m.startsWith("ft:") && !m.includes(":ckpt-step-"))],
    ["Checkpoints", models.filter((m) => m.includes(":ckpt-step-"))],
  ];
  const sel = h(`select#${id}`, {});
  for (const [label, list] of groups) {
    if (list.length) sel.append(h("optgroup", { label }, list.map((m) => h("option", { value: m }, m))));
  }
  if (selected && models.includes(selected)) sel.value = selected;
  return sel;
}

// ft:{base}:{org}:{suffix}:{id}[:ckpt-step-N] → base
const baseOf = (model) => (model.startsWith("ft:") ? model.split(":")[1] : null);

function output(id) {
  const title = h("h4.mono");
  const text = h("pre", { id: `${id}-text` });
  const status = h("span.muted", { id: `${id}-status` });
  const box = h(`div.card.pg-out#${id}`, {}, title, text, status);
  return { box, title, text, status };
}

// Each API's stream as text pieces and a final word: a completion's chunks, or a response's events.
const READERS = {
  completions: {
    stream: streamCompletion,
    body: ({ prompt, maxTokens, temperature }) => ({ prompt, max_tokens: maxTokens, temperature }),
    read(chunk) {
      const out = { text: "", finish: null };
      for (const c of chunk.choices || []) {
        if (c.text) out.text += c.text;
        if (c.finish_reason) out.finish = c.finish_reason;
      }
      return out;
    },
  },
  responses: {
    stream: streamResponse,
    // store: false, so trying prompts leaves no stored responses behind.
    body: ({ prompt, maxTokens, temperature }) => ({ input: prompt, max_output_tokens: maxTokens, temperature, store: false }),
    read(event) {
      if (event.type === "response.output_text.delta") return { text: event.delta, finish: null };
      if (event.type === "error") throw new Error(event.message);
      const r = event.response;
      if (!r || !["response.completed", "response.incomplete", "response.failed"].includes(event.type)) {
        return { text: "", finish: null };
      }
      const why = r.incomplete_details ? ` (${r.incomplete_details.reason})` : "";
      return { text: "", finish: `${r.status}${why}` };
    },
  },
};

async function run(out, model, apiName, params, signal) {
  const reader = READERS[apiName];
  out.title.textContent = model;
  out.text.replaceChildren();
  out.status.textContent = "streaming…";
  out.box.dataset.state = "streaming";
  let finish = null;
  try {
    for await (const item of reader.stream({ ...reader.body(params), model }, signal)) {
      const got = reader.read(item);
      if (got.text) out.text.append(got.text);
      if (got.finish) finish = got.finish;
    }
    out.status.textContent = finish ? `finished: ${finish}` : "done";
  } catch (err) {
    out.status.textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
  }
  out.box.dataset.state = "done";
}

export function playgroundView(root, params) {
  const error = h("div");
  root.append(h("h2", {}, "Playground"), error);
  let controller = null;
  (async () => {
    let models;
    try {
      models = (await api("v1/models")).data.map((m) => m.id);
    } catch (err) {
      showError(error, err);
      return;
    }
    const wanted = params.get("model");
    const a = modelSelect("model-a", models, wanted);
    const b = modelSelect("model-b", models, params.get("compare") || baseOf(a.value));
    const compare = h("input", { type: "checkbox", id: "compare", checked: Boolean(wanted && baseOf(wanted)) });
    const maxTokens = h("input", { type: "number", id: "max-tokens", value: 64, min: 1, max: 4096, style: "width:80px" });
    const temperature = h("input", { type: "number", id: "temperature", value: 0.7, min: 0, max: 2, step: 0.1, style: "width:70px" });
    const prompt = h("textarea#prompt", { placeholder: "Type a prompt, e.g. The cat says:" });
    const apiSel = h("select#api", { title: "completions: the prompt as text; responses: as a user message" },
      h("option", { value: "completions" }, "/v1/completions"),
      h("option", { value: "responses" }, "/v1/responses"));
    if (Object.hasOwn(READERS, params.get("api") || "")) apiSel.value = params.get("api");
    const go = h("button.primary#generate", {}, "Generate");
    const stopBtn = h("button#stop", { disabled: true }, "Stop");
    const outA = output("out-a");
    const outB = output("out-b");
    const outputs = h("div.pg-outputs", {}, outA.box, outB.box);
    const layout = () => {
      outB.box.hidden = !compare.checked;
      outputs.classList.toggle("compare", compare.checked);
      b.disabled = !compare.checked;
    };
    compare.addEventListener("change", layout);
    a.addEventListener("change", () => {
      if (baseOf(a.value)) b.value = baseOf(a.value);
    });
    go.addEventListener("click", async () => {
      controller = new AbortController();
      go.disabled = true;
      stopBtn.disabled = false;
      const params = {
        prompt: prompt.value,
        maxTokens: Number(maxTokens.value) || 64,
        temperature: Number(temperature.value),
      };
      const runs = [run(outA, a.value, apiSel.value, params, controller.signal)];
      if (compare.checked) runs.push(run(outB, b.value, apiSel.value, params, controller.signal));
      await Promise.all(runs);
      go.disabled = false;
      stopBtn.disabled = true;
    });
    stopBtn.addEventListener("click", () => controller && controller.abort());
    root.append(
      h("div.card", {},
        h("div.toolbar", {}, "Model", a, h("label", {}, compare, " compare with"), b, "API", apiSel),
        prompt,
        h("div.toolbar", { style: "margin-top:8px" }, "max tokens", maxTokens, "temperature", temperature, go, stopBtn)),
      outputs,
    );
    layout();
  })();
  return () => controller && controller.abort();
}
