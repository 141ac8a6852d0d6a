// The stack viewer: one Cornerstone3D StackViewport fed by the streaming loader, with CT window presets, drag-to-
// window, zoom/pan, scroll by wheel, touch drag and keyboard, a frame counter, and test/benchmark hooks.

import {
  Enums,
  eventTarget,
  getRenderingEngine,
  imageLoader,
  imageRetrievalPoolManager,
  init as csInit,
  RenderingEngine,
  setUseCPURendering,
  utilities as csUtils,
} from '@cornerstonejs/core';
import { init as dicomLoaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  addTool,
  Enums as toolEnums,
  init as toolsInit,
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
} from '@cornerstonejs/tools';

import { authHeaders, getJson, tagValue } from './api.js';
import { FULL, StreamingSeriesLoader } from './streaming.js';

const ENGINE_ID = 'radloop-engine';
const VIEWPORT_ID = 'radloop-stack';
const TOOL_GROUP_ID = 'radloop-tools';
const { MouseBindings } = toolEnums;

/** CT window presets as [center, width] in HU. */
export const PRESETS = {
  lung: { center: -600, width: 1500 },
  mediastinum: { center: 40, width: 400 },
  bone: { center: 400, width: 1800 },
};

let initialised = false;

/** What frame requests accept: the stored codestream, each part typed image/jphc with its transfer syntax. */
export const FRAME_ACCEPT = 'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202';

/** The WebGL renderer's name, or null without WebGL. */
export function webglRenderer() {
  const gl = document.createElement('canvas').getContext('webgl2');
  if (!gl) return null;
  const ext = gl.getExtension('WEBGL_debug_renderer_info');
  return String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
}

/**
 * Which Cornerstone render path to use: `?render=gpu|cpu` forces one; otherwise WebGL, unless WebGL is a software
 * rasteriser (SwiftShader, llvmpipe: headless or GPU-less machines), where the CPU path is several times faster.
 */
export function chooseRenderPath(param) {
  if (param === 'gpu' || param === 'cpu') return param;
  const r = webglRenderer();
  return !r || /swiftshader|llvmpipe|softpipe|software/i.test(r) ? 'cpu' : 'gpu';
}

async function initCornerstone(renderPath) {
  if (initialised) return;
  await csInit();
  setUseCPURendering(renderPath === 'cpu');
  dicomLoaderInit({
    maxWebWorkers: Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2)),
    // Every frame request carries the viewer token, and asks for the stored HTJ2K RPCL codestream: the loader's own
    // Accept (application/octet-stream, transfer-syntax=*) gets server-decoded pixels, 2-3 times the bytes, and no
    // resolution prefixes.
    beforeSend: () => ({ ...authHeaders(), Accept: FRAME_ACCEPT }),
  });
  toolsInit();
  [StackScrollTool, WindowLevelTool, ZoomTool, PanTool].forEach((t) => addTool(t));
  // The streaming loader bounds its own requests; let Cornerstone's pool pass them straight through.
  imageRetrievalPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Interaction, 64);
  imageRetrievalPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Prefetch, 64);
  initialised = true;
}

/** Sort instances as a radiologist scrolls them: by position along the slice normal, else by InstanceNumber. */
export function sortInstances(instances) {
  const key = (m) => {
    const ipp = m['00200032']?.Value;
    const iop = m['00200037']?.Value;
    if (ipp && iop && iop.length === 6) {
      const [a, b, c, d, e, f] = iop.map(Number);
      const n = [b * f - c * e, c * d - a * f, a * e - b * d];
      return -(n[0] * ipp[0] + n[1] * ipp[1] + n[2] * ipp[2]); // head first: highest z at the top of the stack
    }
    return Number(tagValue(m, '00200013') ?? 0);
  };
  return [...instances].sort((x, y) => key(x) - key(y) || Number(tagValue(x, '00200013') ?? 0) -
    Number(tagValue(y, '00200013') ?? 0));
}

/** The WADO-RS base URL of a series on this origin. */
export function seriesBase(study, series) {
  return `${window.location.origin}/dicomweb/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
}

/** The wadors: image id of an instance's first frame. */
export function frameImageId(study, series, sop) {
  return `wadors:${seriesBase(study, series)}/instances/${encodeURIComponent(sop)}/frames/1`;
}

/**
 * Fetch a series' metadata and one instance's first frame (decoded, full resolution) ahead of showing it, so that
 * `open(..., { prefetched })` draws it at once: the workstation does this for the next case on the worklist.
 */
export async function prefetchSeriesImage(study, series, sop, { renderPath = 'gpu' } = {}) {
  await initCornerstone(renderPath);
  const instances = sortInstances(await getJson(`${seriesBase(study, series)}/metadata`));
  const index = instances.findIndex((m) => tagValue(m, '00080018') === sop);
  if (index < 0) throw new Error(`Instance ${sop} is not in series ${series}.`);
  const imageId = frameImageId(study, series, sop);
  wadors.metaDataManager.add(imageId, instances[index]);
  const image = await imageLoader.loadImage(imageId, {
    useRGBA: false, ignoreCache: true, priority: -5, requestType: Enums.RequestType.Prefetch,
    retrieveOptions: { imageQualityStatus: Enums.ImageQualityStatus.FULL_RESOLUTION },
  });
  return { instances, index, images: new Map([[imageId, image]]) };
}

export class StackViewer {
  constructor({ element, counter, progress, voiLabel, slider, onIndex }) {
    this.element = element;
    this.counterEl = counter;
    this.progressEl = progress;
    this.voiEl = voiLabel;
    this.slider = slider;
    this.onIndex = onIndex;
    this.loader = null;
    this.viewport = null;
    this.imageIds = [];
    this.renderedCount = 0;
    this.lastRendered = { index: -1, at: 0, quality: 0 };
    this.firstRenderAt = null;
    this.firstFullRenderAt = null;
    this.mode = 'wl';
  }

  /** Load a series: metadata from WADO-RS, frames through the streaming loader. */
  async open(study, series, { startIndex = null, renderPath = 'gpu', concurrency = 16, lowRes = true,
    prefetched = null } = {}) {
    this.renderPath = renderPath;
    await initCornerstone(renderPath);
    const base = seriesBase(study, series);
    this.t0 = performance.now();
    // `prefetched` (see prefetchSeriesImage): the metadata and decoded images fetched ahead, e.g. the next case.
    const instances = prefetched?.instances ?? sortInstances(await getJson(`${base}/metadata`));
    if (!instances.length) throw new Error(`Series ${series} has no instances.`);
    this.instances = instances;
    this.imageIds = instances.map((m) => {
      const sop = tagValue(m, '00080018');
      const imageId = frameImageId(study, series, sop);
      wadors.metaDataManager.add(imageId, m);
      return imageId;
    });
    this.metadataAt = performance.now() - this.t0;
    const rows = Number(tagValue(instances[0], '00280010'));
    const columns = Number(tagValue(instances[0], '00280011'));
    this.modality = tagValue(instances[0], '00080060') || '';

    const engine = getRenderingEngine(ENGINE_ID) || new RenderingEngine(ENGINE_ID);
    this.engine = engine;
    engine.enableElement({
      viewportId: VIEWPORT_ID,
      type: Enums.ViewportType.STACK,
      element: this.element,
      defaultOptions: { background: [0, 0, 0] },
    });
    this.viewport = engine.getViewport(VIEWPORT_ID);
    this.setupTools();

    const start = startIndex ?? Math.floor((this.imageIds.length - 1) / 2);
    this.loader = new StreamingSeriesLoader(this.imageIds, {
      rows,
      columns,
      concurrency,
      lowRes,
      batchUrl: `${base}/pixeldata`,
      headers: authHeaders,
      onUpdate: () => this.updateProgress(),
    });
    prefetched?.images?.forEach((image, imageId) => {
      const k = this.imageIds.indexOf(imageId);
      if (k >= 0) this.loader.seed(k, image);
    });
    // The StackViewport asks this loader (Cornerstone's retrieve-configuration hook) for every image it shows.
    csUtils.imageRetrieveMetadataProvider.add('stack', { create: () => this.loader });

    // The CPU path reads images from the cache and has no upgrade callback: re-show the slice when it sharpens.
    this.loader.onUpgrade = (index) => {
      if (this.renderPath === 'cpu' && this.viewport.getCurrentImageIdIndex() === index) {
        this.viewport._setImageIdIndex(index); // eslint-disable-line no-underscore-dangle
      }
    };
    if (this.destroyed) return null;
    this.element.addEventListener(Enums.Events.PRE_STACK_NEW_IMAGE, (evt) =>
      this.loader.setCurrent(evt.detail.imageIdIndex));
    this.element.addEventListener(Enums.Events.IMAGE_RENDERED, () => this.onRendered());
    this.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, (evt) => this.onNewImage(evt.detail));
    this.element.addEventListener(Enums.Events.VOI_MODIFIED, () => this.updateVoiLabel());
    this.loader.start(start);
    this.slider.max = String(this.imageIds.length - 1);
    this.slider.value = String(start);
    this.updateCounter(start);
    await this.viewport.setStack(this.imageIds, start);
    if (this.modality === 'CT') this.applyPreset('mediastinum', { render: false });
    this.viewport.render();
    this.bindKeys();
    this.bindPinch();
    this.onSlider = () => this.scrollTo(Number(this.slider.value));
    this.slider.addEventListener('input', this.onSlider);
    this.onResize = () => this.resize();
    window.addEventListener('resize', this.onResize);
    return { count: this.imageIds.length, modality: this.modality, firstSop: tagValue(instances[0], '00080018') };
  }

  setupTools() {
    ToolGroupManager.destroyToolGroup(TOOL_GROUP_ID);
    const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    [StackScrollTool, WindowLevelTool, ZoomTool, PanTool].forEach((t) => group.addTool(t.toolName));
    group.addViewport(VIEWPORT_ID, ENGINE_ID);
    this.group = group;
    const touch = window.matchMedia('(pointer: coarse)').matches;
    this.setMode(touch ? 'scroll' : 'wl');
  }

  /**
   * The primary button / one-finger drag does the chosen tool; the wheel always scrolls. With a mouse, the middle
   * button pans and the right button zooms; on touch, two fingers zoom (pinch) and three pan.
   */
  setMode(mode) {
    const g = this.group;
    const names = { scroll: StackScrollTool.toolName, wl: WindowLevelTool.toolName, zoom: ZoomTool.toolName,
      pan: PanTool.toolName };
    if (!names[mode]) throw new Error(`Unknown tool mode ${mode}; expected scroll, wl, zoom or pan.`);
    Object.values(names).forEach((n) => g.setToolPassive(n, { removeAllBindings: true }));
    const bindings = {
      [StackScrollTool.toolName]: [{ mouseButton: MouseBindings.Wheel }],
      [PanTool.toolName]: [{ mouseButton: MouseBindings.Auxiliary }, { numTouchPoints: 3 }],
      // Two-finger pinch is handled by bindPinch (Cornerstone 5.14's pinch zooms the wrong way, and by far too much).
      [ZoomTool.toolName]: [{ mouseButton: MouseBindings.Secondary }],
      [WindowLevelTool.toolName]: [],
    };
    bindings[names[mode]].push({ mouseButton: MouseBindings.Primary });
    Object.entries(bindings).forEach(([n, b]) => g.setToolActive(n, { bindings: b }));
    this.mode = mode;
    document.querySelectorAll('[data-tool]').forEach((b) => b.classList.toggle('active', b.dataset.tool === mode));
  }

  applyPreset(name, { render = true } = {}) {
    const p = PRESETS[name];
    if (!p) throw new Error(`Unknown window preset ${name}; expected lung, mediastinum or bone.`);
    this.viewport.setProperties({ voiRange: csUtils.windowLevel.toLowHighRange(p.width, p.center) });
    this.preset = name;
    if (render) this.viewport.render();
    this.updateVoiLabel();
    document.querySelectorAll('[data-preset]').forEach((b) => b.classList.toggle('active', b.dataset.preset === name));
  }

  setWindow(center, width) {
    this.viewport.setProperties({ voiRange: csUtils.windowLevel.toLowHighRange(width, center) });
    this.preset = null;
    this.viewport.render();
    this.updateVoiLabel();
  }

  getWindow() {
    const { voiRange } = this.viewport.getProperties();
    if (!voiRange) return null;
    const { windowWidth, windowCenter } = csUtils.windowLevel.toWindowLevel(voiRange.lower, voiRange.upper);
    return { center: windowCenter, width: windowWidth };
  }

  reset() {
    this.viewport.resetCamera();
    if (this.modality === 'CT') this.applyPreset(this.preset || 'mediastinum', { render: false });
    else this.viewport.resetProperties();
    this.viewport.render();
  }

  resize() {
    this.engine?.resize(true, true);
  }

  get currentIndex() {
    return this.viewport ? this.viewport.getCurrentImageIdIndex() : -1;
  }

  scrollTo(index) {
    const k = Math.max(0, Math.min(this.imageIds.length - 1, Math.round(index)));
    return this.viewport.setImageIdIndex(k);
  }

  scrollBy(delta) {
    return this.scrollTo(this.viewport.getTargetImageIdIndex() + delta);
  }

  /** Stop loading and detach from the page (the workstation opens one viewer per case on a fresh element). */
  destroy() {
    this.destroyed = true;
    this.loader?.stop();
    if (this.onKey) window.removeEventListener('keydown', this.onKey);
    if (this.onResize) window.removeEventListener('resize', this.onResize);
    if (this.onSlider) this.slider.removeEventListener('input', this.onSlider);
    try {
      this.engine?.disableElement(VIEWPORT_ID);
    } catch {
      // already disabled
    }
    ToolGroupManager.destroyToolGroup(TOOL_GROUP_ID);
  }

  /** Pinch zoom: the image scales with the distance between the two fingers (spread = larger). */
  bindPinch() {
    const spread = (t) => Math.hypot(t[0].clientX - t[1].clientX, t[0].clientY - t[1].clientY);
    let pinch = null;
    this.element.addEventListener('touchstart', (e) => {
      pinch = e.touches.length === 2 && this.viewport
        ? { d0: spread(e.touches), scale0: this.viewport.getCamera().parallelScale } : null;
    }, { passive: true, capture: true });
    this.element.addEventListener('touchmove', (e) => {
      if (!pinch || e.touches.length !== 2 || !this.viewport) return;
      const ratio = spread(e.touches) / Math.max(1, pinch.d0);
      this.pinchMoves = (this.pinchMoves || 0) + 1;
      if (ratio > 0.05) {
        this.viewport.setCamera({ parallelScale: pinch.scale0 / ratio });
        this.viewport.render();
      }
    }, { passive: true, capture: true });
    this.element.addEventListener('touchend', (e) => {
      if (e.touches.length < 2) pinch = null;
    }, { passive: true, capture: true });
  }

  bindKeys() {
    if (this.keysBound) return;
    this.keysBound = true;
    this.onKey = (e) => {
      // Keys in a form field (a read's comment, the confidence or opacity slider) are that field's, not viewer
      // commands; only the viewer's own series slider scrolls the images. Modified keys belong to the page.
      const t = e.target;
      if ((t instanceof HTMLInputElement && t !== this.slider) || t instanceof HTMLTextAreaElement ||
        t instanceof HTMLSelectElement || t?.isContentEditable || e.ctrlKey || e.metaKey || e.altKey) return;
      const n = this.imageIds.length;
      const actions = {
        ArrowDown: () => this.scrollBy(1),
        ArrowRight: () => this.scrollBy(1),
        ArrowUp: () => this.scrollBy(-1),
        ArrowLeft: () => this.scrollBy(-1),
        PageDown: () => this.scrollBy(10),
        PageUp: () => this.scrollBy(-10),
        Home: () => this.scrollTo(0),
        End: () => this.scrollTo(n - 1),
        1: () => this.applyPreset('lung'),
        2: () => this.applyPreset('mediastinum'),
        3: () => this.applyPreset('bone'),
        r: () => this.reset(),
        s: () => this.setMode('scroll'),
        w: () => this.setMode('wl'),
        z: () => this.setMode('zoom'),
        p: () => this.setMode('pan'),
      };
      const act = actions[e.key];
      if (act) {
        e.preventDefault();
        act();
      }
    };
    window.addEventListener('keydown', this.onKey);
  }

  onNewImage({ imageIdIndex }) {
    this.loader?.setCurrent(imageIdIndex);
    this.updateCounter(imageIdIndex);
    this.onIndex?.(imageIdIndex);
  }

  onRendered() {
    const now = performance.now();
    const index = this.currentIndex;
    const quality = this.loader?.quality[index] ?? 0;
    this.renderedCount += 1;
    if (this.firstRenderAt === null) this.firstRenderAt = now - this.t0;
    if (this.firstFullRenderAt === null && quality === FULL) this.firstFullRenderAt = now - this.t0;
    this.lastRendered = { index, at: now, quality };
    this.renderWaiters?.forEach((w) => w());
    this.renderWaiters = [];
  }

  updateCounter(index) {
    const n = this.imageIds.length;
    this.counterEl.textContent = `${index + 1} / ${n}`;
    if (document.activeElement !== this.slider) this.slider.value = String(index);
    this.updateProgress();
  }

  updateProgress() {
    if (!this.loader) return;
    const { loadedFull } = this.loader.stats;
    const n = this.imageIds.length;
    const q = this.loader.quality[this.currentIndex];
    this.progressEl.textContent = loadedFull >= n ? `${n} slices loaded`
      : `loading ${loadedFull}/${n}${q === FULL ? '' : ' · sharpening'}`;
  }

  updateVoiLabel() {
    const w = this.getWindow();
    if (w) this.voiEl.textContent = `W ${Math.round(w.width)} L ${Math.round(w.center)}`;
  }

  /** Canvas rectangle (device pixels) where the image is drawn, for overlays and pixel checks. */
  imageCanvasRect() {
    const vp = this.viewport;
    const imageId = vp.getCurrentImageId();
    const rows = Number(tagValue(this.instances[0], '00280010'));
    const cols = Number(tagValue(this.instances[0], '00280011'));
    // Pixel centres are at integer image coordinates, so the image's outer edges are at -0.5 and size - 0.5.
    const tl = vp.worldToCanvas(csUtils.imageToWorldCoords(imageId, [-0.5, -0.5]));
    const br = vp.worldToCanvas(csUtils.imageToWorldCoords(imageId, [cols - 0.5, rows - 0.5]));
    const dpr = window.devicePixelRatio || 1;
    return { x: tl[0] * dpr, y: tl[1] * dpr, width: (br[0] - tl[0]) * dpr, height: (br[1] - tl[1]) * dpr, dpr };
  }

  waitRender() {
    return new Promise((resolve) => {
      this.renderWaiters = this.renderWaiters || [];
      this.renderWaiters.push(resolve);
    });
  }
}
