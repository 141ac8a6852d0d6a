// Entry point: /viewer lists studies; /viewer?study=…&series=… opens the stack viewer. The token comes from the
// workstation's sign-in (this tab's session storage) or the URL fragment (#token=…), never from the query string
// (see api.js); without one, the page offers the sign-in and comes back here afterwards.

import './style.css';
import { getJson, initToken, rememberReturn, SIGN_IN_PATH, tagValue, tagValues } from './api.js';
import { TriagePanel } from './triage.js';
import { FULL } from './streaming.js';
import { chooseRenderPath, StackViewer, webglRenderer } from './viewer.js';

const $ = (id) => document.getElementById(id);

function message(text, isError = false) {
  const m = $('message');
  m.textContent = text;
  m.className = isError ? 'error' : '';
}

/** Add a sign-in link to the message: the workstation's sign-in, which brings the tab back to this page. */
function offerSignIn() {
  const a = document.createElement('a');
  a.href = SIGN_IN_PATH;
  a.id = 'sign-in';
  a.textContent = 'Sign in';
  a.addEventListener('click', () => rememberReturn());
  $('message').append(' ', a);
}

function failed(e) {
  console.error(e);
  message(e.message || String(e), true);
  if (e.status === 401) {
    // Nothing to show without a sign-in: the (empty) viewer would cover the message and its link.
    $('viewer').hidden = true;
    $('tools').hidden = true;
    offerSignIn();
  }
  window.radloopViewer = { state: 'error', error: e.message || String(e) };
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => (k === 'text' ? (e.textContent = v) : e.setAttribute(k, v)));
  children.forEach((c) => e.append(c));
  return e;
}

function formatDate(da) {
  return da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da || '';
}

function viewerHref(study, series) {
  return `?${new URLSearchParams({ study, series })}`;
}

async function showStudyList() {
  const list = $('list');
  list.hidden = false;
  $('title').textContent = 'Studies';
  message('Loading studies…');
  const studies = await getJson('/dicomweb/studies?limit=100&includefield=all');
  message(studies.length ? '' : 'No studies yet.');
  const table = el('table', { 'data-testid': 'study-list' });
  table.append(el('thead', {}, el('tr', {}, ...['Date', 'Patient', 'Description', 'Modalities', 'Images', 'Series']
    .map((h) => el('th', { text: h })))));
  const body = el('tbody');
  for (const s of studies) {
    const study = tagValue(s, '0020000D');
    const seriesCell = el('td');
    const open = el('button', { text: 'Show series', class: 'link' });
    open.addEventListener('click', async () => {
      open.disabled = true;
      const series = await getJson(`/dicomweb/studies/${encodeURIComponent(study)}/series?includefield=all`);
      seriesCell.replaceChildren(...series.map((se) => {
        const uid = tagValue(se, '0020000E');
        const label = `${tagValue(se, '00080060') || '?'} ${tagValue(se, '0008103E') || ''} (${tagValue(se, '00201209') ?? '?'})`;
        return el('a', { href: viewerHref(study, uid), class: 'series' }, label.trim());
      }));
    });
    seriesCell.append(open);
    body.append(el('tr', {},
      el('td', { text: formatDate(tagValue(s, '00080020')) }),
      el('td', { text: tagValue(s, '00100010') || '' }),
      el('td', { text: tagValue(s, '00081030') || '' }),
      el('td', { text: tagValues(s, '00080061').join(', ') }),
      el('td', { text: String(tagValue(s, '00201208') ?? '') }),
      seriesCell));
  }
  table.append(body);
  list.replaceChildren(table);
}

/** Pick the series to show when only a study is given: the one with most instances. */
async function defaultSeries(study) {
  const series = await getJson(`/dicomweb/studies/${encodeURIComponent(study)}/series?includefield=all`);
  if (!series.length) throw new Error(`Study ${study} has no series.`);
  series.sort((a, b) => Number(tagValue(b, '00201209') ?? 0) - Number(tagValue(a, '00201209') ?? 0));
  return tagValue(series[0], '0020000E');
}

function waitFrame() {
  return new Promise((r) => requestAnimationFrame(r));
}

/** Hooks for tests and benchmarks (window.radloopViewer). */
function exposeHooks(viewer, triage, info) {
  const hooks = {
    state: 'ready',
    info,
    get total() {
      return viewer.imageIds.length;
    },
    get currentIndex() {
      return viewer.currentIndex;
    },
    get loadedCount() {
      return viewer.loader.loadedCount;
    },
    get lowCount() {
      return viewer.loader.stats.loadedLow;
    },
    stats() {
      const s = viewer.loader.stats;
      // Loader times count from the loader's start; *FromOpen ones from the start of open() (metadata request).
      const offset = s.startedAt - viewer.t0;
      return { ...s, metadataAt: viewer.metadataAt, firstRenderAt: viewer.firstRenderAt,
        firstFullRenderAt: viewer.firstFullRenderAt, renderedCount: viewer.renderedCount,
        fullSeriesFromOpen: s.allFullAt === null ? null : s.allFullAt + offset,
        allLowFromOpen: s.allLowAt === null ? null : s.allLowAt + offset,
        startedAt: undefined, total: viewer.imageIds.length };
    },
    quality(k) {
      return viewer.loader.quality[k];
    },
    /** Show slice k (0-based) and resolve once it is drawn at full resolution (or after timeoutMs). */
    async scrollTo(k, { timeoutMs = 20000 } = {}) {
      await viewer.scrollTo(k);
      const t = performance.now();
      while (performance.now() - t < timeoutMs) {
        const { index, quality } = viewer.lastRendered;
        if (index === k && quality === FULL) return true;
        if (viewer.currentIndex === k && viewer.loader.quality[k] === FULL && index !== k) viewer.viewport.render();
        await waitFrame();
      }
      return false;
    },
    setPreset: (name) => viewer.applyPreset(name),
    setWindow: (center, width) => viewer.setWindow(center, width),
    getWindow: () => viewer.getWindow(),
    setMode: (m) => viewer.setMode(m),
    get mode() {
      return viewer.mode;
    },
    imageCanvasRect: () => viewer.imageCanvasRect(),
    /** The shown image as decoded (size, value range, modality scaling), to diagnose what reaches the screen. */
    imageInfo() {
      const img = viewer.loader.best[viewer.currentIndex];
      if (!img) return null;
      const data = img.voxelManager ? img.voxelManager.getScalarData() : img.getPixelData();
      let min = Infinity;
      let max = -Infinity;
      for (let i = 0; i < data.length; i += 7) {
        if (data[i] < min) min = data[i];
        if (data[i] > max) max = data[i];
      }
      return { rows: img.rows, columns: img.columns, min, max, type: data.constructor.name,
        preScale: img.preScale, quality: viewer.loader.quality[viewer.currentIndex],
        transferSyntax: img.transferSyntaxUID, minPixelValue: img.minPixelValue, maxPixelValue: img.maxPixelValue,
        decodeLevel: img.imageFrame?.decodeLevel };
    },
    /** Zoom (parallel scale) and pan (focal point) of the view, to check the zoom and pan tools. */
    camera() {
      const { parallelScale, focalPoint } = viewer.viewport.getCamera();
      return { parallelScale, focalPoint: [...focalPoint] };
    },
    /** Resolve when every slice is at full resolution (true) or after timeoutMs (false). */
    async waitAllLoaded(timeoutMs = 60000) {
      const t = performance.now();
      while (viewer.loader.loadedCount + viewer.loader.failed.size < viewer.imageIds.length) {
        if (performance.now() - t > timeoutMs) return false;
        await new Promise((r) => setTimeout(r, 20));
      }
      return viewer.loader.failed.size === 0;
    },
    /**
     * Scroll through every slice as fast as the viewer draws: each IMAGE_RENDERED of slice k asks for slice k+1.
     * fps = slices drawn / elapsed time between the first and last drawn frame, from the animation-frame timestamps
     * (document.timeline.currentTime is the current requestAnimationFrame time). Also reports the time from asking
     * for a slice to its IMAGE_RENDERED. The browser caps animation frames at the display rate (60 Hz headless) unless
     * started with --disable-frame-rate-limit --disable-gpu-vsync.
     */
    async measureFps({ passes = 1 } = {}) {
      const n = viewer.imageIds.length;
      const seq = [];
      for (let p = 0; p < passes; p += 1) for (let i = 0; i < n; i += 1) seq.push(p % 2 ? n - 1 - i : i);
      // Start from another slice than the first one measured, so that the first request really draws.
      await viewer.scrollTo((seq[0] + Math.floor(n / 2)) % n);
      await waitFrame();
      await waitFrame();
      const element = viewer.element;
      return new Promise((resolve, reject) => {
        let pos = 0;
        let requestedAt = 0;
        const frameTimes = [];
        const latencies = [];
        const frames = new Set();
        let lastProgress = performance.now();
        const watchdog = setInterval(() => {
          if (performance.now() - lastProgress > 5000) {
            clearInterval(watchdog);
            element.removeEventListener('CORNERSTONE_IMAGE_RENDERED', onRendered);
            reject(new Error(`scrolling stalled at slice ${seq[pos - 1]} (${pos} of ${seq.length} drawn)`));
          }
        }, 500);
        const onRendered = () => {
          if (viewer.currentIndex !== seq[pos - 1]) return;
          lastProgress = performance.now();
          const ts = document.timeline.currentTime;
          latencies.push(performance.now() - requestedAt);
          frameTimes.push(ts);
          frames.add(ts);
          if (pos >= seq.length) {
            clearInterval(watchdog);
            element.removeEventListener('CORNERSTONE_IMAGE_RENDERED', onRendered);
            const elapsed = frameTimes[frameTimes.length - 1] - frameTimes[0];
            latencies.sort((a, b) => a - b);
            resolve({
              slices: frameTimes.length, distinctFrames: frames.size, elapsedMs: elapsed,
              fps: ((frameTimes.length - 1) * 1000) / elapsed,
              renderLatencyP50Ms: latencies[Math.floor(latencies.length * 0.5)],
              renderLatencyP95Ms: latencies[Math.floor(latencies.length * 0.95)],
            });
            return;
          }
          requestedAt = performance.now();
          viewer.scrollTo(seq[pos]);
          pos += 1;
        };
        element.addEventListener('CORNERSTONE_IMAGE_RENDERED', onRendered);
        requestedAt = performance.now();
        viewer.scrollTo(seq[pos]);
        pos += 1;
      });
    },
    /** Raw rAF rate with nothing to draw, to know the browser's frame cap. */
    async rafRate(ms = 500) {
      let frames = 0;
      const t0 = await waitFrame();
      let t = t0;
      while (t - t0 < ms) {
        t = await waitFrame();
        frames += 1;
      }
      return (frames * 1000) / (t - t0);
    },
    triage: () => triage.score,
    setHeatmap: (on) => triage.setHeatmap(on),
  };
  window.radloopViewer = hooks;
  return hooks;
}

async function showViewer(study, series) {
  $('viewer').hidden = false;
  $('tools').hidden = false;
  message('');
  const viewer = new StackViewer({
    element: $('viewport'),
    counter: $('counter'),
    progress: $('progress'),
    voiLabel: $('voi'),
    slider: $('slider'),
  });
  const triage = new TriagePanel({
    panel: $('triage'), scoreEl: $('triage-score'), priorityEl: $('triage-priority'), modelEl: $('triage-model'),
    toggleLabel: $('heatmap-toggle-label'), toggle: $('heatmap-toggle'), overlay: $('heatmap'), viewer,
  });
  const params = new URLSearchParams(window.location.search);
  const renderPath = chooseRenderPath(params.get('render'));
  const concurrency = Math.max(1, Math.min(64, Number(params.get('concurrency')) || 16));
  const info = await viewer.open(study, series, { renderPath, concurrency, lowRes: params.get('lowres') !== '0' });
  info.renderPath = renderPath;
  info.webgl = webglRenderer();
  $('title').textContent = `${info.modality} · ${info.count} images`;
  document.querySelectorAll('[data-preset]').forEach((b) => b.addEventListener('click', () =>
    viewer.applyPreset(b.dataset.preset)));
  document.querySelectorAll('[data-tool]').forEach((b) => b.addEventListener('click', () =>
    viewer.setMode(b.dataset.tool)));
  document.querySelector('[data-action="reset"]').addEventListener('click', () => viewer.reset());
  $('viewport').addEventListener('CORNERSTONE_CAMERA_MODIFIED', () => {
    if (!$('heatmap').hidden) triage.placeOverlay();
  });
  const hooks = exposeHooks(viewer, triage, info);
  // Triage scores exist for single-image studies (radiographs); a CT series has none.
  if (info.count === 1 || info.modality !== 'CT') await triage.load(info.firstSop);
  return hooks;
}

async function main() {
  window.radloopViewer = { state: 'loading' };
  // Room for one timing entry per frame request (the default buffer keeps 250), for the benchmark's byte counts.
  performance.setResourceTimingBufferSize?.(10000);
  const { refusedQueryToken } = initToken();
  if (refusedQueryToken) {
    console.warn('radloop viewer: a token in the query string is not used (it would be logged); sign in instead');
  }
  const params = new URLSearchParams(window.location.search);
  const study = params.get('study');
  let series = params.get('series');
  try {
    if (!study) {
      await showStudyList();
      window.radloopViewer = { state: 'list' };
      return;
    }
    if (!series) series = await defaultSeries(study);
    if (params.get('autostart') === '0') {
      // For measurements: the page and its code are loaded, the series starts when asked (e.g. after throttling).
      window.radloopViewer = {
        state: 'idle',
        start: () => showViewer(study, series).catch(failed),
      };
      return;
    }
    await showViewer(study, series);
  } catch (e) {
    failed(e);
  }
}

main();
