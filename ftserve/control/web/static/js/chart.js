// Per-step charts: uPlot (vendored, global `uPlot`), a train and a valid series of one metric per logged step
// (the loss for every job; DPO jobs also get the reward margin).
const HEIGHT = 300;

export class MetricChart {
  // metric: the events' key without its prefix ("loss" reads train_loss and valid_loss); label: the y axis.
  constructor(el, metric = "loss", label = "loss") {
    this.el = el;
    this.metric = metric;
    this.label = label;
    this.byStep = new Map(); // step -> {train, valid}; a retried step overwrites, so one point per step
    this.plot = null;
    this.onResize = () => this.plot && this.plot.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener("resize", this.onResize);
  }

  width() {
    return Math.max(320, this.el.clientWidth || 800);
  }

  // Add metrics events' data ({step, train_<metric>, valid_<metric>?}) and redraw.
  add(points) {
    for (const p of points) {
      if (typeof p.step !== "number") continue;
      this.byStep.set(p.step, { train: p[`train_${this.metric}`] ?? null, valid: p[`valid_${this.metric}`] ?? null });
    }
    this.draw();
  }

  data() {
    const steps = [...this.byStep.keys()].sort((a, b) => a - b);
    return [steps, steps.map((s) => this.byStep.get(s).train), steps.map((s) => this.byStep.get(s).valid)];
  }

  draw() {
    const data = this.data();
    this.el.dataset.points = String(data[0].length);
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    if (!data[0].length) return;
    const opts = {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: this.label }],
      series: [
        { label: "step" },
        { label: `train ${this.label}`, stroke: "#2563eb", width: 2 },
        { label: `valid ${this.label}`, stroke: "#ea580c", width: 2, spanGaps: true },
      ],
    };
    this.plot = new uPlot(opts, data, this.el);
    this.el.__uplot = this.plot; // lets tests read what is drawn
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    if (this.plot) this.plot.destroy();
  }
}
