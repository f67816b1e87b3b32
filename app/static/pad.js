// Images on canvases: a pad to draw, upload or erase a digit in the VAE's own input space, and
// `paint`, which shows an image of the API (flat row-major values in [0, 1]) on a canvas.

/** Show `values` (H*W numbers in [0, 1], row-major) on `canvas` at its own resolution. */
export function paint(canvas, values, [h, w]) {
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const g = Math.round(Math.min(1, Math.max(0, values[i])) * 255);
    img.data.set([g, g, g, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

/** A canvas element showing `values`, labelled for screen readers. */
export function imageElement(values, shape, label) {
  const canvas = document.createElement("canvas");
  canvas.className = "image";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  paint(canvas, values, shape);
  return canvas;
}

/**
 * RGBA canvas data of `[h, w]` blocks of `s` x `s` pixels -> H*W grey levels in [0, 1]: each
 * block's mean ITU-R 601 luma, as Pillow's convert("L") weighs the channels.
 */
function greys(data, [h, w], s) {
  const out = new Array(h * w).fill(0);
  for (let y = 0; y < h * s; y++) {
    for (let x = 0; x < w * s; x++) {
      const i = 4 * (y * w * s + x);
      out[Math.floor(y / s) * w + Math.floor(x / s)] +=
        0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    }
  }
  const norm = 255 * s * s;
  return out.map((v) => Math.min(1, v / norm));
}

// The display canvas holds SCALE x SCALE screen pixels per model pixel (about 280 px a side).
const DISPLAY = 280;
const INK_WIDTH = 2.5; // stroke width in model pixels: about MNIST's pen
const MASK_RADIUS = 1.6; // eraser radius in model pixels

let padCount = 0;

/**
 * A drawing pad bound to a `.pad` element: white ink on black (MNIST's look), in the model's
 * input space (ink = 1). Buttons to upload an image, draw a random digit from the VAE, clear;
 * with `data-mask`, an eraser that marks pixels as missing (shown red) and buttons for halves.
 * `onchange` runs after every stroke, upload or random draw.
 */
export class Pad {
  constructor(root, { sampleDigit, onchange = () => {} }) {
    this.root = root;
    this.name = root.dataset.name;
    this.sampleDigit = sampleDigit; // async () => {values, shape}
    this.onchange = onchange;
    this.withMask = root.dataset.mask === "true";
    this.input = { background: 0, invert: false };
    this.build();
    this.resize([28, 28]);
  }

  build() {
    const id = `pad-${++padCount}`;
    this.root.innerHTML = `
      <figure>
        <div class="pad-surface">
          <canvas class="ink" role="img" aria-label="${this.name}: drawing pad"></canvas>
          ${this.withMask ? '<canvas class="mask" aria-hidden="true"></canvas>' : ""}
        </div>
        <figcaption>${this.name}</figcaption>
      </figure>
      <div class="pad-tools">
        <input id="${id}-file" class="visually-hidden" type="file" accept="image/*">
        <label class="button" for="${id}-file">Upload<span class="visually-hidden"> ${this.name}</span></label>
        <button type="button" data-act="random">Random digit<span class="visually-hidden"> for ${this.name}</span></button>
        <button type="button" data-act="clear">Clear<span class="visually-hidden"> ${this.name}</span></button>
      </div>
      ${this.withMask ? `
      <div class="pad-tools brush" role="radiogroup" aria-labelledby="${id}-brush">
        <span id="${id}-brush">Brush:</span>
        <label><input type="radio" name="${id}-brush" value="ink" checked> Ink</label>
        <label><input type="radio" name="${id}-brush" value="erase"> Eraser</label>
      </div>
      <div class="pad-tools" role="group" aria-label="Erase a part of ${this.name}">
        <button type="button" data-half="top">Erase top half</button>
        <button type="button" data-half="bottom">Erase bottom half</button>
        <button type="button" data-half="left">Erase left half</button>
        <button type="button" data-half="right">Erase right half</button>
        <button type="button" data-act="unmask">Restore all</button>
      </div>` : ""}`;
    this.canvas = this.root.querySelector("canvas.ink");
    this.maskCanvas = this.root.querySelector("canvas.mask");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.errorHandler = (e) => { throw e; };

    this.root.querySelector('input[type="file"]').addEventListener("change", async (e) => {
      const file = e.target.files[0];
      e.target.value = ""; // the same file picked again still counts as a change
      if (file) await this.guard(() => this.load(file));
    });
    this.root.querySelector('[data-act="random"]').addEventListener("click", () =>
      this.guard(async () => {
        const { values, shape } = await this.sampleDigit();
        this.resize(shape);
        this.setPixels(values);
        this.changed();
      }));
    this.root.querySelector('[data-act="clear"]').addEventListener("click", () => this.clear());
    if (this.withMask) {
      this.root.querySelector('[data-act="unmask"]').addEventListener("click", () => {
        this.mask.fill(0);
        this.drawMask();
      });
      for (const b of this.root.querySelectorAll("[data-half]")) {
        b.addEventListener("click", () => this.maskHalf(b.dataset.half));
      }
    }
    this.listen();
  }

  /** Errors of the pad's own buttons go to `handler` (the panel's error line). */
  onerror(handler) {
    this.errorHandler = handler;
  }

  async guard(action) {
    try {
      await action();
    } catch (e) {
      this.errorHandler(e);
    }
  }

  /** Take the VAE's input spec (from its card): size, transparency's grey level, inversion. */
  setModel(info) {
    this.input = info.input;
    this.resize(info.input.size);
  }

  /** A blank pad of `[h, w]` model pixels. */
  resize([h, w]) {
    if (this.shape && this.shape[0] === h && this.shape[1] === w) return;
    this.shape = [h, w];
    this.scale = Math.max(1, Math.round(DISPLAY / Math.max(h, w)));
    this.canvas.width = w * this.scale;
    this.canvas.height = h * this.scale;
    this.mask = new Uint8Array(h * w);
    if (this.maskCanvas) {
      this.maskCanvas.width = w;
      this.maskCanvas.height = h;
    }
    this.clear(false);
  }

  clear(notify = true) {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.mask.fill(0);
    this.drawMask();
    this.empty = true;
    this.root.dataset.empty = "true"; // for styling, and for tests to wait on
    if (notify) this.onchange(this);
  }

  changed() {
    this.empty = false;
    this.root.dataset.empty = "false";
    this.onchange(this);
  }

  /**
   * An uploaded image, converted as the server converts uploads for this card: straight to
   * the model's resolution (an image of that size is taken pixel for pixel, not through the
   * display's scale, whose smoothing would blur it), so the pad holds what the model is given.
   */
  async load(file) {
    const bitmap = await createImageBitmap(file);
    const [h, w] = this.shape;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const ctx = small.getContext("2d", { willReadFrequently: true });
    const g = this.input.background;
    ctx.fillStyle = `rgb(${g}, ${g}, ${g})`; // what transparency becomes
    ctx.fillRect(0, 0, w, h);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, w, h); // straight to size
    bitmap.close();
    const values = greys(ctx.getImageData(0, 0, w, h).data, this.shape, 1);
    this.setPixels(this.input.invert ? values.map((v) => 1 - v) : values);
    this.mask.fill(0);
    this.drawMask();
    this.changed();
  }

  /** The pad at the model's resolution: H*W grey levels in [0, 1] (box average, ITU-R 601 luma). */
  pixels() {
    const [h, w] = this.shape;
    const s = this.scale;
    return greys(this.ctx.getImageData(0, 0, w * s, h * s).data, this.shape, s);
  }

  /** Show H*W values in [0, 1] (an image of the API), each as a block of screen pixels. */
  setPixels(values) {
    const small = document.createElement("canvas");
    paint(small, values, this.shape);
    this.ctx.imageSmoothingEnabled = false;
    this.ctx.drawImage(small, 0, 0, this.canvas.width, this.canvas.height);
    this.ctx.imageSmoothingEnabled = true;
  }

  /** The missing pixels as H*W values, 1 = missing (erased), 0 = observed. */
  maskValues() {
    return Array.from(this.mask);
  }

  maskHalf(half) {
    const [h, w] = this.shape;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const hit = { top: y < h / 2, bottom: y >= h / 2, left: x < w / 2, right: x >= w / 2 }[half];
        if (hit) this.mask[y * w + x] = 1;
      }
    }
    this.drawMask();
  }

  drawMask() {
    if (!this.maskCanvas) return;
    const [h, w] = this.shape;
    const ctx = this.maskCanvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      if (this.mask[i]) img.data.set([230, 40, 40, 170], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
  }

  brush() {
    const checked = this.root.querySelector('input[type="radio"]:checked');
    return checked ? checked.value : "ink";
  }

  /** Pointer drawing (mouse, pen, touch): ink strokes, or the eraser on a mask pad. */
  listen() {
    let last = null;
    const at = (e) => {
      const r = this.canvas.getBoundingClientRect();
      return [(e.clientX - r.left) * this.canvas.width / r.width,
              (e.clientY - r.top) * this.canvas.height / r.height];
    };
    this.canvas.addEventListener("pointerdown", (e) => {
      e.preventDefault();
      this.canvas.setPointerCapture(e.pointerId);
      last = at(e);
      this.stroke(last, last);
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const p = at(e);
      this.stroke(last, p);
      last = p;
    });
    const end = () => {
      if (!last) return;
      last = null;
      this.changed();
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
  }

  stroke([x0, y0], [x1, y1]) {
    if (this.withMask && this.brush() === "erase") {
      this.erase([x0, y0], [x1, y1]);
      return;
    }
    const ctx = this.ctx;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = INK_WIDTH * this.scale;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1 + 0.01, y1); // a zero-length line draws nothing, even with round caps
    ctx.stroke();
  }

  /** Mark the model pixels within MASK_RADIUS of the segment as missing. */
  erase([x0, y0], [x1, y1]) {
    const [h, w] = this.shape;
    const s = this.scale;
    const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0) / (s / 2)));
    for (let k = 0; k <= steps; k++) {
      const cx = (x0 + (x1 - x0) * k / steps) / s;
      const cy = (y0 + (y1 - y0) * k / steps) / s;
      for (let y = Math.max(0, Math.floor(cy - MASK_RADIUS)); y < Math.min(h, cy + MASK_RADIUS); y++) {
        for (let x = Math.max(0, Math.floor(cx - MASK_RADIUS)); x < Math.min(w, cx + MASK_RADIUS); x++) {
          if (Math.hypot(x + 0.5 - cx, y + 0.5 - cy) <= MASK_RADIUS) this.mask[y * w + x] = 1;
        }
      }
    }
    this.drawMask();
  }
}
