// Per-step charts: uPlot (vendored, global `uPlot`), one line per metric key of the logged steps (the loss for every
// job; DPO jobs also get the reward margin, reinforcement jobs the mean reward, per sub-grader too).
const HEIGHT = 300;
// Colours of the lines a chart finds as it goes (a multi grader's sub-graders), in order.
const PALETTE = ["#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563"];

// The two lines of a metric: train_<metric> and valid_<metric> (the validation one may skip steps).
export function trainAndValid(metric, label) {
  return [
    { key: `train_${metric}`, label: `train ${label}`, stroke: "#2563eb", width: 2 },
    { key: `valid_${metric}`, label: `valid ${label}`, stroke: "#ea580c", width: 2, spanGaps: true },
  ];
}

// A y-axis tick: short, and not "0" for every tick of a tiny range (a GRPO loss near 1e-8).
function tick(v) {
  if (v === 0) return "0";
  return Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5 ? v.toExponential(1) : String(Number(v.toPrecision(4)));
}

export class MetricChart {
  // label: the y axis; series: the lines ({key: the metrics events' data key, label, stroke, …uPlot's series
  // options}); found(point): lines a step's data shows that the chart does not draw yet (added as they appear).
  constructor(el, label = "loss", series = trainAndValid("loss", "loss"), found = null) {
    this.el = el;
    this.label = label;
    this.series = [...series];
    this.found = found;
    this.byStep = new Map(); // step -> its data; a retried step overwrites, so one point per step
    this.plot = null;
    this.onResize = () => this.plot && this.plot.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener("resize", this.onResize);
  }

  width() {
    return Math.max(320, this.el.clientWidth || 800);
  }

  // Add metrics events' data ({step, <key>: value, …}) and redraw.
  add(points) {
    let grown = false;
    for (const p of points) {
      if (typeof p.step !== "number") continue;
      this.byStep.set(p.step, p);
      for (const s of this.found ? this.found(p) : []) {
        if (this.series.some((t) => t.key === s.key)) continue;
        this.series.push({ stroke: PALETTE[(this.series.length - 2) % PALETTE.length], width: 1.5, ...s });
        grown = true;
      }
    }
    if (grown && this.plot) {
      // uPlot's series are fixed at creation: a chart that found a new line is drawn anew.
      this.plot.destroy();
      this.plot = null;
    }
    this.draw();
  }

  data() {
    const steps = [...this.byStep.keys()].sort((a, b) => a - b);
    return [steps, ...this.series.map((s) => steps.map((step) => this.byStep.get(step)[s.key] ?? null))];
  }

  draw() {
    const data = this.data();
    this.el.dataset.points = String(data[0].length);
    this.el.dataset.series = this.series.map((s) => s.key).join(" ");
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    if (!data[0].length) return;
    const opts = {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: this.label, values: (u, splits) => splits.map(tick), size: 60 }],
      series: [{ label: "step" }, ...this.series.map(({ key, ...options }) => options)],
    };
    this.plot = new uPlot(opts, data, this.el);
    this.el.__uplot = this.plot; // lets tests read what is drawn
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    if (this.plot) this.plot.destroy();
  }
}
