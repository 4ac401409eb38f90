// The deep-zoom viewer of lrs-vqa's web demo: OpenSeadragon (vendored) over the app's Deep Zoom tiles, with
// the tiles the model read (coloured by level), the token-score heatmap, the evidence and, for world scenes,
// the ground-truth boxes. gr.HTML calls lrsViewer.attach(element, watch) once; every new value of the
// component (a new answer) re-initialises the viewer from the overlay JSON its container names.
(function () {
  "use strict";
  const HEATMAP_OPACITY = 0.65;

  function fmtBox(b) {
    return "[" + b.join(", ") + "]";
  }

  function fmtWgs(b) {
    return b ? "[" + b.map((v) => v.toFixed(6)).join(", ") + "] (W, S, E, N)" : "—";
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function checkbox(bar, name, label, checked) {
    const wrap = el("label", "lrs-toggle");
    const box = el("input");
    box.type = "checkbox";
    box.checked = checked;
    box.dataset.layer = name;
    wrap.append(box, document.createTextNode(" " + label));
    bar.append(wrap);
    return box;
  }

  function build(root, host, cfg) {
    host.textContent = "";
    const bar = el("div", "lrs-viewer-bar");
    // Layers are hidden by a class on the canvas: OpenSeadragon sets each overlay's own display style.
    const canvas = el("div", "lrs-viewer-canvas lrs-hide-truth");
    const info = el("div", "lrs-viewer-info", "Click a tile for its level, score and box.");
    host.append(bar, canvas, info);

    const viewer = OpenSeadragon({
      element: canvas,
      tileSources: cfg.dzi,
      showNavigationControl: false, // our own buttons: the default ones need image files
      drawer: "canvas", // the 2D canvas: identical pixels with or without a GPU
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
      immediateRender: false,
      gestureSettingsMouse: { clickToZoom: false },
    });

    const tiles = cfg.tiles || [];
    const truth = cfg.truth || [];
    const state = { viewer: viewer, cfg: cfg, loadedLevels: {}, heatmap: null };
    root.lrsState = state;
    window.lrsViewer.current = state;

    viewer.addHandler("tile-loaded", (e) => {
      if (e.tiledImage !== viewer.world.getItemAt(0)) return; // the image's own tiles, not the heatmap
      state.loadedLevels[e.tile.level] = (state.loadedLevels[e.tile.level] || 0) + 1;
    });

    const layerTiles = checkbox(bar, "tiles", "tiles read", true);
    const layerHeat = cfg.heatmap ? checkbox(bar, "heatmap", "token-score heatmap", false) : null;
    const layerTruth = truth.length ? checkbox(bar, "truth", "where the answer was", false) : null;
    const deepestBtn = el("button", "lrs-button", "zoom to the deepest tile");
    deepestBtn.dataset.action = "deepest";
    const homeBtn = el("button", "lrs-button", "whole image");
    homeBtn.dataset.action = "home";
    bar.append(deepestBtn, homeBtn);
    if (cfg.levels && cfg.levels.length) {
      const legend = el("span", "lrs-legend");
      for (const lv of cfg.levels) {
        const key = el("span", "lrs-key", "level " + lv.level + " (" + lv.name + ")");
        key.style.setProperty("border-left-color", lv.colour, "important");
        legend.append(key);
      }
      bar.append(legend);
    }

    function rect(b) {
      return viewer.viewport.imageToViewportRectangle(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    }

    viewer.addHandler("open", () => {
      for (const t of tiles) {
        const box = el("div", "lrs-tile" + (t.evidence ? " lrs-evidence" : ""));
        box.style.setProperty("border-color", t.colour, "important");
        viewer.addOverlay({ element: box, location: rect(t.box) });
      }
      for (const t of truth) {
        const box = el("div", "lrs-truth");
        box.title = t.label;
        viewer.addOverlay({ element: box, location: rect(t.box) });
      }
      if (cfg.heatmap) {
        viewer.addTiledImage({
          tileSource: { type: "image", url: cfg.heatmap },
          x: 0,
          y: 0,
          width: 1,
          opacity: 0,
          success: (e) => {
            state.heatmap = e.item;
            if (layerHeat && layerHeat.checked) e.item.setOpacity(HEATMAP_OPACITY);
          },
        });
      }
    });

    layerTiles.addEventListener("change", () => {
      canvas.classList.toggle("lrs-hide-tiles", !layerTiles.checked);
    });
    if (layerHeat) {
      layerHeat.addEventListener("change", () => {
        if (state.heatmap) state.heatmap.setOpacity(layerHeat.checked ? HEATMAP_OPACITY : 0);
      });
    }
    if (layerTruth) {
      layerTruth.addEventListener("change", () => {
        canvas.classList.toggle("lrs-hide-truth", !layerTruth.checked);
        if (layerTruth.checked && truth.length) {
          const r = rect(truth[0].box); // the object with some context around it
          viewer.viewport.fitBounds(new OpenSeadragon.Rect(r.x - r.width, r.y - r.height, 3 * r.width, 3 * r.height));
        }
      });
    }
    deepestBtn.addEventListener("click", () => {
      const t = deepest(tiles);
      if (t) viewer.viewport.fitBounds(rect(t.box));
    });
    homeBtn.addEventListener("click", () => viewer.viewport.goHome());

    // A quick click (not a drag) on a tile: the finest tile under the pointer is described.
    viewer.addHandler("canvas-click", (e) => {
      if (!e.quick) return;
      const p = viewer.viewport.viewerElementToImageCoordinates(e.position);
      const hit = tiles
        .filter((t) => p.x >= t.box[0] && p.x < t.box[2] && p.y >= t.box[1] && p.y < t.box[3])
        .sort((a, b) => b.level - a.level)[0];
      const gt = truth.find((t) => p.x >= t.box[0] && p.x < t.box[2] && p.y >= t.box[1] && p.y < t.box[3]);
      let text = hit
        ? "level " + hit.level + " (" + hit.level_name + ", " + hit.role + ") · row " + hit.row +
          " col " + hit.col + " · score " + (hit.score === null ? "—" : hit.score.toFixed(4)) +
          " · pixel box " + fmtBox(hit.box) + " · WGS84 " + fmtWgs(hit.wgs84_bbox)
        : "no tile read here (pixel " + Math.floor(p.x) + ", " + Math.floor(p.y) + ")";
      if (gt && layerTruth && layerTruth.checked) {
        text += " · ground truth: " + gt.label + " " + fmtBox(gt.box) + " (answer: " + cfg.truth_answer + ")";
      }
      info.textContent = text;
    });
  }

  function deepest(tiles) {
    let best = null;
    for (const t of tiles) {
      if (!best || t.level > best.level || (t.level === best.level && (t.score || 0) > (best.score || 0))) {
        best = t;
      }
    }
    return best;
  }

  function mount(root) {
    const host = root.querySelector(".lrs-viewer-host");
    if (!host || host.dataset.mounted === host.dataset.overlay) return;
    host.dataset.mounted = host.dataset.overlay;
    if (root.lrsState) {
      root.lrsState.viewer.destroy();
      root.lrsState = null;
    }
    fetch(host.dataset.overlay)
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("overlay " + r.status))))
      .then((cfg) => build(root, host, cfg))
      .catch((err) => {
        host.textContent = "The viewer cannot open this image (" + err.message + ").";
      });
  }

  window.lrsViewer = {
    current: null,
    attach: function (root, watch) {
      mount(root);
      if (typeof watch === "function") watch("value", () => mount(root));
      // Also on any re-render of the template (whatever Gradio version calls, or not, `watch`).
      new MutationObserver(() => mount(root)).observe(root, { childList: true, subtree: true });
    },
    // The image rectangle (level-0 pixels) the viewer shows: tests compare it with the pyramid's pixels.
    visibleImageRect: function () {
      const s = window.lrsViewer.current;
      if (!s) return null;
      const size = s.viewer.viewport.getContainerSize();
      const a = s.viewer.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point(0, 0));
      const b = s.viewer.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point(size.x, size.y));
      return [a.x, a.y, b.x, b.y];
    },
  };
})();
