// imgrag's Map tab: wheel zoom, drag to pan, click a point to open it in the viewer, shift-drag (or the
// "Box select" toggle) to list the boxed images under the map. The server renders the map as one SVG with
// points carrying data-i (their index in the "map" data block) and data-x/data-y (SVG user units); every
// handler is delegated from the document, so a re-rendered map (another colour) needs no set-up.
(() => {
  if (window.imgragMap) return;
  let drag = null; // {svg, map, mode: "pan"|"select", x0, y0 (client), p0 (svg units), vb0, target, box, moved}

  const vb = (svg) => svg.getAttribute("viewBox").split(/\s+/).map(Number);
  const setVb = (svg, v) => svg.setAttribute("viewBox", v.map((n) => n.toFixed(2)).join(" "));
  const toSvg = (svg, cx, cy) => {
    const m = svg.getScreenCTM();
    if (!m) return { x: 0, y: 0 };
    const p = new DOMPoint(cx, cy).matrixTransform(m.inverse());
    return { x: p.x, y: p.y };
  };
  const mapOf = (e) => e.target.closest && e.target.closest(".imgrag-map");

  function select(map, x1, y1, x2, y2) {
    const [lx, hx, ly, hy] = [Math.min(x1, x2), Math.max(x1, x2), Math.min(y1, y2), Math.max(y1, y2)];
    const picked = [...map.querySelectorAll(".mp-pt")].filter((p) => {
      const x = +p.dataset.x, y = +p.dataset.y;
      return x >= lx && x <= hx && y >= ly && y <= hy;
    }).map((p) => +p.dataset.i).sort((a, b) => a - b);
    const out = map.querySelector(".mp-selected");
    out.replaceChildren();
    let items = [];
    try { items = JSON.parse(map.querySelector(".imgrag-data").dataset.items || "[]"); } catch (err) { items = []; }
    const head = document.createElement("div");
    head.className = "mp-bar mp-count";
    head.textContent = picked.length ? `${picked.length} image(s) selected` : "nothing in the box: drag over some points";
    out.append(head);
    const tiles = document.createElement("div");
    tiles.className = "imgrag-tiles";
    for (const i of picked.slice(0, 500)) {
      const it = items[i];
      if (!it) continue;
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.imgragI = String(i); // viewer.js opens it from the "map" data block
      b.title = it.name;
      const img = document.createElement("img");
      img.src = it.preview.replace("/imgrag/preview?", "/imgrag/thumb?");
      img.alt = it.name;
      img.loading = "lazy";
      b.append(img);
      tiles.append(b);
    }
    out.append(tiles);
  }

  document.addEventListener("click", (e) => {
    const map = mapOf(e);
    if (!map) return;
    if (e.target.closest(".mp-select")) {
      const on = !map.classList.contains("selecting");
      map.classList.toggle("selecting", on);
      e.target.closest(".mp-select").setAttribute("aria-pressed", String(on));
    } else if (e.target.closest(".mp-reset")) {
      const svg = map.querySelector("svg");
      const s = +svg.dataset.size;
      setVb(svg, [0, 0, s, s]);
    }
  });

  document.addEventListener("wheel", (e) => {
    const svg = e.target.closest && e.target.closest(".imgrag-map svg");
    if (!svg) return;
    e.preventDefault();
    const [x, y, w, h] = vb(svg);
    const p = toSvg(svg, e.clientX, e.clientY);
    const s = +svg.dataset.size;
    const f = Math.min(Math.max(Math.exp(e.deltaY * 0.0015), 0.5), 2);
    const nw = Math.min(Math.max(w * f, s / 50), s * 2), k = nw / w;
    setVb(svg, [p.x - (p.x - x) * k, p.y - (p.y - y) * k, w * k, h * k]);
  }, { passive: false });

  document.addEventListener("pointerdown", (e) => {
    const svg = e.target.closest && e.target.closest(".imgrag-map svg");
    if (!svg || e.button !== 0) return;
    const map = svg.closest(".imgrag-map");
    const mode = e.shiftKey || map.classList.contains("selecting") ? "select" : "pan";
    drag = { svg, map, mode, x0: e.clientX, y0: e.clientY, p0: toSvg(svg, e.clientX, e.clientY), vb0: vb(svg),
             target: e.target.closest(".mp-pt"), box: null, moved: false };
    svg.setPointerCapture && svg.setPointerCapture(e.pointerId);
    if (mode === "pan") svg.classList.add("dragging");
    e.preventDefault();
  });

  document.addEventListener("pointermove", (e) => {
    if (!drag) return;
    if (Math.abs(e.clientX - drag.x0) + Math.abs(e.clientY - drag.y0) > 4) drag.moved = true;
    if (!drag.moved) return;
    const { svg } = drag;
    if (drag.mode === "pan") {
      const [, , w] = drag.vb0;
      const scale = w / svg.getBoundingClientRect().width;
      const r = svg.getBoundingClientRect(), vbox = drag.vb0;
      // preserveAspectRatio "meet": one screen pixel is max(w/width, h/height) units
      const u = Math.max(scale, vbox[3] / r.height);
      setVb(svg, [vbox[0] - (e.clientX - drag.x0) * u, vbox[1] - (e.clientY - drag.y0) * u, vbox[2], vbox[3]]);
    } else {
      const p = toSvg(svg, e.clientX, e.clientY);
      if (!drag.box) {
        drag.box = document.createElementNS("http://www.w3.org/2000/svg", "rect");
        drag.box.setAttribute("class", "mp-box");
        svg.append(drag.box);
      }
      drag.box.setAttribute("x", Math.min(p.x, drag.p0.x));
      drag.box.setAttribute("y", Math.min(p.y, drag.p0.y));
      drag.box.setAttribute("width", Math.abs(p.x - drag.p0.x));
      drag.box.setAttribute("height", Math.abs(p.y - drag.p0.y));
    }
  });

  const end = (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    d.svg.classList.remove("dragging");
    if (d.box) d.box.remove();
    if (!d.moved) {
      if (d.target && window.imgragViewer) window.imgragViewer.open("map", +d.target.dataset.i);
      return;
    }
    if (d.mode === "select" && e.type === "pointerup") {
      const p = toSvg(d.svg, e.clientX, e.clientY);
      select(d.map, d.p0.x, d.p0.y, p.x, p.y);
    }
  };
  document.addEventListener("pointerup", end);
  document.addEventListener("pointercancel", end);

  window.imgragMap = { select };
})();
