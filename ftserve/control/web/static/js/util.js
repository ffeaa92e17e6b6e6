// Small DOM and formatting helpers shared by the views.

// h("tag#id.class", {attr: v, onclick: f}, child, …): build an element; strings become text nodes.
export function h(spec, attrs = {}, ...children) {
  const tag = spec.match(/^[a-z0-9]*/i)[0];
  const el = document.createElement(tag || "div");
  for (const [, kind, name] of spec.slice(tag.length).matchAll(/([#.])([\w-]+)/g)) {
    if (kind === "#") el.id = name;
    else el.classList.add(name);
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && k !== "list") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function fmtTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "—";
}

export function fmtClock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

export function fmtNum(n, digits = 4) {
  if (n === null || n === undefined) return "—";
  return Number.isInteger(n) ? n.toLocaleString() : n.toFixed(digits);
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

export const badge = (status) => h(`span.badge.${status}`, {}, status);

// Run `fn` now and then every `ms` until it returns false or the view stops it; returns a stop function.
export function poll(fn, ms) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      if ((await fn()) === false) stopped = true;
    } catch (err) {
      console.error(err);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export function showError(target, err) {
  target.replaceChildren(h("div.errorbox", {}, err.code ? `${err.code}: ${err.message}` : String(err.message || err)));
}
