// Terminal's page side: xterm.js draws, the kernel relays to the container.
// xterm.js ships inside the Python package (static/xterm, MIT) and reaches the
// page as the text of two traits; it is imported from a blob URL, so nothing
// is fetched from the network.
const loaded = new Map();

async function importText(source) {
  if (!loaded.has(source)) {
    const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    loaded.set(source, import(url));
  }
  return loaded.get(source);
}

function addStyle(css) {
  if (document.getElementById("tcri-xterm-css")) return;
  const style = document.createElement("style");
  style.id = "tcri-xterm-css";
  style.textContent = css;
  document.head.appendChild(style);
}

async function render({ model, el }) {
  addStyle(model.get("xterm_css"));
  const { Terminal } = await importText(model.get("xterm_js"));
  const { FitAddon } = await importText(model.get("fit_js"));
  el.classList.add("tcri-terminal");
  const bar = document.createElement("div");
  bar.className = "tcri-terminal-bar";
  const screen = document.createElement("div");
  screen.className = "tcri-terminal-screen";
  el.append(bar, screen);

  const term = new Terminal({
    cols: model.get("cols"),
    rows: model.get("rows"),
    convertEol: false,
    cursorBlink: true,
    fontSize: 13,
    fontFamily: "monospace",
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  el.tcriTerminal = term; // for tests that read the screen

  const status = () => {
    bar.textContent = `container terminal · ${model.get("status")} · ${term.cols}×${term.rows}`;
    el.dataset.status = model.get("status");
  };
  // Output arrives live and, for a view opened late, as a replay: each chunk
  // says where it starts in the whole output, so no byte is drawn twice.
  let written = 0;
  const onMsg = (msg, buffers) => {
    if (msg.type !== "out") return;
    for (const b of buffers) {
      let bytes = new Uint8Array(b.buffer ?? b, b.byteOffset ?? 0, b.byteLength);
      const start = msg.start ?? written;
      if (start + bytes.length <= written) continue;
      if (start < written) bytes = bytes.subarray(written - start);
      term.write(bytes);
      written = Math.max(written, start + b.byteLength);
    }
  };
  model.on("msg:custom", onMsg);
  model.on("change:status", status);
  term.onData((data) => model.send({ type: "in", data }));

  // Resizing the widget resizes the tty: fit the grid to the box, then tell
  // the kernel, which sends the new size on the resize channel.
  let last = "";
  const refit = () => {
    if (!screen.offsetWidth) return;
    try {
      fit.fit();
    } catch (e) {
      return;
    }
    const size = `${term.cols}x${term.rows}`;
    if (size !== last) {
      last = size;
      model.send({ type: "resize", cols: term.cols, rows: term.rows });
    }
    status();
  };
  const observer = new ResizeObserver(() => refit());
  observer.observe(screen);
  status();
  refit();
  model.send({ type: "hello" });
  return () => {
    observer.disconnect();
    model.off("msg:custom", onMsg);
    model.off("change:status", status);
    term.dispose();
  };
}

export default { render };
