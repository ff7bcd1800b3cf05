// Timeline's page side: the kernel draws the SVG; the page swaps it in.
function render({ model, el }) {
  const head = document.createElement("div");
  head.style.cssText = "font: 12px Helvetica, Arial, sans-serif; color: #444; white-space: pre";
  const box = document.createElement("div");
  box.style.overflowX = "auto";
  el.append(head, box);
  const draw = () => {
    box.innerHTML = model.get("svg");
    head.textContent = model.get("summary");
  };
  model.on("change:svg", draw);
  draw();
  return () => model.off("change:svg", draw);
}
export default { render };
