// A tfvae model in the browser: its static-shape TFLite files run by LiteRT.js
// (WASM, one thread, so a plain HTTP server is enough: no COOP/COEP headers).
//
// window.tfvaeReady   a promise, resolved when the files are compiled
// window.tfvaeDecode(z, labels)   z: an array of codes, each latent_dim numbers
//                     (and for a conditional model `labels`, each code's class
//                     index); resolves to one array per code of the per-pixel
//                     means of p(x|z), flat in H x W x C order
// window.tfvaeChooseClass(index)   a conditional model: draw that class
// <body data-state>   loading | ready | error
import {loadLiteRt, loadAndCompile, Tensor} from '@litertjs/core';

const status = document.getElementById('status');

async function fetchJson(name) {
  const response = await fetch(new URL(name, import.meta.url));
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.json();
}

// LiteRT's WASM prints INFO and WARNING lines through Emscripten's printErr
// (console.error by default); wasm-utils hands a global `Module` to the WASM
// factory, so those lines go to debug and warn and console.error stays for errors.
self.Module = {
  printErr: (line) =>
    (/^INFO: /.test(line) ? console.debug : /^WARNING: /.test(line) ? console.warn : console.error)(
      '[LiteRT]', line),
};

async function compile(file) {
  // WASM on the CPU, always: with a WebGPU adapter LiteRT.js would pick it.
  return loadAndCompile(new URL(file, import.meta.url).href, {accelerator: 'wasm'});
}

/** Run a static-shape file on `rows` (Float32Arrays of `width` numbers) and,
 * for a conditional model, their class `labels` (int32 `labels` input),
 * padding the last batch; returns one Float32Array of `output` per row. */
async function runRows(entries, input, output, rows, width, labels = null) {
  const out = [];
  for (let i = 0; i < rows.length;) {
    const entry = entries.find((e) => e.batch <= rows.length - i) || entries[entries.length - 1];
    const data = new Float32Array(entry.batch * width);
    const take = Math.min(entry.batch, rows.length - i);
    for (let j = 0; j < take; j++) data.set(rows[i + j], j * width);
    const feeds = {[input]: new Tensor(data, [entry.batch, ...entry.shape])};
    if (labels) {
      feeds.labels = new Tensor(Int32Array.from(labels.slice(i, i + entry.batch).concat(
        Array(entry.batch - take).fill(0))), [entry.batch]);
    }
    let results;
    try {
      results = await entry.model.run(feeds);
    } finally {
      Object.values(feeds).forEach((t) => t.delete());
    }
    try {
      const values = results[output].toTypedArray();
      const size = values.length / entry.batch;
      for (let j = 0; j < take; j++) out.push(values.slice(j * size, (j + 1) * size));
    } finally {
      Object.values(results).forEach((t) => t.delete());
    }
    i += take;
  }
  return out;
}

function checkedLabels(labels, rows, classes) {
  if (!classes) return null;
  if (!Array.isArray(labels) || labels.length !== rows.length ||
      !labels.every((y) => Number.isInteger(y) && y >= 0 && y < classes.length)) {
    throw new TypeError(`labels must be one class index in 0..${classes.length - 1} per row`);
  }
  return labels;
}

function checkedRows(values, width, what) {
  if (!Array.isArray(values)) throw new TypeError(`${what} must be an array`);
  return values.map((row, i) => {
    if (!(Array.isArray(row) || ArrayBuffer.isView(row)) || row.length !== width) {
      throw new TypeError(`${what} ${i} must be an array of ${width} numbers`);
    }
    const floats = Float32Array.from(row);
    if (!floats.every(Number.isFinite)) throw new RangeError(`${what} ${i} has a non-finite value`);
    return floats;
  });
}

async function init() {
  const start = performance.now();
  const info = await fetchJson('./model.json');
  const examples = await fetchJson('./examples.json');
  await loadLiteRt(new URL('../wasm/', import.meta.resolve('@litertjs/core')).href);
  const load = async (files) => {
    const entries = [];
    for (const file of files) entries.push({...file, model: await compile(file.file)});
    return entries.sort((a, b) => b.batch - a.batch);  // largest batch first
  };
  const decoders = await load(info.decoders);
  const encoders = await load(info.encoders);
  const [height, width, channels] = info.image_shape;
  const pixels = height * width * channels;
  const latent = info.latent_dim;
  const classes = info.classes;
  const run = (entries, input, output, rows, width, what, labels) => {
    const checked = checkedRows(rows, width, what);
    return runRows(entries, input, output, checked, width, checkedLabels(labels, checked, classes));
  };
  const api = {
    info, examples, latent, classes, shape: info.image_shape,
    label: 0,  // the class a conditional model draws (the picker's)
    decode: async (z, labels) => run(decoders, 'z', info.mean_output, z, latent, 'code', labels),
    encode: async (images, labels) =>
      run(encoders, 'images', 'z_mean', images, pixels, 'image', labels),
    chosen: (n) => (classes ? Array(n).fill(api.label) : undefined),
  };
  api.loadMs = performance.now() - start;
  return api;
}

// --- pictures -------------------------------------------------------------------

/** Paint `images` (flat H x W x C means in [0, 1]) into `canvas` as a grid
 * as `tfvae sample` draws them: grey images dark on white, colour images in
 * their colours. */
function paint(canvas, images, [height, width, channels], columns, scale = 2, gap = 2) {
  const rows = Math.ceil(images.length / columns);
  canvas.width = columns * (width + gap) + gap;
  canvas.height = rows * (height + gap) + gap;
  canvas.style.width = `${canvas.width * scale}px`;
  canvas.style.height = `${canvas.height * scale}px`;
  const context = canvas.getContext('2d');
  context.fillStyle = '#fff';
  context.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((means, n) => {
    const picture = context.createImageData(width, height);
    for (let p = 0; p < height * width; p++) {
      for (let c = 0; c < 3; c++) {
        const mean = Math.min(1, Math.max(0, means[p * channels + (channels === 3 ? c : 0)]));
        const value = Math.round(255 * mean);
        picture.data[4 * p + c] = channels === 1 ? 255 - value : value;
      }
      picture.data[4 * p + 3] = 255;
    }
    const x = gap + (n % columns) * (width + gap);
    const y = gap + Math.floor(n / columns) * (height + gap);
    context.putImageData(picture, x, y);
  });
}

// A seeded generator (mulberry32) and Box-Muller normals: the same seed, the same samples.
function normals(seed, count) {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({length: count}, () =>
    Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform()));
}

// The standard normal's quantile function (Acklam's rational approximation,
// relative error below 1.2e-9): the manifold is drawn at equal steps in probability.
function normalQuantile(p) {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269,
    -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
    -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
    4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q) => (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// --- the three panels -------------------------------------------------------------

async function showCode(api, z) {
  const [means] = await api.decode([z], api.chosen(1));
  paint(document.getElementById('decoded'), [means], api.shape, 1, 224 / (api.shape[1] + 4), 2);
  document.getElementById('code').textContent =
    `z = (${Array.from(z, (v) => v.toFixed(2)).join(', ')})`;
}

/** A conditional model's class picker: the explorer and the samples draw
 * the class chosen (`redraw` repaints the explorer). */
function classPicker(api, redraw) {
  const select = document.getElementById('class');
  api.classes.forEach((name, i) => select.append(new Option(name, String(i))));
  const choose = async (index) => {
    api.label = index;
    select.value = String(index);
    await redraw();
    await sample(api);
  };
  select.addEventListener('change', () => choose(Number(select.value)));
  document.getElementById('class-picker').hidden = false;
  window.tfvaeChooseClass = choose;
}

/** A 2-D latent space: the decoder over a grid at the normal quantiles, and a
 * point to drag over it; the decoded image follows the point. */
async function manifoldExplorer(api, root) {
  const steps = 20;
  const quantiles = Array.from({length: steps}, (_, i) => normalQuantile((i + 0.5) / steps));
  const grid = [];
  for (const y of [...quantiles].reverse()) for (const x of quantiles) grid.push([x, y]);
  const canvas = document.createElement('canvas');
  canvas.id = 'manifold';
  root.append(canvas);
  let background;
  let point = [0.5, 0.5];
  const drawGrid = async () => {
    // 20 images a side: about 420 px for MNIST, beside the decoded image.
    const images = await api.decode(grid, api.chosen(grid.length));
    paint(canvas, images, api.shape, steps, 420 / (steps * api.shape[1]), 0);
    background = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  };
  await drawGrid();
  let busy = false;
  let pending = null;
  const moveTo = async (u, v) => {
    const clamp = (t) => Math.min(1 - 1e-4, Math.max(1e-4, t));
    const context = canvas.getContext('2d');
    context.putImageData(background, 0, 0);
    context.beginPath();
    context.arc(u * canvas.width, v * canvas.height, 5, 0, 2 * Math.PI);
    context.strokeStyle = '#d22';
    context.lineWidth = 2;
    context.stroke();
    point = [u, v];
    pending = [normalQuantile(clamp(u)), normalQuantile(clamp(1 - v))];
    if (busy) return;  // the decode under way picks the newest point up next
    busy = true;
    while (pending) {
      const z = pending;
      pending = null;
      await showCode(api, z);
    }
    busy = false;
  };
  const pointer = (event) => {
    if (event.type !== 'pointerdown' && !event.buttons) return;
    const box = canvas.getBoundingClientRect();
    moveTo((event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height);
  };
  canvas.addEventListener('pointerdown', pointer);
  canvas.addEventListener('pointermove', pointer);
  window.tfvaeMoveTo = moveTo;
  await moveTo(0.5, 0.5);
  return async () => {
    await drawGrid();
    await moveTo(...point);
  };
}

/** More than 2 dimensions: a slider for each of the most active units (the
 * posterior means' spread over test images, largest first); the others stay
 * at the prior's mean, 0. */
async function sliderExplorer(api, root) {
  const z = new Float32Array(api.latent);
  const units = api.info.explore.units;
  for (const unit of units) {
    const label = document.createElement('label');
    label.className = 'slider';
    const input = Object.assign(document.createElement('input'),
      {type: 'range', min: -3, max: 3, step: 0.05, value: 0});
    input.dataset.unit = unit;
    const value = document.createElement('span');
    value.textContent = '0.00';
    label.append(`z${unit + 1}`, input, value);
    input.addEventListener('input', async () => {
      z[unit] = Number(input.value);
      value.textContent = z[unit].toFixed(2);
      await showCode(api, z);
    });
    root.append(label);
  }
  const note = document.createElement('p');
  note.className = 'note';
  note.textContent = `The ${units.length} most active of ${api.latent} units; the others are 0.`;
  root.append(note);
  await showCode(api, z);
  return () => showCode(api, z);
}

async function sample(api) {
  const seed = Number(document.getElementById('seed').value) || 0;
  const noise = normals(seed, 16 * api.latent);
  const codes = Array.from({length: 16}, (_, i) => noise.slice(i * api.latent, (i + 1) * api.latent));
  paint(document.getElementById('samples'), await api.decode(codes, api.chosen(16)), api.shape,
    4, 2.5);
}

async function reconstruct(api) {
  const images = api.examples.images;
  const labels = api.examples.labels;  // a conditional model's: each image's own class
  const means = await api.decode(await api.encode(images, labels), labels);
  paint(document.getElementById('reconstructions'), [...images, ...means], api.shape,
    images.length, 2.5);
}

window.tfvaeReady = init().then(async (api) => {
  const plain = (rows) => rows.map((row) => Array.from(row));
  window.tfvaeDecode = async (z, labels) => plain(await api.decode(z, labels));
  window.tfvaeEncode = async (images, labels) => plain(await api.encode(images, labels));
  window.tfvaeInfo = {
    loadMs: api.loadMs, latentDim: api.latent, imageShape: api.shape, classes: api.classes,
  };
  const root = document.getElementById('explorer');
  const redraw = await (api.latent === 2 ? manifoldExplorer(api, root) : sliderExplorer(api, root));
  if (api.classes) classPicker(api, redraw);
  await sample(api);
  await reconstruct(api);
  const button = document.getElementById('sample');
  button.addEventListener('click', () => sample(api));
  button.disabled = false;
  status.textContent = `Ready in ${Math.round(api.loadMs)} ms: latent space of ` +
    `${api.latent} dimensions, ${api.shape.join('x')} images.`;
  document.body.dataset.state = 'ready';
  return api;
}, (error) => {
  status.textContent = `Error: ${error && error.message || error}`;
  document.body.dataset.state = 'error';
  console.error('tfvae: the model did not load:', error);
  throw error;
});
