// Files: upload a training file, and list files with status and validation errors (line and code).
import { api } from "./api.js";
import { badge, fmtBytes, fmtTime, h, poll, showError } from "./util.js";

function details(f) {
  if (f.status !== "error") return h("span.muted", {}, f.status_details || "");
  const ext = f.extensions || {};
  return h(
    "span.file-error",
    {},
    ext.error_code ? h("code", {}, ext.error_code) : "",
    " ",
    f.status_details || "", // names the line: "line 3: invalid JSON: …"
  );
}

function row(f) {
  return h(
    "tr",
    { dataset: { file: f.id, status: f.status } },
    h("td.mono", {}, f.id),
    h("td", {}, f.filename),
    h("td", {}, f.purpose),
    h("td.num", {}, fmtBytes(f.bytes)),
    h("td", {}, fmtTime(f.created_at)),
    h("td", {}, badge(f.status)),
    h("td", {}, details(f)),
  );
}

export function filesView(root) {
  const body = h("tbody");
  const error = h("div");
  const input = h("input", { type: "file", id: "upload-input", accept: ".jsonl,application/jsonl" });
  const result = h("span#upload-result.muted");
  let reload = async () => {};
  const upload = h("button.primary#upload", {}, "Upload");
  upload.addEventListener("click", async () => {
    if (!input.files.length) return;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", input.files[0]);
    upload.disabled = true;
    result.textContent = "uploading…";
    try {
      const f = await api("v1/files", { method: "POST", form });
      result.replaceChildren(`✓ ${f.id} processed`);
    } catch (err) {
      result.replaceChildren(h("span.file-error", {}, h("code", {}, err.code || String(err.status)), " ", err.message));
    } finally {
      upload.disabled = false;
      reload();
    }
  });
  root.append(
    h("h2", {}, "Files"),
    h("div.card", {}, h("div.toolbar", {}, "Upload a training file (JSONL):", input, upload, result)),
    error,
    h(
      "div.card",
      {},
      h(
        "table#files",
        {},
        h("thead", {}, h("tr", {}, ...["File", "Name", "Purpose"].map((t) => h("th", {}, t)), h("th.num", {}, "Size"),
          ...["Created", "Status", "Details"].map((t) => h("th", {}, t)))),
        body,
      ),
    ),
  );
  reload = async () => {
    try {
      const page = await api("v1/files?limit=200");
      error.replaceChildren();
      body.replaceChildren(
        ...(page.data.length ? page.data.map(row) : [h("tr", {}, h("td.muted", { colSpan: 7 }, "No files yet."))]),
      );
    } catch (err) {
      showError(error, err);
    }
  };
  return poll(reload, 5000);
}
