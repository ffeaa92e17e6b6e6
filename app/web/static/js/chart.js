// The loss chart: uPlot (vendored, global `uPlot`), train and valid loss per logged step.
const HEIGHT = 300;

export class LossChart {
  constructor(el) {
    this.el = el;
    this.byStep = new Map(); // step -> {train, valid}; a retried step overwrites, so one point per step
    this.plot = null;
    this.onResize = () => this.plot && this.plot.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener("resize", this.onResize);
  }

  width() {
    return Math.max(320, this.el.clientWidth || 800);
  }

  // Add metrics events' data ({step, train_loss, valid_loss?}) and redraw.
  add(points) {
    for (const p of points) {
      if (typeof p.step !== "number") continue;
      this.byStep.set(p.step, { train: p.train_loss ?? null, valid: p.valid_loss ?? null });
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
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "train loss", stroke: "#2563eb", width: 2 },
        { label: "valid loss", stroke: "#ea580c", width: 2, spanGaps: true },
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
