/* modelkeep UI charts, drawn with the bundled uPlot (no network access needed). */
(function () {
  "use strict";
  var COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d"];

  function width(el) { return Math.max(320, (el.clientWidth || el.parentNode.clientWidth || 640) - 8); }

  function indexAxis(labels) {
    return {
      values: function (u, splits) {
        return splits.map(function (i) { return Number.isInteger(i) && labels[i] !== undefined ? labels[i] : ""; });
      }
    };
  }

  function drawAliasNames(marked) {
    return function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.fillStyle = "#c92a2a";
      ctx.font = (12 * devicePixelRatio) + "px sans-serif";
      ctx.textAlign = "center";
      marked.forEach(function (m) {
        if (m.value === null) { return; }
        var x = u.valToPos(m.x, "x", true);
        var y = u.valToPos(m.value, "y", true);
        ctx.fillText(m.aliases.join(", "), x, y - 10 * devicePixelRatio);
      });
      ctx.restore();
    };
  }

  function metricChart() {
    var el = document.getElementById("chart");
    var select = document.getElementById("chart-metric");
    if (!el || !select) { return; }
    var plot = null;
    function load() {
      fetch(el.dataset.url + "?metric=" + encodeURIComponent(select.value))
        .then(function (r) { return r.json(); })
        .then(function (d) {
          if (plot) { plot.destroy(); }
          el.dataset.points = String(d.values.filter(function (v) { return v !== null; }).length);
          el.dataset.marked = d.marked.map(function (m) { return m.aliases.join("+") + "@" + m.version; }).join(" ");
          plot = new uPlot({
            width: width(el), height: 260,
            scales: { x: { time: false } },
            series: [
              { label: "version", value: function (u, v) { return v === null ? "" : d.labels[v]; } },
              { label: d.metric, stroke: COLORS[0], width: 2, points: { show: true, size: 5 }, spanGaps: false },
              { label: "aliased", stroke: "#c92a2a", paths: function () { return null; },
                points: { show: true, size: 11, fill: "#c92a2a" } }
            ],
            axes: [indexAxis(d.labels), {}],
            hooks: { draw: [drawAliasNames(d.marked)] }
          }, [d.x, d.values, d.marks], el);
          el.classList.add("ready");
        });
    }
    select.addEventListener("change", load);
    load();
  }

  function compareChart() {
    var el = document.getElementById("compare-chart");
    var src = document.getElementById("compare-data");
    if (!el || !src) { return; }
    var d = JSON.parse(src.textContent);
    var xs = d.metrics.map(function (_m, i) { return i; });
    var series = [{ label: "metric", value: function (u, v) { return v === null ? "" : d.metrics[v]; } }];
    var data = [xs];
    d.series.forEach(function (s, i) {
      series.push({ label: s.version, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 7 } });
      data.push(s.values);
    });
    new uPlot({ width: width(el), height: 280, scales: { x: { time: false } }, series: series,
                axes: [indexAxis(d.metrics), {}] }, data, el);
    el.classList.add("ready");
  }

  function diffToggle() {
    var box = document.getElementById("diff-only");
    if (!box) { return; }
    box.addEventListener("change", function () {
      document.querySelectorAll("#comparison tbody tr.same").forEach(function (row) { row.hidden = box.checked; });
      var url = new URL(window.location.href);
      if (box.checked) { url.searchParams.set("diff", "1"); } else { url.searchParams.delete("diff"); }
      window.history.replaceState(null, "", url);
    });
  }

  window.modelkeepCharts = { metricChart: metricChart, compareChart: compareChart, diffToggle: diffToggle };
})();
