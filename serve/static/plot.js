// The sweep's Pareto plot on a canvas: quality against what a user waits for (image -> views ->
// Gaussians, ms, log scale), from GET /v1/sweep; the points just served are ringed.
"use strict";

const Pareto = (() => {
  const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285",
                   "#e67700", "#5c940d", "#364fc7", "#a61e4d"];
  let data = null;
  let served = [];  // [{student, steps, tag}]

  function colours(points) {
    const names = [...new Set(points.map((p) => p.student))].sort();
    const out = {};
    names.forEach((n, i) => { out[n] = n === "teacher" ? "#222" : PALETTE[i % PALETTE.length]; });
    return out;
  }

  function niceTicks(lo, hi, n) {
    const span = hi - lo || Math.abs(hi) || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toFixed(6));
    return ticks;
  }

  function draw() {
    const canvas = document.getElementById("pareto");
    const note = document.getElementById("pareto-note");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!data || !data.points.length) {
      canvas.hidden = true;
      note.textContent = data ? "This server has no sweep results to plot (its sweep= is "
        + "empty or unreadable); latency budgets need them too." : "";
      return;
    }
    canvas.hidden = false;
    const W = canvas.width, H = canvas.height;
    const m = { l: 62, r: 150, t: 16, b: 44 };
    const pts = data.points;
    const xs = pts.map((p) => Math.log10(p.latency_ms));
    const ys = pts.map((p) => p.quality);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const padx = (x1 - x0 || 1) * 0.06, pady = (y1 - y0 || 1) * 0.08;
    x0 -= padx; x1 += padx; y0 -= pady; y1 += pady;
    const X = (ms) => m.l + (Math.log10(ms) - x0) / (x1 - x0) * (W - m.l - m.r);
    const Y = (q) => H - m.b - (q - y0) / (y1 - y0) * (H - m.t - m.b);
    const col = colours(pts);

    // axes and grid
    ctx.strokeStyle = "#d8dce6"; ctx.fillStyle = "#5b6478"; ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    for (let e = Math.floor(x0); e <= Math.ceil(x1); e++) {
      for (const k of [1, 2, 5]) {
        const v = k * Math.pow(10, e);
        if (Math.log10(v) < x0 || Math.log10(v) > x1) continue;
        const x = X(v);
        ctx.beginPath(); ctx.moveTo(x, m.t); ctx.lineTo(x, H - m.b); ctx.stroke();
        ctx.textAlign = "center"; ctx.fillText(String(+v.toPrecision(3)), x, H - m.b + 14);
      }
    }
    for (const v of niceTicks(y0, y1, 6)) {
      const y = Y(v);
      ctx.beginPath(); ctx.moveTo(m.l, y); ctx.lineTo(W - m.r, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(String(v), m.l - 6, y + 4);
    }
    ctx.fillStyle = "#1d2330"; ctx.textAlign = "center";
    ctx.fillText("image -> views -> Gaussians, ms (log scale; the sweep's, batch 1)",
                 (m.l + W - m.r) / 2, H - 8);
    ctx.save(); ctx.translate(14, (m.t + H - m.b) / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(`${data.quality} (${data.lower_is_better ? "lower" : "higher"} is better)`, 0, 0);
    ctx.restore();

    // the front the latency budget picks from
    const front = pts.filter((p) => p.front).sort((a, b) => a.latency_ms - b.latency_ms);
    if (front.length > 1) {
      ctx.strokeStyle = "#9aa3b5"; ctx.setLineDash([5, 4]); ctx.beginPath();
      front.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(p.latency_ms), Y(p.quality)));
      ctx.stroke(); ctx.setLineDash([]);
    }
    // every point, labelled with its steps
    for (const p of pts) {
      ctx.globalAlpha = p.servable ? 1 : 0.35;
      ctx.fillStyle = col[p.student];
      ctx.beginPath(); ctx.arc(X(p.latency_ms), Y(p.quality), p.front ? 5 : 3.5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "left";
      ctx.fillText(String(p.steps), X(p.latency_ms) + 5, Y(p.quality) - 5);
    }
    ctx.globalAlpha = 1;
    // the points just served
    for (const s of served) {
      const p = pts.find((q) => q.student === s.student && q.steps === s.steps
                                && (q.student !== "teacher" || q.sampler === "euler"));
      if (!p) continue;
      const x = X(p.latency_ms), y = Y(p.quality);
      ctx.strokeStyle = "#b3261e"; ctx.lineWidth = 2.5;
      ctx.beginPath(); ctx.arc(x, y, 10, 0, 2 * Math.PI); ctx.stroke(); ctx.lineWidth = 1;
      ctx.fillStyle = "#b3261e"; ctx.font = "bold 12px system-ui, sans-serif";
      ctx.fillText(`${s.tag}: ${s.student}@${s.steps}`, x + 12, y + 16);
    }
    // legend
    ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left";
    Object.entries(col).forEach(([name, c], i) => {
      const y = m.t + 6 + i * 16;
      ctx.fillStyle = c; ctx.beginPath(); ctx.arc(W - m.r + 16, y, 4, 0, 2 * Math.PI); ctx.fill();
      ctx.fillStyle = "#1d2330"; ctx.fillText(name, W - m.r + 26, y + 4);
    });
    const marked = served.filter((s) => pts.some((q) => q.student === s.student
                                                          && q.steps === s.steps));
    note.textContent = `${pts.length} sweep points from ${data.source}`
      + (data.device ? ` (measured on ${data.device})` : "")
      + "; labels = steps; larger dots and the dashed line: the Pareto front a latency budget "
      + "picks from; faded: not servable here. "
      + (marked.length ? "Ringed: " + marked.map((s) => `${s.tag} ${s.student}@${s.steps}`)
        .join(", ") + "." : (served.length ? "What was just served is not in the sweep." : ""));
  }

  async function load() {
    try {
      const r = await fetch("/v1/sweep");
      data = r.ok ? await r.json() : { points: [] };
    } catch (e) {
      data = { points: [] };
    }
    draw();
    return data;
  }

  function mark(list) { served = list; draw(); }

  return { load, mark, get data() { return data; } };
})();
