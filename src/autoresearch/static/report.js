// The run's page: summary, progress chart, lineage, knobs, experiments, one experiment's detail.
// Everything is drawn here from the records in #data, so the static report and the live dashboard are
// the same page; the dashboard adds records as they arrive over server-sent events (/events).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const META = DATA.meta, COLORS = META.colors, LIVE = META.live;
  const FAILED = ["crash", "timeout", "over_budget", "rejected"];
  const MAXIMIZE = META.goal === "maximize";
  const PAGE = 200;  // table rows drawn at a time: 10,000 rows at once would stall the page
  const records = [];
  const byId = new Map();
  let shown = PAGE, active = new Set(), query = "", openId = null, drawQueued = false, fresh = new Set();

  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const fin = (x) => typeof x === "number" && isFinite(x);
  const fmt = (x, d = 6) => fin(x) ? String(+x.toPrecision(d)) : "-";
  const signed = (x) => fin(x) ? (x >= 0 ? "+" : "") + fmt(x, 4) : "";
  const oneLine = (s, n) => { s = String(s || "").replace(/\s+/g, " ").trim(); return n && s.length > n ? s.slice(0, n - 1) + "…" : s; };
  const badge = (st) => `<span class="status" style="background:${COLORS[st] || "#57606a"}">${esc(st)}</span>`;

  function add(rec) {
    // Ids go into markup unescaped: anything but a whole number (a damaged ledger) is left out.
    if (rec == null || !Number.isInteger(rec.id) || byId.has(rec.id)) return false;
    byId.set(rec.id, rec);
    records.push(rec);
    if (records.length > 1 && records[records.length - 2].id > rec.id) records.sort((a, b) => a.id - b.id);
    return true;
  }

  // ---- summary: the same numbers as `autoresearch status` -----------------------------------------
  function summarize() {
    const s = {counts: {}, baseline: null, noise: null, baselineRuns: 0, best: null, bestId: null, bestDesc: "", cost: 0,
               threshold: null, kept: 0, flagged: []};
    for (const r of records) {
      s.counts[r.status] = (s.counts[r.status] || 0) + 1;
      if (fin(r.cost)) s.cost += r.cost;
      if (r.status === "baseline" && s.baseline === null && fin(r.metric)) {
        s.baseline = r.metric; s.noise = fin(r.noise) ? r.noise : null; s.baselineRuns = (r.runs || []).length;
      }
      if ((r.status === "baseline" || r.status === "keep") && fin(r.metric)) { s.best = r.metric; s.bestId = r.id; s.bestDesc = r.description; }
      if (r.status === "keep") s.kept++;
      if (fin(r.min_delta)) s.threshold = r.min_delta;
      if ((r.flags || []).includes("suspicious")) s.flagged.push(r.id);
    }
    s.experiments = records.filter((r) => r.status !== "baseline").length;
    if (s.baseline !== null && s.best !== null) {
      s.improvement = s.best - s.baseline;
      s.relative = s.baseline ? s.improvement / Math.abs(s.baseline) : null;
    }
    return s;
  }

  function drawSummary(s) {
    const m = META.metric, lines = [];
    if (META.tag) lines.push(`run ${META.tag} on ${META.branch || ""}: ${m} (${META.goal})`);
    if (s.baseline === null) lines.push("baseline: not measured yet");
    else {
      lines.push(`baseline: ${m} ${fmt(s.baseline)}${s.noise ? " ± " + fmt(s.noise, 3) : ""}${s.baselineRuns > 1 ? ` (${s.baselineRuns} runs)` : ""}` +
                 (fin(s.threshold) ? `; a change must gain more than ${fmt(s.threshold, 3)} to be kept` : ""));
      if (s.bestId !== null && s.bestId !== 0)
        lines.push(`best: ${m} ${fmt(s.best)} (${signed(s.improvement)}${fin(s.relative) ? ", " + (s.relative >= 0 ? "+" : "") + (100 * s.relative).toFixed(2) + "%" : ""}) at experiment ${s.bestId}: ${oneLine(s.bestDesc, 80)}`);
      else lines.push("best: the baseline (no kept improvement yet)");
    }
    const order = Object.keys(COLORS).filter((st) => st !== "baseline" && s.counts[st]).concat(Object.keys(s.counts).filter((st) => !(st in COLORS)).sort());
    lines.push(`experiments: ${s.experiments} (${order.map((st) => s.counts[st] + " " + st).join(", ") || "none yet"})`);
    if (s.flagged.length) lines.push(`flagged: ${s.flagged.length} implausibly large gains (experiments ${s.flagged.slice(-10).join(", ")}); re-run before judging`);
    lines.push(`proposer cost so far: $${s.cost.toFixed(2)}`);
    $("#summary").innerHTML = lines.map((l) => `<li>${esc(l)}</li>`).join("");
  }

  // ---- the progress chart (the SVG twin of progress.png) -----------------------------------------
  // Y range that shows the baseline band, every kept point and the near misses; far-off discards sit on the edge.
  function viewLimits(values, band, others) {
    let core = values.slice(); if (band) core.push(band[0], band[1]);
    let lo = Math.min(...core), hi = Math.max(...core);
    const reach = Math.max(hi - lo, Math.abs(hi) * 0.01);
    const near = others.filter((v) => MAXIMIZE ? (hi < v && v <= hi + reach) : (lo - reach <= v && v < lo));
    for (const v of near) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (hi === lo) { const h = Math.abs(hi) * 0.05 || 0.5; return [lo - h, hi + h]; }
    const span = hi - lo;
    return MAXIMIZE ? [lo - 0.6 * span, hi + 0.1 * span] : [lo - 0.1 * span, hi + 0.6 * span];
  }

  function ticks(lo, hi, n) {
    const raw = (hi - lo) / Math.max(n, 1), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((st) => st >= raw) || raw;
    const out = []; for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  // Scales of the chart now; `key` changes when an added point would not fit the drawing as it is.
  function geometry(s) {
    const box = $("#chart-svg"), W = Math.max(box.clientWidth || 1100, 400), H = 440;
    const M = {l: 64, r: 16, t: 14, b: 38}, iw = W - M.l - M.r, ih = H - M.t - M.b;
    const kept = records.filter((r) => r.status === "keep" && fin(r.metric));
    const measured = records.filter((r) => r.status !== "baseline" && r.status !== "keep" && fin(r.metric));
    const lastId = records.length ? records[records.length - 1].id : 0;
    const band = s.baseline !== null ? [s.baseline - 2 * (s.noise || 0), s.baseline + 2 * (s.noise || 0)] : null;
    let anchors = kept.map((r) => r.metric); if (s.baseline !== null) anchors.push(s.baseline);
    if (!anchors.length) anchors = measured.length ? measured.map((r) => r.metric) : [0, 1];
    const [ylo, yhi] = viewLimits(anchors, band, measured.map((r) => r.metric));
    // Past 100 experiments the x axis grows in steps (a tenth of the order of magnitude), so most new
    // points land on the drawing as it is and are added to it instead of redrawing thousands.
    const q = Math.pow(10, Math.floor(Math.log10(Math.max(lastId, 1)))) / 10;
    const xmax = lastId < 100 ? Math.max(lastId, 1) : Math.ceil((lastId + 1) / q) * q, xhi = xmax + 0.8, xlo = -0.8;
    const X = (v) => M.l + (v - xlo) / (xhi - xlo) * iw, Y = (v) => M.t + (yhi - v) / (yhi - ylo) * ih;
    return {W, H, M, iw, ih, kept, measured, lastId, band, ylo, yhi, xmax, X, Y, key: [W, ylo, yhi, xhi, s.threshold, s.best, s.baseline].join()};
  }

  const f1 = (v) => v.toFixed(1);
  const tip = (r) => `<title>#${r.id} ${esc(r.status)} ${esc(fmt(r.metric))} — ${esc(oneLine(r.description, 120))}</title>`;

  // A point that is not a keep: a grey dot, a triangle on the edge when off the view, a red cross when it failed.
  function pointSvg(r, g) {
    const x = f1(g.X(r.id));
    if (fin(r.metric)) {
      if (r.metric >= g.ylo && r.metric <= g.yhi) return `<circle data-id="${r.id}" cx="${x}" cy="${f1(g.Y(r.metric))}" r="3.3" fill="#8c959f" opacity=".55">${tip(r)}</circle>`;
      const up = r.metric > g.yhi, y = up ? g.M.t + 4 : g.M.t + g.ih - 4, d = up ? -4 : 4;  // pointing the way the value lies
      return `<path data-id="${r.id}" d="M${x} ${y + d}l-4 ${-2 * d}h8z" fill="#8c959f" opacity=".45">${tip(r)}</path>`;
    }
    if (!FAILED.includes(r.status)) return "";
    const y = MAXIMIZE ? g.M.t + g.ih - 8 : g.M.t + 8;
    return `<path data-id="${r.id}" class="fail" d="M${f1(g.X(r.id) - 4)} ${y - 4}l8 8m0 -8l-8 8" stroke="#cf222e" stroke-width="1.8">${tip(r)}</path>`;
  }

  let chart = null;  // the geometry and step line the chart was last drawn with

  function chartTitles(s) {
    $("#chart-title").textContent = `autoresearch progress: ${s.experiments} experiments, ${s.kept} kept improvement${s.kept === 1 ? "" : "s"}`;
    let sub = "";
    if (s.baseline !== null && s.best !== null) {
      sub = `${META.metric}: baseline ${fmt(s.baseline, 5)}${s.noise ? ` ± ${fmt(s.noise, 2)} (std)` : ""} → best ${fmt(s.best, 5)}`;
      if (fin(s.relative) && s.bestId !== 0) sub += ` (${s.relative >= 0 ? "+" : ""}${(100 * s.relative).toFixed(1)}%)`;
    } else if (!records.length) sub = "no experiments yet";
    $("#chart-sub").textContent = sub;
  }

  // New records that are not keeps, on an unchanged view: add their points; anything else: redraw.
  function updateChart(s, added) {
    const g = geometry(s);
    if (!chart || g.key !== chart.g.key || added.some((r) => r.status === "keep" || r.status === "baseline")) return drawChart(s, g);
    $("#points").insertAdjacentHTML("beforeend", added.map((r) => pointSvg(r, g)).join(""));
    const line = $("#best-line");
    if (line) line.setAttribute("d", chart.steps + `H${f1(g.X(g.lastId + 0.5))}`);
    chartTitles(s);
  }

  function drawChart(s, g = geometry(s)) {
    const {W, H, M, iw, ih, kept, measured, lastId, band, ylo, yhi, X, Y} = g;
    const o = [];
    o.push(`<g class="grid">`);
    for (const t of ticks(ylo, yhi, 6)) o.push(`<line x1="${M.l}" x2="${M.l + iw}" y1="${f1(Y(t))}" y2="${f1(Y(t))}"/><text x="${M.l - 6}" y="${f1(Y(t) + 4)}" text-anchor="end">${esc(fmt(t, 5))}</text>`);
    for (const t of ticks(0, g.xmax, 10).filter((t) => Number.isInteger(t))) o.push(`<line y1="${M.t}" y2="${M.t + ih}" x1="${f1(X(t))}" x2="${f1(X(t))}"/><text x="${f1(X(t))}" y="${M.t + ih + 16}" text-anchor="middle">${t}</text>`);
    o.push(`</g><text x="${M.l + iw / 2}" y="${H - 4}" text-anchor="middle">experiment #</text>`);
    o.push(`<text transform="translate(13 ${M.t + ih / 2}) rotate(-90)" text-anchor="middle">${esc(META.metric)} (${MAXIMIZE ? "higher" : "lower"} is better)</text>`);
    o.push(`<svg x="${M.l}" y="${M.t}" width="${iw}" height="${ih}" viewBox="${M.l} ${M.t} ${iw} ${ih}" overflow="hidden">`);
    if (band) {
      if (band[1] > band[0]) o.push(`<rect id="band" x="${M.l}" width="${iw}" y="${f1(Y(band[1]))}" height="${f1(Math.max(Y(band[0]) - Y(band[1]), 0.5))}" fill="#1f6feb" opacity=".10"><title>baseline ± 2·noise</title></rect>`);
      o.push(`<line x1="${M.l}" x2="${M.l + iw}" y1="${f1(Y(s.baseline))}" y2="${f1(Y(s.baseline))}" stroke="#1f6feb" stroke-dasharray="5 4" opacity=".7"/>`);
    }
    if (fin(s.threshold) && s.threshold > 0 && s.best !== null) {
      const t = MAXIMIZE ? s.best + s.threshold : s.best - s.threshold;
      o.push(`<line id="threshold" x1="${M.l}" x2="${M.l + iw}" y1="${f1(Y(t))}" y2="${f1(Y(t))}" stroke="#1a7f37" stroke-dasharray="2 3" opacity=".8"><title>keep threshold: a new experiment must reach ${fmt(t)}</title></line>`);
    }
    o.push(`</svg><g id="points">`);
    for (const r of records) if (r.status !== "baseline" && r.status !== "keep") o.push(pointSvg(r, g));
    o.push(`</g>`);
    const steps = records.filter((r) => (r.status === "baseline" || r.status === "keep") && fin(r.metric));
    let path = "";
    if (steps.length) {
      path = `M${f1(X(steps[0].id))} ${f1(Y(steps[0].metric))}`;
      for (const r of steps.slice(1)) path += `H${f1(X(r.id))}V${f1(Y(r.metric))}`;
      o.push(`<path id="best-line" d="${path}H${f1(X(Math.max(lastId, steps[steps.length - 1].id) + 0.5))}" fill="none" stroke="#1a7f37" stroke-width="2" opacity=".85"/>`);
    }
    const base = steps.find((r) => r.status === "baseline");
    if (base) o.push(`<circle data-id="${base.id}" cx="${f1(X(base.id))}" cy="${f1(Y(base.metric))}" r="6" fill="#1f6feb" stroke="#fff" stroke-width="1.2">${tip(base)}</circle>`);
    // Label the kept points, the biggest gains first when there are too many to read.
    const labelled = new Set(kept.slice().sort((a, b) => Math.abs(b.delta || 0) - Math.abs(a.delta || 0)).slice(0, 15).map((r) => r.id));
    for (const r of kept) {
      const x = X(r.id), y = Y(r.metric);
      o.push(`<circle data-id="${r.id}" class="kept" cx="${f1(x)}" cy="${f1(y)}" r="6" fill="#2da44e" stroke="#116329" stroke-width="1.2">${tip(r)}</circle>`);
      if (!labelled.has(r.id)) continue;
      const left = (x - M.l) / iw > 0.72, rot = (left ? -25 : 25) * (MAXIMIZE ? -1 : 1);
      const label = ((r.flags || []).includes("suspicious") ? "(!) " : "") + oneLine(r.description, 48);
      o.push(`<text class="label" x="${f1(x + (left ? -8 : 8))}" y="${f1(y + (MAXIMIZE ? -5 : 5))}" text-anchor="${left ? "end" : "start"}" transform="rotate(${rot} ${f1(x)} ${f1(y)})">${esc(label)}</text>`);
    }
    const box = $("#chart-svg");
    box.setAttribute("viewBox", `0 0 ${W} ${H}`);
    box.innerHTML = o.join("");
    chart = {g, steps: path};
    chartTitles(s);
  }

  // ---- lineage: the kept commits, baseline first ------------------------------------------------
  function drawLineage() {
    const chain = records.filter((r) => r.status === "baseline" || r.status === "keep");
    $("#lineage-list").innerHTML = chain.map((r) => `<li data-id="${r.id}"><span class="mono">${esc((r.commit || "").slice(0, 9))}</span> ` +
      `#${r.id} ${badge(r.status)} <b>${esc(fmt(r.metric))}</b> <span class="muted">${esc(signed(r.delta))}</span><br>` +
      `<span class="reason">${esc(oneLine(r.description, 140))}</span></li>`).join("") || `<li class="muted">no commits yet</li>`;
  }

  // ---- knobs: which parameters mattered (tune runs) ---------------------------------------------
  let importances = DATA.importances || null;

  function drawKnobs() {
    const withParams = records.filter((r) => r.params && fin(r.metric) && r.status !== "baseline");
    const sec = $("#knobs");
    if (!withParams.length) { sec.hidden = true; return; }
    sec.hidden = false;
    const imp = (importances && importances.importances) || {};
    const names = [...new Set(withParams.flatMap((r) => Object.keys(r.params)))];
    names.sort((a, b) => (imp[b] || 0) - (imp[a] || 0) || a.localeCompare(b));
    const top = Math.max(...names.map((n) => imp[n] || 0), 1e-12);
    $("#importance").innerHTML = importances && Object.keys(imp).length
      ? `<table>${names.filter((n) => n in imp).map((n) => `<tr><td class="mono">${esc(n)}</td><td><span class="bar" style="width:${(200 * imp[n] / top).toFixed(0)}px"></span> ${imp[n].toFixed(3)}</td></tr>`).join("")}</table>` +
        `<div class="reason">Optuna's ${esc(importances.method)} importance over ${importances.trials} measured experiments: how much each knob decides whether an experiment lands among the best 10%</div>`
      : `<div class="muted">${esc((importances && importances.note) || (LIVE && !importances ? "computing…" : "not enough measured experiments yet to tell"))}</div>`;
    // Thousands of dots per knob say no more than the latest 2,000 (and every keep), and cost far more to draw.
    const cap = 2000, sample = withParams.filter((r, i) => r.status === "keep" || i >= withParams.length - cap);
    $("#slices").innerHTML = names.slice(0, 8).map((n) => slice(n, sample)).join("") +
      (sample.length < withParams.length ? `<div class="reason">the latest ${cap} experiments and every keep of ${withParams.length}</div>` : "");
  }

  // One knob's values against the metric: each measured experiment is a dot, kept ones green.
  function slice(name, rows) {
    const pts = rows.filter((r) => r.params[name] !== undefined);
    const W = 290, H = 170, M = {l: 48, r: 8, t: 16, b: 26};
    const numeric = pts.every((r) => typeof r.params[name] === "number");
    let cats = [], xs;
    if (numeric) {
      const v = pts.map((r) => r.params[name]), lo = Math.min(...v), hi = Math.max(...v);
      const log = lo > 0 && hi / lo >= 100, t = (x) => log ? Math.log10(x) : x;
      const a = t(lo), b = t(hi) === a ? a + 1 : t(hi);
      xs = (x) => M.l + 6 + (t(x) - a) / (b - a) * (W - M.l - M.r - 12);
    } else {
      cats = [...new Set(pts.map((r) => String(r.params[name])))].sort();
      xs = (x) => M.l + (cats.indexOf(String(x)) + 0.5) / cats.length * (W - M.l - M.r);
    }
    const m = pts.map((r) => r.metric), s = summarize();
    let [lo, hi] = [Math.min(...m), Math.max(...m)];
    if (s.baseline !== null) { const v = viewLimits([s.best, s.baseline], null, m); lo = Math.max(lo, v[0]); hi = Math.min(hi, v[1]); }
    if (hi <= lo) { hi = lo + 1; lo -= 1; }
    const Y = (v) => M.t + (hi - Math.min(Math.max(v, lo), hi)) / (hi - lo) * (H - M.t - M.b);
    const o = [`<svg viewBox="0 0 ${W} ${H}"><text x="${M.l}" y="11" style="font-weight:600;fill:#1f2328">${esc(name)}</text>`];
    o.push(`<text x="${M.l - 4}" y="${M.t + 4}" text-anchor="end">${esc(fmt(hi, 4))}</text><text x="${M.l - 4}" y="${H - M.b}" text-anchor="end">${esc(fmt(lo, 4))}</text>`);
    o.push(`<line x1="${M.l}" x2="${M.l}" y1="${M.t}" y2="${H - M.b}" stroke="#d0d7de"/><line x1="${M.l}" x2="${W - M.r}" y1="${H - M.b}" y2="${H - M.b}" stroke="#d0d7de"/>`);
    if (numeric) {
      const v = pts.map((r) => r.params[name]);
      o.push(`<text x="${M.l}" y="${H - 8}">${esc(fmt(Math.min(...v), 4))}</text><text x="${W - M.r}" y="${H - 8}" text-anchor="end">${esc(fmt(Math.max(...v), 4))}</text>`);
    } else for (const c of cats) o.push(`<text x="${xs(c).toFixed(1)}" y="${H - 8}" text-anchor="middle">${esc(oneLine(c, 12))}</text>`);
    for (const r of pts) {
      const k = r.status === "keep";
      o.push(`<circle data-id="${r.id}" cx="${xs(r.params[name]).toFixed(1)}" cy="${Y(r.metric).toFixed(1)}" r="${k ? 4.5 : 3}" fill="${k ? "#2da44e" : "#8c959f"}" opacity="${k ? 1 : 0.6}"><title>#${r.id} ${esc(name)}=${esc(r.params[name])}: ${esc(fmt(r.metric))}</title></circle>`);
    }
    return o.join("") + "</svg>";
  }

  // ---- the table of experiments -----------------------------------------------------------------
  function matches(r) {
    if (active.size && !active.has(r.status)) return false;
    return !query || (r.description + " " + r.reason + " " + (r.commit || "")).toLowerCase().includes(query);
  }

  function drawFilters(s) {
    const sts = Object.keys(s.counts).sort((a, b) => (Object.keys(COLORS).indexOf(a) + 99) % 99 - (Object.keys(COLORS).indexOf(b) + 99) % 99);
    $("#chips").innerHTML = `<span class="chip${active.size ? "" : " on"}" data-status="">all ${records.length}</span>` +
      sts.map((st) => `<span class="chip${active.has(st) ? " on" : ""}" data-status="${esc(st)}">${esc(st)} ${s.counts[st]}</span>`).join("");
  }

  function drawTable() {
    const rows = records.filter(matches).reverse();  // newest first: the morning after starts at the end
    const o = rows.slice(0, shown).map((r) => {
      const wall = (r.runs || []).reduce((a, x) => a + (fin(x.wall_s) ? x.wall_s : 0), 0);
      return `<tr class="st-${esc(r.status)}${fresh.has(r.id) ? " fresh" : ""}" data-id="${r.id}"><td class="num">${r.id}</td><td>${badge(r.status)}${(r.flags || []).includes("suspicious") && r.status !== "suspicious" ? " !" : ""}</td>` +
        `<td class="num">${esc(fmt(r.metric))}</td><td class="num">${esc(signed(r.delta))}</td>` +
        `<td>${esc(oneLine(r.description, 300))}<div class="reason">${esc(oneLine(r.reason, 240))}</div></td>` +
        `<td class="num">${(r.runs || []).length}</td><td class="num">${wall ? wall.toFixed(1) : ""}</td><td>${esc(r.proposer || "")}</td><td class="mono">${esc((r.commit || "").slice(0, 9))}</td></tr>`;
    });
    $("#rows").innerHTML = o.join("");
    $("#shown").textContent = `${Math.min(shown, rows.length)} of ${rows.length} shown`;
    $("#more").hidden = rows.length <= shown;
  }

  // ---- one experiment ---------------------------------------------------------------------------
  async function details(id) {
    if (DATA.details) return DATA.details[id] || {};
    const res = await fetch(`api/experiment/${id}`);
    return res.ok ? res.json() : {};
  }

  function diffHtml(text) {
    return text.split("\n").map((l) => {
      const c = l.startsWith("+++") || l.startsWith("---") ? "" : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "";
      return c ? `<span class="${c}">${esc(l)}</span>` : esc(l);
    }).join("\n");
  }

  async function openDetail(id) {
    const r = byId.get(id); if (!r) return;
    openId = id;
    if (location.hash !== `#exp-${id}`) history.replaceState(null, "", `#exp-${id}`);
    const p = $("#detail"); p.hidden = false;
    const dl = [["reason", r.reason], [META.metric, fmt(r.metric)], ["delta", signed(r.delta)], ["best after", fmt(r.best)],
                ["noise used", fmt(r.noise_used, 3)], ["threshold used", fmt(r.min_delta, 3)], ["proposer", r.proposer],
                ["commit", `${r.commit || "-"} (parent ${r.parent || "-"})`], ["time", `${r.start || ""} → ${r.end || ""}`],
                ["cost", fin(r.cost) ? "$" + r.cost.toFixed(4) : ""], ["flags", (r.flags || []).join(", ")]].filter((x) => x[1] && x[1] !== "-");
    const params = r.params ? `<h3>knobs</h3><dl>${Object.entries(r.params).map(([k, v]) => `<dt class="mono">${esc(k)}</dt><dd class="mono">${esc(v)}</dd>`).join("")}</dl>` : "";
    const runs = (r.runs || []).map((x, k) => `<tr><td>${k + 1}</td><td>${esc(x.seed)}</td><td>${esc(x.exit_code)}${x.timed_out ? " (timed out)" : ""}</td>` +
      `<td>${fin(x.wall_s) ? x.wall_s.toFixed(1) : ""}</td><td>${fin(x.peak_rss_mb) ? x.peak_rss_mb.toFixed(0) : ""}</td>` +
      `<td class="mono">${Object.entries(x.metrics || {}).map(([k, v]) => esc(`${k}=${typeof v === "number" ? fmt(v) : v}`)).join(" ")}</td></tr>`).join("");
    p.innerHTML = `<button id="close" style="float:right">close ✕</button><h2>experiment ${r.id} ${badge(r.status)}</h2>` +
      `<p>${esc(r.description)}</p><dl>${dl.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("")}</dl>${params}` +
      `<h3>repeats</h3>${runs ? `<table><thead><tr><th>#</th><th>seed</th><th>exit</th><th>wall s</th><th>peak MB</th><th>metrics</th></tr></thead><tbody>${runs}</tbody></table>` : `<div class="muted">none ran</div>`}` +
      `<div id="detail-files" class="muted">loading diff and logs…</div>`;
    const d = await details(id);
    if (openId !== id) return;
    let files = `<h3>diff</h3>` + (d.diff ? `<pre class="diff">${diffHtml(d.diff)}</pre>` : `<div class="muted">no change recorded</div>`);
    for (const log of d.logs || []) files += `<h3>${esc(log.name)} <span class="muted">(last ${log.lines} lines)</span></h3><pre class="log">${esc(log.tail)}</pre>`;
    if (!(d.logs || []).length && r.log_tail) files += `<h3>log tail</h3><pre class="log">${esc(r.log_tail)}</pre>`;
    const box = $("#detail-files"); box.className = ""; box.innerHTML = files;
  }

  function closeDetail() { openId = null; $("#detail").hidden = true; history.replaceState(null, "", location.pathname + location.search); }

  // ---- wiring -----------------------------------------------------------------------------------
  // New records update the chart in place where they can; the knobs wait for the importances that follow.
  let added = [];
  function draw(knobs = false) {
    drawQueued = false;
    const t0 = performance.now(), s = summarize();
    drawSummary(s);
    if (knobs) drawChart(s); else updateChart(s, added);
    if (knobs || added.some((r) => r.status === "keep" || r.status === "baseline")) drawLineage();
    if (knobs) drawKnobs();
    drawFilters(s); drawTable();
    added = [];
    document.body.dataset.records = String(records.length);  // what tests and benchmarks wait on
    document.body.dataset.drawMs = (performance.now() - t0).toFixed(1);
  }
  const schedule = () => { if (!drawQueued) { drawQueued = true; requestAnimationFrame(() => draw()); } };

  document.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) {
      const st = chip.dataset.status;
      if (!st) active.clear(); else if (active.has(st)) active.delete(st); else active.add(st);
      shown = PAGE; drawFilters(summarize()); drawTable(); return;
    }
    if (e.target.id === "close") return closeDetail();
    if (e.target.id === "more") { shown += PAGE; drawTable(); return; }
    const hit = e.target.closest("[data-id]");
    if (hit && !hit.closest("#detail")) openDetail(Number(hit.dataset.id));
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
  $("#search").addEventListener("input", (e) => { query = e.target.value.trim().toLowerCase(); shown = PAGE; drawTable(); });
  window.addEventListener("resize", () => drawChart(summarize()));

  for (const r of DATA.records) add(r);
  draw(true);
  const m = /^#exp-(\d+)$/.exec(location.hash); if (m) openDetail(Number(m[1]));

  if (LIVE) {
    let impTimer = null;
    const refreshImportances = (wait = 5000) => {  // Optuna runs in the server; ask again once records stop arriving for a while
      clearTimeout(impTimer);
      impTimer = setTimeout(async () => { const res = await fetch("api/importances"); if (res.ok) { importances = await res.json(); drawKnobs(); } }, wait);
    };
    if (records.some((r) => r.params)) refreshImportances(0);  // then drawKnobs() with the answer
    const live = $("#live");
    const src = new EventSource(`events?offset=${META.offset}`);
    src.onopen = () => { live.textContent = "● live"; live.className = "on"; };
    src.onerror = () => { live.textContent = "● reconnecting"; live.className = "off"; };
    src.addEventListener("experiment", (e) => {
      const r = JSON.parse(e.data);
      if (add(r)) { fresh.add(r.id); added.push(r); schedule(); if (r.params) refreshImportances(); }
    });
    src.addEventListener("reset", () => location.reload());  // the ledger was replaced (`run --new`)
  }
})();
