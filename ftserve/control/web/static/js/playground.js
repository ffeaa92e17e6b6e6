// Playground: stream a completion from any model; optionally the same prompt from a second model beside it.
import { api, streamCompletion } from "./api.js";
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

async function run(out, model, body, signal) {
  out.title.textContent = model;
  out.text.replaceChildren();
  out.status.textContent = "streaming…";
  out.box.dataset.state = "streaming";
  let finish = null;
  try {
    for await (const chunk of streamCompletion({ ...body, model }, signal)) {
      for (const c of chunk.choices || []) {
        if (c.text) out.text.append(c.text);
        if (c.finish_reason) finish = c.finish_reason;
      }
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
      const body = {
        prompt: prompt.value,
        max_tokens: Number(maxTokens.value) || 64,
        temperature: Number(temperature.value),
      };
      const runs = [run(outA, a.value, body, controller.signal)];
      if (compare.checked) runs.push(run(outB, b.value, body, controller.signal));
      await Promise.all(runs);
      go.disabled = false;
      stopBtn.disabled = true;
    });
    stopBtn.addEventListener("click", () => controller && controller.abort());
    root.append(
      h("div.card", {},
        h("div.toolbar", {}, "Model", a, h("label", {}, compare, " compare with"), b),
        prompt,
        h("div.toolbar", { style: "margin-top:8px" }, "max tokens", maxTokens, "temperature", temperature, go, stopBtn)),
      outputs,
    );
    layout();
  })();
  return () => controller && controller.abort();
}
