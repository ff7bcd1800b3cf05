// ChartView's page side: the chart's SVG (drawn by graphviz in the kernel),
// coloured from the small state the kernel sends at most ten times a second.
// Graphviz names each node's <g> by a <title> holding the node id, and each
// edge's by "source->target": that is how a step finds its shape.
const SVGNS = "http://www.w3.org/2000/svg";
const MARGIN = 190; // room on the right for the step numbers and times

function widen(svg) {
  const vb = svg.viewBox.baseVal;
  if (!vb || svg.dataset.widened) return;
  svg.setAttribute("viewBox", `${vb.x} ${vb.y} ${vb.width + MARGIN} ${vb.height}`);
  const w = parseFloat(svg.getAttribute("width"));
  if (w) svg.setAttribute("width", `${w + MARGIN}pt`);
  svg.dataset.widened = "1";
}

// A node's right edge and top, read from graphviz's own coordinates (getBBox
// would need the SVG laid out, and a view is often drawn before it is shown).
function extent(shape) {
  if (shape.tagName === "ellipse") {
    const cx = +shape.getAttribute("cx"), cy = +shape.getAttribute("cy");
    return { right: cx + +shape.getAttribute("rx"), top: cy - +shape.getAttribute("ry") };
  }
  const numbers = (shape.getAttribute("points") || shape.getAttribute("d") || "")
    .match(/-?\d+(\.\d+)?/g) || [];
  let right = -Infinity, top = Infinity;
  for (let i = 0; i + 1 < numbers.length; i += 2) {
    right = Math.max(right, +numbers[i]);
    top = Math.min(top, +numbers[i + 1]);
  }
  return { right, top };
}

function note(g, text, cls) {
  const shape = g.querySelector("polygon, path, ellipse");
  if (!shape) return;
  const { right, top } = extent(shape);
  if (!isFinite(right)) return;
  const t = document.createElementNS(SVGNS, "text");
  t.setAttribute("x", right + 6);
  t.setAttribute("y", top + 12);
  t.setAttribute("class", `tcri-ann ${cls}`);
  t.textContent = text;
  g.appendChild(t);
}

function render({ model, el }) {
  el.classList.add("tcri-chart");
  const head = document.createElement("div");
  head.className = "tcri-chart-head";
  const box = document.createElement("div");
  box.className = "tcri-chart-svg";
  el.append(head, box);
  box.addEventListener("click", () => box.classList.toggle("tcri-zoom"));
  let drawn = "";

  function paint() {
    const st = model.get("state") || {};
    const nodes = st.nodes || {};
    const edges = st.edges || {};
    const hits = st.hits || {};
    const chart = model.get("chart");
    head.textContent = chart
      ? `${chart} · ${st.title || ""}${st.spans > 1 ? ` · ${st.spans} calls seen` : ""}` +
        `${st.dropped ? ` · ${st.dropped} events dropped` : ""}${st.done ? "" : " · running…"}`
      : "waiting for the first step…";
    el.dataset.done = st.done ? "1" : "0";
    for (const g of box.querySelectorAll("g.node")) {
      const id = g.querySelector("title")?.textContent ?? "";
      g.dataset.node = id;
      g.querySelectorAll(".tcri-ann").forEach((t) => t.remove());
      g.classList.remove("tcri-lit", "tcri-error");
      const n = nodes[id];
      if (n) {
        g.classList.add(n.error ? "tcri-error" : "tcri-lit");
        note(g, `${n.steps.join(", ")}${n.ms ? `  ${n.ms} ms` : ""}`, n.error ? "tcri-err" : "");
        if (n.error) note(g, n.error.length > 90 ? `${n.error.slice(0, 90)}…` : n.error, "tcri-err");
      }
      if (hits[id]) note(g, `×${hits[id]}`, "tcri-hits");
      // Stack this node's notes one under the other.
      [...g.querySelectorAll(".tcri-ann")].forEach((t, i) => {
        t.setAttribute("y", parseFloat(t.getAttribute("y")) + 13 * i);
      });
    }
    for (const g of box.querySelectorAll("g.edge")) {
      const id = g.querySelector("title")?.textContent ?? "";
      g.classList.toggle("tcri-lit", id in edges);
    }
  }

  function draw() {
    const svg = model.get("svg");
    if (svg !== drawn) {
      box.innerHTML = svg;
      drawn = svg;
      const root = box.querySelector("svg");
      if (root) widen(root);
    }
    paint();
  }

  model.on("change:svg", draw);
  model.on("change:state", paint);
  draw();
  return () => {
    model.off("change:svg", draw);
    model.off("change:state", paint);
  };
}

export default { render };
