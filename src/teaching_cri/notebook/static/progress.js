// PullProgress's page side: a bar per layer, from the kernel's list.
function render({ model, el }) {
  el.style.cssText = "font: 12px monospace; max-width: 720px";
  const draw = () => {
    el.replaceChildren();
    for (const layer of model.get("layers")) {
      const row = document.createElement("div");
      row.style.cssText = "display: flex; gap: 8px; align-items: center; margin: 2px 0";
      const name = document.createElement("span");
      name.textContent = `layer ${layer.index} ${layer.digest.slice(7, 19)}`;
      name.style.minWidth = "200px";
      const meter = document.createElement("progress");
      meter.max = layer.size || 1;
      meter.value = layer.size ? layer.bytes : 1;
      meter.style.flex = "1";
      const note = document.createElement("span");
      note.textContent = `${layer.bytes.toLocaleString()} / ${layer.size.toLocaleString()} B` +
        (layer.cached ? " (cached)" : "");
      row.append(name, meter, note);
      el.append(row);
    }
    const outcome = document.createElement("div");
    outcome.textContent = model.get("outcome") || "pulling…";
    el.append(outcome);
  };
  model.on("change:layers", draw);
  model.on("change:outcome", draw);
  draw();
  return () => {
    model.off("change:layers", draw);
    model.off("change:outcome", draw);
  };
}
export default { render };
