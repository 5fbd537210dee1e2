/* modelkeep UI scripts: the metric chart (bundled uPlot, no network), the column
   chooser and the compare page's "differences only" toggle. Each one starts on its
   own when its element is on the page, so the templates carry no inline script. */
(function () {
  "use strict";
  var LINE = "#0b5cd5";
  var MARK = "#b3261e";
  var STORE = "modelkeep.columns.";
  var LABEL_ROW = 15; // CSS px per row of alias labels above the plot
  var LABEL_ROWS = 3;

  function width(el) { return Math.max(320, (el.clientWidth || el.parentNode.clientWidth || 640)); }

  function fmt(v) {
    if (v === null || v === undefined) { return "—"; }
    var a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e6)) ? v.toExponential(3) : String(+v.toPrecision(6));
  }

  function swatch(cls, color) {
    var s = document.createElement("span");
    s.className = cls;
    s.style.background = color;
    return s;
  }

  function item(parent, cls, color, text) {
    var span = document.createElement("span");
    span.appendChild(swatch(cls, color));
    span.appendChild(document.createTextNode(text));
    parent.appendChild(span);
    return span;
  }

  /* Alias names in a lane above the plot, never over the axis: each label takes the
     first row where it does not overlap the previous label, is kept inside the
     canvas, and is tied to its point by a dashed line. */
  function drawAliasNames(marked) {
    return function (u) {
      var ctx = u.ctx, dpr = devicePixelRatio || 1;
      var top = u.bbox.top;
      var ends = [];
      ctx.save();
      ctx.font = "600 " + (11 * dpr) + "px system-ui, sans-serif";
      ctx.textBaseline = "bottom";
      marked.forEach(function (m) {
        if (m.value === null) { return; }
        var x = u.valToPos(m.x, "x", true), y = u.valToPos(m.value, "y", true);
        var text = m.aliases.join(", ");
        var w = ctx.measureText(text).width, pad = 6 * dpr;
        var x0 = Math.min(Math.max(x - w / 2, 2 * dpr), u.ctx.canvas.width - w - 2 * dpr);
        var row = 0;
        while (row < LABEL_ROWS && ends[row] !== undefined && ends[row] + pad > x0) { row++; }
        if (row === LABEL_ROWS) { return; } // no room: the point and the readout still say it
        ends[row] = x0 + w;
        var ty = top - (2 + row * LABEL_ROW) * dpr;
        ctx.strokeStyle = "rgba(179,38,30,.45)";
        ctx.setLineDash([3 * dpr, 3 * dpr]);
        ctx.lineWidth = dpr;
        ctx.beginPath();
        ctx.moveTo(x, ty + 1 * dpr);
        ctx.lineTo(x, y - 6 * dpr);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = MARK;
        ctx.fillText(text, x0, ty);
      });
      ctx.restore();
    };
  }

  function metricChart() {
    var el = document.getElementById("chart");
    var select = document.getElementById("chart-metric");
    var legend = document.getElementById("chart-legend");
    if (!el || !select || typeof uPlot === "undefined") { return; }
    var plot = null;
    function load() {
      fetch(el.dataset.url + "?metric=" + encodeURIComponent(select.value))
        .then(function (r) { return r.json(); })
        .then(function (d) {
          if (plot) { plot.destroy(); }
          el.dataset.points = String(d.values.filter(function (v) { return v !== null; }).length);
          el.dataset.marked = d.marked.map(function (m) { return m.aliases.join("+") + "@" + m.version; }).join(" ");
          var aliasAt = {};
          d.marked.forEach(function (m) { aliasAt[m.x] = m.aliases.join(", "); });
          var readout = null;
          if (legend) {
            legend.textContent = "";
            item(legend, "sw", LINE, d.metric + " per version");
            if (d.marked.length) { item(legend, "dot", MARK, "aliased version"); }
            readout = document.createElement("span");
            readout.className = "readout";
            readout.textContent = "hover the chart for values";
            legend.appendChild(readout);
          }
          plot = new uPlot({
            width: width(el), height: 300,
            padding: [d.marked.length ? LABEL_ROW * Math.min(LABEL_ROWS, d.marked.length) + 6 : 12, 24, 0, 0],
            legend: { show: false },
            cursor: { points: { size: 8 } },
            scales: { x: { time: false } },
            series: [
              { label: "version" },
              { label: d.metric, stroke: LINE, width: 2, points: { show: d.x.length <= 200, size: 5 }, spanGaps: false },
              { label: "aliased version", stroke: MARK, paths: function () { return null; },
                points: { show: true, size: 10, fill: MARK, stroke: "#fff", width: 2 } }
            ],
            axes: [
              { label: "version", labelSize: 20, space: 70, font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif",
                values: function (u, splits) {
                  return splits.map(function (i) { return Number.isInteger(i) && d.labels[i] !== undefined ? d.labels[i] : ""; });
                } },
              { label: d.metric, labelSize: 20, size: 64, font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif",
                values: function (u, splits) { return splits.map(fmt); } }
            ],
            hooks: {
              draw: [drawAliasNames(d.marked)],
              setCursor: [function (u) {
                if (!readout) { return; }
                var i = u.cursor.idx;
                if (i === null || i === undefined) { readout.textContent = "hover the chart for values"; return; }
                readout.textContent = d.labels[i] + " · " + d.metric + " " + fmt(d.values[i]) + (aliasAt[i] ? " · " + aliasAt[i] : "");
              }]
            }
          }, [d.x, d.values, d.marks], el);
          el.classList.add("ready");
        });
    }
    select.addEventListener("change", load);
    load();
  }

  /* Show or hide table columns; the choice is kept per table in localStorage. */
  function columnChooser() {
    document.querySelectorAll("details.columns[data-table]").forEach(function (box) {
      var table = document.getElementById(box.dataset.table);
      var menu = box.querySelector(".menu");
      if (!table || !menu) { return; }
      var key = STORE + table.id;
      var saved = {};
      try { saved = JSON.parse(localStorage.getItem(key) || "{}") || {}; } catch (e) { saved = {}; }
      var heads = Array.prototype.slice.call(table.querySelectorAll("thead th[data-col]"));
      function apply(th, show) {
        var idx = th.cellIndex;
        th.classList.toggle("col-hidden", !show);
        table.querySelectorAll("tbody tr").forEach(function (tr) {
          if (tr.cells[idx]) { tr.cells[idx].classList.toggle("col-hidden", !show); }
        });
      }
      heads.forEach(function (th) {
        var col = th.dataset.col;
        var show = col in saved ? !!saved[col] : th.dataset.defaultHidden !== "1";
        var label = document.createElement("label");
        var input = document.createElement("input");
        input.type = "checkbox";
        input.checked = show;
        input.value = col;
        input.addEventListener("change", function () {
          saved[col] = input.checked;
          try { localStorage.setItem(key, JSON.stringify(saved)); } catch (e) { /* private mode: not kept */ }
          apply(th, input.checked);
        });
        label.appendChild(input);
        label.appendChild(document.createTextNode(" " + th.textContent.trim()));
        menu.appendChild(label);
        apply(th, show);
      });
      box.addEventListener("keydown", function (ev) { if (ev.key === "Escape") { box.open = false; } });
    });
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

  window.modelkeepCharts = { metricChart: metricChart, columnChooser: columnChooser, diffToggle: diffToggle };
  function start() { metricChart(); columnChooser(); diffToggle(); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
