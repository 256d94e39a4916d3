// latpred dashboard: draws the charts of the server-rendered pages with the vendored Chart.js.
// Plain browser JavaScript, no build step. Text from the server is only ever set with textContent.
"use strict";

(function () {
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173"];
  const BIT_COLORS = { 32: "#7f7f7f", 16: "#1f77b4", 8: "#2ca02c", 4: "#ff7f0e" };
  const SOURCE_COLORS = { table: "#2e7d32", regressor: "#1565c0", fallback: "#e65100" };
  const SOURCES = ["table", "regressor", "fallback"];
  const TOKEN_KEY = "latpred-api-token";
  const TOP_KERNELS = 25;
  const BAND = 0.10;

  function bitsLabel(bits) {
    return bits <= 8 ? "int" + bits : "fp" + bits;
  }

  function fmtMs(value) {
    if (value === null || value === undefined) return "–";
    return value < 100 ? value.toFixed(3) + " ms" : value.toFixed(1) + " ms";
  }

  function fmtPct(share) {
    return share === null || share === undefined ? "–" : Math.round(share * 100) + "%";
  }

  function setText(id, text, level) {
    const element = document.getElementById(id);
    if (!element) return;
    element.textContent = text;
    element.className = "status" + (level ? " " + level : "");
  }

  function token() {
    const input = document.getElementById("api-token");
    if (input && input.value.trim()) return input.value.trim();
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path, options) {
    const request = Object.assign({}, options || {});
    request.headers = Object.assign({}, request.headers || {});
    if (token()) request.headers["Authorization"] = "Bearer " + token();
    const response = await fetch(path, request);
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return body;
  }

  function postJson(path, body) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  function newChart(canvasId, config) {
    const canvas = document.getElementById(canvasId);
    const previous = Chart.getChart(canvas);
    if (previous) previous.destroy();
    return new Chart(canvas, config);
  }

  function noData(name, text) {
    const note = document.getElementById("chart-" + name + "-note");
    if (note) {
      note.textContent = text;
      note.className = "note warn";
    }
  }

  // ---- device page -------------------------------------------------------------------------------

  function drawMacs(data) {
    if (!data.series.length) {
      noData("macs", "No kernels with MACs measured yet.");
      return;
    }
    const datasets = data.series.map(function (series, index) {
      const color = PALETTE[index % PALETTE.length];
      return {
        label: series.op_type,
        data: series.points.map(function (p) {
          return { x: p.macs, y: p.latency_ms, bits: p.bits, sparsity: p.sparsity };
        }),
        backgroundColor: color + "b0",
        borderColor: color,
        pointRadius: 3,
      };
    });
    newChart("chart-macs", {
      type: "scatter",
      data: { datasets: datasets },
      options: {
        maintainAspectRatio: false,
        scales: {
          x: { type: "logarithmic", title: { display: true, text: "MACs" } },
          y: { type: "logarithmic", title: { display: true, text: "latency (ms)" } },
        },
        plugins: {
          // Many op types: a compact legend at the side keeps the plot area usable.
          legend: { position: datasets.length > 6 ? "right" : "top", labels: { boxWidth: 10, font: { size: 10 } } },
          tooltip: {
            callbacks: {
              label: function (context) {
                const p = context.raw;
                return context.dataset.label + ": " + fmtMs(p.y) + ", " + p.x.toExponential(2) + " MACs, " +
                  bitsLabel(p.bits) + (p.sparsity ? ", sparsity " + p.sparsity : "");
              },
            },
          },
        },
      },
    });
    if (data.shown < data.total) {
      noData("macs", "Showing " + data.shown + " of " + data.total + " kernels (a sample).");
    }
  }

  function drawBits(rows) {
    const paired = rows.filter(function (row) { return row.bits !== 32 && row.speedup !== null; });
    const useSpeedup = paired.length > 0;
    const families = Array.from(new Set((useSpeedup ? paired : rows).map(function (row) { return row.family; })))
      .sort();
    if (!families.length) {
      noData("bits", "No kernels measured yet.");
      return;
    }
    const bitsPresent = [32, 16, 8, 4].filter(function (bits) {
      return rows.some(function (row) { return row.bits === bits && families.includes(row.family); });
    });
    const datasets = bitsPresent.map(function (bits) {
      return {
        label: bitsLabel(bits),
        backgroundColor: BIT_COLORS[bits],
        data: families.map(function (family) {
          const row = rows.find(function (r) { return r.family === family && r.bits === bits; });
          if (!row) return null;
          return useSpeedup ? row.speedup : row.median_ms;
        }),
        rows: families.map(function (family) {
          return rows.find(function (r) { return r.family === family && r.bits === bits; }) || null;
        }),
      };
    });
    newChart("chart-bits", {
      type: "bar",
      data: { labels: families, datasets: datasets },
      options: {
        maintainAspectRatio: false,
        scales: {
          y: { beginAtZero: true, title: { display: true, text: useSpeedup ? "speedup vs fp32 (×)" : "median latency (ms)" } },
        },
        plugins: {
          tooltip: {
            callbacks: {
              label: function (context) {
                const row = context.dataset.rows[context.dataIndex];
                if (!row) return context.dataset.label + ": not measured";
                const speed = row.speedup === null ? "no fp32 twin" : row.speedup.toFixed(2) + "× over " + row.pairs + " shapes";
                return context.dataset.label + ": " + speed + "; median " + fmtMs(row.median_ms) + " over " + row.kernels + " kernels";
              },
            },
          },
        },
      },
    });
    if (!useSpeedup) {
      noData("bits", "No shape was measured both in fp32 and at another bit-width: showing median latency per bit-width instead.");
    }
  }

  function drawSparsity(rows) {
    const groups = [];
    rows.forEach(function (row) {
      const label = row.family + " (" + row.pattern + ")";
      let group = groups.find(function (g) { return g.label === label; });
      if (!group) {
        group = { label: label, points: [] };
        groups.push(group);
      }
      group.points.push({ x: row.sparsity, y: row.speedup, pairs: row.pairs });
    });
    if (!groups.length) {
      noData("sparsity", "No sparse kernel has a dense twin of the same shape measured on this device.");
      return;
    }
    newChart("chart-sparsity", {
      type: "scatter",
      data: {
        datasets: groups.map(function (group, index) {
          const color = PALETTE[index % PALETTE.length];
          return { label: group.label, data: group.points, showLine: true, borderColor: color, backgroundColor: color, pointRadius: 4 };
        }),
      },
      options: {
        maintainAspectRatio: false,
        scales: {
          x: { min: 0, max: 1, title: { display: true, text: "weight sparsity" } },
          y: { beginAtZero: true, title: { display: true, text: "speedup vs dense (×)" } },
        },
        plugins: {
          tooltip: {
            callbacks: {
              label: function (context) {
                const p = context.raw;
                return context.dataset.label + " at " + p.x + ": " + p.y.toFixed(2) + "×" + (p.pairs ? " over " + p.pairs + " shapes" : " (dense)");
              },
            },
          },
        },
      },
    });
  }

  function drawValidation(validation) {
    const points = validation.points.filter(function (p) { return p.measured_ms > 0; });
    if (!points.length) {
      noData("validation", "No validation runs yet: `latpred validate MODEL.onnx --device NAME` measures models end to end.");
      return;
    }
    const values = points.flatMap(function (p) { return [p.measured_ms, p.predicted_ms]; });
    const low = Math.min.apply(null, values) * 0.8;
    const high = Math.max.apply(null, values) * 1.2;
    function line(factor) {
      return [{ x: low, y: low * factor }, { x: high, y: high * factor }];
    }
    const inside = points.map(function (p) { return Math.abs(p.error) <= BAND; });
    newChart("chart-validation", {
      type: "scatter",
      data: {
        datasets: [
          { label: "+10%", data: line(1 + BAND), showLine: true, pointRadius: 0, borderColor: "#9ccc65", borderWidth: 1, fill: "+1", backgroundColor: "rgba(156, 204, 101, 0.18)" },
          { label: "−10%", data: line(1 - BAND), showLine: true, pointRadius: 0, borderColor: "#9ccc65", borderWidth: 1 },
          { label: "predicted = measured", data: line(1), showLine: true, pointRadius: 0, borderColor: "#555", borderDash: [4, 4], borderWidth: 1 },
          {
            label: "validations",
            data: points.map(function (p) { return { x: p.measured_ms, y: p.predicted_ms, info: p }; }),
            pointRadius: 5,
            backgroundColor: "#2e7d32",
            pointBackgroundColor: inside.map(function (ok) { return ok ? "#2e7d32" : "#d62728"; }),
            pointBorderColor: inside.map(function (ok) { return ok ? "#1b5e20" : "#8e0000"; }),
          },
        ],
      },
      options: {
        maintainAspectRatio: false,
        scales: {
          x: { min: low, max: high, title: { display: true, text: "measured (ms)" } },
          y: { min: low, max: high, title: { display: true, text: "predicted (ms)" } },
        },
        plugins: {
          legend: { labels: { filter: function (item) { return item.text !== "−10%"; } } },
          tooltip: {
            filter: function (item) { return item.datasetIndex === 3; },
            callbacks: {
              label: function (context) {
                const p = context.raw.info;
                return p.model + " / " + p.config + ": predicted " + fmtMs(p.predicted_ms) + ", measured " +
                  fmtMs(p.measured_ms) + " (" + (p.error >= 0 ? "+" : "") + (p.error * 100).toFixed(1) + "%)";
              },
            },
          },
        },
      },
    });
    noData("validation", points.length + " validations, " + fmtPct(validation.within_band) + " within ±10%, MAPE " +
      fmtPct(validation.mape) + ". Shaded: the ±10% band.");
    document.getElementById("chart-validation-note").className = "note";
  }

  async function devicePage() {
    const name = document.body.dataset.device;
    try {
      const data = await api("/api/v1/dashboard/devices/" + encodeURIComponent(name) + "/charts");
      drawMacs(data.latency_vs_macs);
      drawBits(data.bits);
      drawSparsity(data.sparsity);
      drawValidation(data.validation);
      const sampled = data.sample_share < 1
        ? " Speedups are computed from a sample of " + Math.max(1, Math.round(data.sample_share * 100)) +
          "% of the kernel shapes (every kernel of each)."
        : "";
      setText("charts-status", data.kernels + " distinct kernels measured." + sampled, "");
    } catch (error) {
      setText("charts-status", "Could not load chart data: " + error.message, "bad");
    } finally {
      document.body.dataset.chartsReady = "true";
    }
  }

  // ---- model page --------------------------------------------------------------------------------

  const state = { configs: {}, lastRanking: null };

  function selectedCandidates() {
    const candidates = [];
    document.querySelectorAll('input[name="candidate"]:checked').forEach(function (box) {
      candidates.push({ name: box.value, config: JSON.parse(box.dataset.config) });
    });
    const custom = document.getElementById("custom-candidates").value.trim();
    if (custom) {
      let parsed;
      try {
        parsed = JSON.parse(custom);
      } catch (error) {
        throw new Error("more candidates: not valid JSON (" + error.message + ")");
      }
      if (!Array.isArray(parsed)) parsed = [parsed];
      parsed.forEach(function (entry, index) {
        if (!entry || typeof entry.name !== "string") throw new Error("more candidates: entry " + index + " needs a \"name\"");
        candidates.push({ name: entry.name, config: entry.config || {} });
      });
    }
    return candidates;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function sourcesText(sources) {
    return SOURCES.filter(function (s) { return sources[s]; }).map(function (s) { return sources[s] + " " + s; }).join(" · ");
  }

  function renderRanking(ranking) {
    document.getElementById("results").hidden = false;
    document.getElementById("baseline").textContent = "Baseline (uncompressed): " + fmtMs(ranking.baseline_ms) +
      " [" + fmtMs(ranking.baseline_interval_ms[0]) + ", " + fmtMs(ranking.baseline_interval_ms[1]) + "] on " + ranking.device;
    const body = document.querySelector("#ranked tbody");
    body.replaceChildren();
    ranking.ranked.forEach(function (candidate, index) {
      const row = document.createElement("tr");
      row.dataset.candidate = candidate.name;
      cell(row, String(index + 1));
      cell(row, candidate.name, "name");
      cell(row, fmtMs(candidate.latency_ms));
      cell(row, "[" + candidate.interval_ms[0].toFixed(3) + ", " + candidate.interval_ms[1].toFixed(3) + "]");
      cell(row, candidate.speedup.toFixed(2) + "×", candidate.speedup >= 1 ? "good" : "bad");
      cell(row, candidate.meets_target === null ? "–" : candidate.meets_target ? "yes" : "no",
        candidate.meets_target === false ? "bad" : "");
      cell(row, fmtPct(candidate.table_hit_rate), candidate.table_hit_rate < 0.5 ? "warn" : "");
      cell(row, sourcesText(candidate.sources));
      const action = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small";
      button.textContent = "kernels";
      button.addEventListener("click", function () { showBreakdown(candidate.name); });
      action.appendChild(button);
      row.appendChild(action);
      body.appendChild(row);
    });
  }

  function shortName(name) {
    return name.length > 38 ? name.slice(0, 36) + "…" : name;
  }

  async function showBreakdown(name) {
    const device = document.getElementById("device-select").value;
    const modelId = document.getElementById("model-select").value;
    document.getElementById("breakdown-name").textContent = name;
    document.body.dataset.breakdownReady = "false";
    setText("breakdown-status", "predicting kernels…", "");
    try {
      const estimate = await postJson("/api/v1/predict", { device: device, model_id: modelId, config: state.configs[name] || {} });
      const kernels = estimate.kernels.slice().sort(function (a, b) { return b.latency_ms - a.latency_ms; });
      const top = kernels.slice(0, TOP_KERNELS);
      const rest = kernels.slice(TOP_KERNELS).reduce(function (sum, k) { return sum + k.latency_ms; }, 0);
      newChart("chart-kernels", {
        type: "bar",
        data: {
          labels: top.map(function (k) { return shortName(k.name); }),
          datasets: SOURCES.map(function (source) {
            return {
              label: source === "table" ? "table hit" : source,
              backgroundColor: SOURCE_COLORS[source],
              data: top.map(function (k) { return k.source === source ? k.latency_ms : null; }),
              kernels: top,
            };
          }),
        },
        options: {
          indexAxis: "y",
          maintainAspectRatio: false,
          scales: { x: { stacked: true, title: { display: true, text: "predicted latency (ms)" } }, y: { stacked: true, ticks: { autoSkip: false } } },
          plugins: {
            tooltip: {
              filter: function (item) { return item.raw !== null; },
              callbacks: {
                title: function (items) { return items.length ? top[items[0].dataIndex].name : ""; },
                label: function (context) {
                  const k = top[context.dataIndex];
                  return k.op_type + ": " + fmtMs(k.latency_ms) + " (" + k.source + "), nodes: " + k.nodes.join(", ");
                },
              },
            },
          },
        },
      });
      const kernelBody = document.querySelector("#kernels tbody");
      kernelBody.replaceChildren();
      kernels.forEach(function (k) {
        const row = document.createElement("tr");
        cell(row, k.name);
        cell(row, k.op_type);
        cell(row, fmtMs(k.latency_ms));
        cell(row, k.source, "src " + k.source);
        cell(row, k.nodes.join(", "));
        kernelBody.appendChild(row);
      });
      const shown = top.length < kernels.length
        ? "Top " + top.length + " of " + kernels.length + " kernels; the rest add " + fmtMs(rest) + ". "
        : kernels.length + " kernels. ";
      setText("breakdown-status", shown + "Total " + fmtMs(estimate.latency_ms) + " (overhead " + fmtMs(estimate.overhead_ms) +
        "); sources: " + sourcesText(estimate.sources) + "." + (estimate.warnings.length ? " " + estimate.warnings.join(" ") : ""),
        estimate.sources.fallback ? "warn" : "");
    } catch (error) {
      setText("breakdown-status", "Breakdown failed: " + error.message, "bad");
    } finally {
      document.body.dataset.breakdownReady = "true";
    }
  }

  async function rank() {
    const device = document.getElementById("device-select").value;
    const modelId = document.getElementById("model-select").value;
    document.body.dataset.rankReady = "false";
    try {
      if (!modelId) throw new Error("pick or upload a model first");
      if (!device) throw new Error("pick a device first");
      const candidates = selectedCandidates();
      if (!candidates.length) throw new Error("choose at least one candidate config");
      state.configs = { baseline: {} };
      candidates.forEach(function (c) { state.configs[c.name] = c.config; });
      const body = { device: device, model_id: modelId, candidates: candidates };
      const target = parseFloat(document.getElementById("target-speedup").value);
      if (target > 0) body.target_speedup = target;
      setText("rank-status", "ranking " + candidates.length + " candidates…", "");
      const ranking = await postJson("/api/v1/rank", body);
      state.lastRanking = ranking;
      renderRanking(ranking);
      setText("rank-status", "Ranked " + ranking.ranked.length + " candidates on " + ranking.device + ".", "good");
      await showBreakdown(ranking.ranked[0].name);
    } catch (error) {
      setText("rank-status", "Ranking failed: " + error.message, "bad");
    } finally {
      document.body.dataset.rankReady = "true";
    }
  }

  async function upload(event) {
    event.preventDefault();
    const file = document.getElementById("model-file").files[0];
    document.body.dataset.uploadReady = "false";
    try {
      if (!file) throw new Error("choose an ONNX file");
      const form = new FormData();
      form.append("file", file, file.name);
      const shapes = document.getElementById("input-shapes").value.trim();
      if (shapes) form.append("input_shapes", shapes);
      setText("upload-status", "uploading " + file.name + " and extracting its kernels…", "");
      const model = await api("/api/v1/models", { method: "POST", body: form });
      const select = document.getElementById("model-select");
      let option = Array.from(select.options).find(function (o) { return o.value === model.id; });
      if (!option) {
        option = document.createElement("option");
        option.value = model.id;
        select.appendChild(option);
      }
      option.textContent = model.name + " · " + model.kernels.length + " kernels · " + model.id.slice(0, 12);
      select.value = model.id;
      setText("upload-status", "Uploaded " + model.name + ": " + model.kernels.length + " kernels.", "good");
    } catch (error) {
      setText("upload-status", "Upload failed: " + error.message, "bad");
    } finally {
      document.body.dataset.uploadReady = "true";
    }
  }

  // Uploaded models are listed to token holders only (an id is all a question needs): GET /api/v1/models.
  async function listModels() {
    try {
      if (!token()) throw new Error("type the API token first: listing uploaded models needs it");
      const page = await api("/api/v1/models?limit=200");
      const select = document.getElementById("model-select");
      page.data.forEach(function (model) {
        if (Array.from(select.options).some(function (o) { return o.value === model.id; })) return;
        const option = document.createElement("option");
        option.value = model.id;
        option.textContent = model.name + " · " + model.id.slice(0, 12);
        select.appendChild(option);
      });
      setText("upload-status", "Listed " + page.data.length + " of " + page.count + " uploaded models.", "good");
    } catch (error) {
      setText("upload-status", "Listing models failed: " + error.message, "bad");
    }
  }

  function modelsPage() {
    const tokenInput = document.getElementById("api-token");
    tokenInput.value = token();
    tokenInput.addEventListener("change", function () { sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim()); });
    document.getElementById("upload-form").addEventListener("submit", upload);
    document.getElementById("rank-button").addEventListener("click", rank);
    document.getElementById("list-models-button").addEventListener("click", listModels);
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (window.Chart) {
      Chart.defaults.animation = false;
      Chart.defaults.font.family = "system-ui, -apple-system, 'Segoe UI', sans-serif";
    }
    const page = document.body.dataset.page;
    if (page === "device") devicePage();
    if (page === "models") modelsPage();
  });
})();
