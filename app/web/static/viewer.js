// imgrag's image viewer: a lightbox over the page for any indexed image (search results, search by image,
// the collection sample, Ask citations). Items come from hidden ".imgrag-data" blocks the server renders
// next to each gallery (JSON in a data attribute); every string is put into the page as text, never HTML.
// Selection lives in one place, the hidden "#selected-id" textbox, which the server also reads and clears.
(() => {
  if (window.imgragViewer) return;
  let items = [], pos = 0, source = "", root = null, lastFocus = null, pending = null;

  const itemsFor = (src) => {
    const el = document.querySelector(`.imgrag-data[data-for="${src}"]`);
    try { return el ? JSON.parse(el.dataset.items || "[]") : []; } catch (e) { return []; }
  };
  const box = (id) => document.querySelector(`#${id} textarea, #${id} input`);
  const setBox = (id, value) => {
    const b = box(id);
    if (!b) return;
    b.value = value;
    b.dispatchEvent(new Event("input", { bubbles: true }));
  };
  const tab = (name) => {
    const t = [...document.querySelectorAll("button[role=tab]")].find((b) => b.textContent.trim() === name);
    if (t) t.click();
  };
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  function build() {
    root = el("div", "imgrag-viewer");
    root.id = "imgrag-viewer";
    root.hidden = true;
    root.setAttribute("role", "dialog");
    root.setAttribute("aria-modal", "true");
    root.setAttribute("aria-label", "Image viewer");
    root.innerHTML = `
      <div class="iv-stage"><img class="iv-img" alt=""><button class="iv-prev" aria-label="Previous image (left arrow)">‹</button>
        <button class="iv-next" aria-label="Next image (right arrow)">›</button></div>
      <aside class="iv-info"><button class="iv-close" aria-label="Close (Esc)">×</button>
        <div class="iv-pos"></div><h3 class="iv-name"></h3><table class="iv-meta"></table>
        <div class="iv-actions"><button class="iv-more">More like this</button>
          <a class="iv-open" target="_blank" rel="noopener noreferrer">Open the original</a>
          <button class="iv-ask">Ask about this image</button></div></aside>`;
    document.body.appendChild(root);
    root.querySelector(".iv-close").onclick = close;
    root.querySelector(".iv-prev").onclick = () => go(-1);
    root.querySelector(".iv-next").onclick = () => go(1);
    root.querySelector(".iv-more").onclick = more;
    root.querySelector(".iv-ask").onclick = ask;
    root.addEventListener("click", (e) => { if (e.target === root || e.target.classList.contains("iv-stage")) close(); });
  }

  function render() {
    const it = items[pos];
    root.querySelector(".iv-img").src = it.preview;
    root.querySelector(".iv-img").alt = it.name;
    root.querySelector(".iv-name").textContent = it.name + (it.page ? ` · page ${it.page}` : "");
    root.querySelector(".iv-pos").textContent = `${pos + 1} of ${items.length}` + (it.n ? ` · cited as [${it.n}]` : "");
    const meta = root.querySelector(".iv-meta");
    meta.replaceChildren();
    for (const [k, v] of it.meta) {
      const tr = el("tr");
      tr.append(el("th", "", k), el("td", "", v));
      meta.append(tr);
    }
    const open = root.querySelector(".iv-open");
    open.href = it.original;
    open.textContent = it.page ? `Open page ${it.page}` : "Open the original";
    root.querySelector(".iv-prev").disabled = pos === 0;
    root.querySelector(".iv-next").disabled = pos === items.length - 1;
    root.dataset.id = it.id;
    setBox("selected-id", it.id);
  }

  function open(src, i) {
    const got = itemsFor(src);
    if (!got.length || i < 0 || i >= got.length) return;
    if (!root) build();
    items = got; pos = i; source = src;
    lastFocus = document.activeElement;
    root.hidden = false;
    document.documentElement.classList.add("imgrag-viewer-open");
    render();
    root.querySelector(".iv-close").focus();
  }

  function close() {
    if (!root || root.hidden) return;
    root.hidden = true;
    document.documentElement.classList.remove("imgrag-viewer-open");
    if (lastFocus && lastFocus.focus) lastFocus.focus();
  }

  function go(d) {
    const j = pos + d;
    if (j >= 0 && j < items.length) { pos = j; render(); }
  }

  function more() {
    pending = items[pos].id;
    close();
    tab("Search");
    const b = document.querySelector("#more-like-this");
    if (b) b.click();
  }

  function ask() {
    const it = items[pos];
    close();
    tab("Ask");
    requestAnimationFrame(() => {
      setBox("ask-question", `What does ${it.name}${it.page ? ` (page ${it.page})` : ""} show?`);
      const b = box("ask-question");
      if (b) b.focus();
    });
  }

  document.addEventListener("click", (e) => {
    const cite = e.target.closest && e.target.closest('a[href^="#imgrag-cite-"]');
    if (cite) {
      e.preventDefault();
      const n = parseInt(cite.getAttribute("href").slice("#imgrag-cite-".length), 10);
      const i = itemsFor("ask-cited").findIndex((it) => it.n === n);
      if (i >= 0) open("ask-cited", i);
      return;
    }
    const tile = e.target.closest && e.target.closest("[data-imgrag-i]");
    if (tile) {
      e.preventDefault();
      open(tile.closest("[data-imgrag-source]").dataset.imgragSource, parseInt(tile.dataset.imgragI, 10));
      return;
    }
    const thumb = e.target.closest && e.target.closest(".imgrag-viewable .thumbnail-item");
    if (thumb) {
      const gal = thumb.closest(".imgrag-viewable");
      open(gal.id, [...gal.querySelectorAll(".thumbnail-item")].indexOf(thumb));
      return;
    }
    const ex = e.target.closest && e.target.closest("[data-imgrag-example]");
    if (ex) {
      setBox("search-query", ex.dataset.imgragExample);
      requestAnimationFrame(() => requestAnimationFrame(() => document.querySelector("#search-button")?.click()));
    }
  }, true);

  document.addEventListener("keydown", (e) => {
    if (!root || root.hidden) return;
    if (e.key === "Escape") { e.preventDefault(); close(); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); go(-1); }
    else if (e.key === "ArrowRight") { e.preventDefault(); go(1); }
  }, true);

  window.imgragViewer = {
    open, close,
    current: () => (root && !root.hidden ? items[pos] : null),
    // "More like this" from the viewer: the id it was asked for, once (read by the button's js hook)
    takePending: () => { const p = pending; pending = null; return p; },
  };
})();
