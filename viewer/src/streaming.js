// Progressive, interleaved streaming of one series from radloop's gateway into Cornerstone3D.
//
// Every frame is stored as HTJ2K lossless RPCL with one tile-part per resolution level, so a byte prefix of the
// codestream decodes a lower resolution. The gateway serves exactly that prefix for `?resolution=k` (k = 0 is the
// lowest level). This loader:
//   1. asks for the current slice first, as a low-resolution prefix (a few KB: an image appears at once), then full;
//   2. fills a prefetch window around the current slice at full resolution, nearest first (that is where the
//      radiologist scrolls next);
//   2a. asks for the whole series at its lowest resolution (each frame's level-0 prefix, <= 64 px, a few KB) in ONE
//      request, the Series Pixel Data resource (`…/series/{se}/pixeldata?resolution=0`, PS3.18 §10.4.1.1.6): every
//      slice is viewable at low resolution after one round trip and about 1.5 MB for a 300-slice CT, instead of 300
//      requests queued six at a time behind the browser's per-host connection limit. While it runs only the shown
//      slice is fetched beside it, so it has the link. A series over the gateway's frame limit comes in pieces
//      (`&offset=&limit=`, as many frames each as the gateway allows); if the gateway refuses even pieces of 8
//      frames (its byte limit), or fails, the loader falls back to one low-resolution request per slice;
//   3. loads the rest of the series interleaved, as Cornerstone3D's interleaved retrieve stages do: middle and both
//      ends, then every fourth slice at rotating offsets, at full resolution (first as low-resolution prefixes for the
//      whole series, when the batched request was not possible).
// It keeps its own bounded number of requests in flight and re-plans after each one, so scrolling re-prioritises
// immediately (a request queue filled up front cannot be re-ordered).
//
// It implements Cornerstone3D's image-retrieve interface (`loadImages(imageIds, listener)`), so the StackViewport asks
// it for the images it shows (registered through imageRetrieveMetadataProvider with `create`), and it upgrades the
// displayed image when a sharper version arrives. It also keeps Cornerstone's image cache in step (the best version
// of each slice, a pending entry for a slice it is about to fetch), so the CPU render path, which reads the cache
// directly, shows the same progressive images and never fetches a slice a second time.

import { cache, Enums, imageLoader, utilities } from '@cornerstonejs/core';
import { createImage } from '@cornerstonejs/dicom-image-loader';

export const NONE = 0;
export const LOW = 1;
export const FULL = 2;

/** Decomposition levels radloop's encoder uses: the lowest resolution is at most 64 px (shared/htj2k.py levels_for). */
export function levelsFor(rows, columns, maxLowest = 64) {
  const longest = Math.max(rows, columns, 1);
  if (longest <= maxLowest) return 1;
  return Math.max(1, Math.min(32, Math.ceil(Math.log2(longest / maxLowest))));
}

/**
 * The low-resolution prefix to show first: the smallest level whose longest side is at least `minSide` px.
 * Returns {resolution, decodeLevel}: `resolution` is the gateway's `?resolution=k` (0 = lowest), `decodeLevel` is
 * the number of levels the decoder skips.
 */
export function lowResolutionFor(rows, columns, minSide = 128) {
  const levels = levelsFor(rows, columns);
  const longest = Math.max(rows, columns, 1);
  let decodeLevel = 0;
  while (decodeLevel < levels && longest / 2 ** (decodeLevel + 1) >= minSide) decodeLevel += 1;
  return { resolution: levels - decodeLevel, decodeLevel, levels };
}

/** The HTJ2K lossless RPCL transfer syntax radloop stores frames in (parts without a transfer-syntax parameter). */
const HTJ2K_RPCL = '1.2.840.10008.1.2.4.202';
/** Accept header of the batched low-resolution request: the stored codestreams' prefixes, not decoded pixels. */
export const BATCH_ACCEPT = 'multipart/related; type="image/jphc"';
/** Frames per batched request: the gateway's default limit (RADLOOP_WADO_MAX_FRAMES); a lower limit shrinks it. */
export const BATCH_FRAMES = 1000;
/** Below this many frames per request, one request per slice is as good: the batched pass gives up. */
const MIN_BATCH_FRAMES = 8;

function indexOfBytes(buf, needle, from) {
  const first = needle[0];
  for (let i = buf.indexOf(first, from); i !== -1 && i <= buf.length - needle.length; i = buf.indexOf(first, i + 1)) {
    let k = 1;
    while (k < needle.length && buf[i + k] === needle[k]) k += 1;
    if (k === needle.length) return i;
  }
  return -1;
}

/** The byte patterns that frame the parts of a multipart/related body whose Content-Type is `contentType`. */
function multipartMarks(contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType || '');
  if (!m) throw new Error(`not a multipart response: ${contentType}`);
  const enc = new TextEncoder();
  return { delimiter: enc.encode(`--${m[1]}`), between: enc.encode(`\r\n--${m[1]}`), headerEnd: enc.encode('\r\n\r\n') };
}

/**
 * The complete parts at the start of `buf` (RFC 2046 multipart/related): {parts: [{headers: {lower-case name: value},
 * body: Uint8Array view into buf}], used: bytes consumed (the rest starts the next, incomplete part), done: the close
 * delimiter was reached}.
 */
function takeParts(buf, marks) {
  const parts = [];
  let pos = indexOfBytes(buf, marks.delimiter, 0);
  if (pos === -1) return { parts, used: 0, done: false };
  const dec = new TextDecoder('latin1');
  for (;;) {
    const after = pos + marks.delimiter.length;
    if (after + 2 > buf.length) break;
    if (buf[after] === 0x2d && buf[after + 1] === 0x2d) return { parts, used: buf.length, done: true };
    const hdrEnd = indexOfBytes(buf, marks.headerEnd, after);
    if (hdrEnd === -1) break;
    const start = hdrEnd + marks.headerEnd.length;
    const next = indexOfBytes(buf, marks.between, start);
    if (next === -1) break;
    const headers = {};
    for (const line of dec.decode(buf.subarray(after + 2, hdrEnd)).split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    parts.push({ headers, body: buf.subarray(start, next) });
    pos = next + 2;
  }
  return { parts, used: pos, done: false };
}

/**
 * Read a multipart/related response as it arrives, calling `onPart(part)` for each complete part (its body a copy
 * that the caller owns). Resolves to the bytes received; throws when the body ends before its close delimiter.
 */
export async function readMultipart(response, onPart) {
  const marks = multipartMarks(response.headers.get('content-type'));
  const reader = response.body.getReader();
  let pending = new Uint8Array(0);
  let received = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    received += value.length;
    const buf = new Uint8Array(pending.length + value.length);
    buf.set(pending);
    buf.set(value, pending.length);
    const taken = takeParts(buf, marks);
    taken.parts.forEach((part) => onPart({ headers: part.headers, body: part.body.slice() }));
    if (taken.done) {
      await reader.cancel().catch(() => {});
      return received;
    }
    pending = buf.slice(taken.used);
  }
  throw new Error('the multipart body ended before its close delimiter');
}

/** `${sop}/${frame}` of a frame URL or wadors: image id (`…/instances/{sop}/frames/{n}`), or null. */
export function frameKey(url) {
  const m = /\/instances\/([^/?#]+)\/frames\/(\d+)/.exec(url || '');
  return m ? `${decodeURIComponent(m[1])}/${m[2]}` : null;
}

/** Interleaved order over n slices: middle, first, last, then every 4th slice at offsets 3, 1, 2, 0. */
export function interleavedOrder(n) {
  const seen = new Uint8Array(n);
  const out = [];
  const push = (i) => {
    if (i >= 0 && i < n && !seen[i]) {
      seen[i] = 1;
      out.push(i);
    }
  };
  push(Math.floor((n - 1) / 2));
  push(0);
  push(n - 1);
  for (const offset of [3, 1, 2, 0]) for (let i = offset; i < n; i += 4) push(i);
  return out;
}

/**
 * A sub-resolution image enlarged (pixel replication) to the series' full size, so that every version of a slice
 * has the same geometry: the viewport swaps pixels instead of rebuilding its actor, and Cornerstone's CPU render
 * path, which assumes full-size images, draws it correctly.
 */
export function upsampleToFull(image, rows, columns) {
  if (image.rows === rows && image.columns === columns) return image;
  const src = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
  const spp = src.length / (image.rows * image.columns);
  const dst = new src.constructor(rows * columns * spp);
  const xs = new Int32Array(columns);
  for (let x = 0; x < columns; x += 1) xs[x] = Math.min(image.columns - 1, Math.floor((x * image.columns) / columns));
  const rowLength = columns * spp;
  let lastSource = -1;
  for (let y = 0; y < rows; y += 1) {
    const source = Math.min(image.rows - 1, Math.floor((y * image.rows) / rows));
    const dy = y * rowLength;
    if (source === lastSource) {
      dst.copyWithin(dy, dy - rowLength, dy); // the row above came from the same source row: copy it natively
      continue;
    }
    lastSource = source;
    const sy = source * image.columns;
    for (let x = 0; x < columns; x += 1) {
      for (let c = 0; c < spp; c += 1) dst[dy + x * spp + c] = src[(sy + xs[x]) * spp + c];
    }
  }
  const voxelManager = utilities.VoxelManager.createImageVoxelManager({
    scalarData: dst, width: columns, height: rows, numberOfComponents: spp,
  });
  return {
    ...image,
    rows,
    columns,
    width: columns,
    height: rows,
    sizeInBytes: dst.byteLength,
    voxelManager,
    getPixelData: () => voxelManager.getScalarData(),
    imageFrame: image.imageFrame ? { ...image.imageFrame, rows, columns, pixelData: undefined } : image.imageFrame,
  };
}

export class StreamingSeriesLoader {
  /**
   * @param {string[]} imageIds wadors: image ids in display order
   * @param {{rows:number, columns:number, concurrency?:number, prefetchRadius?:number, lowRes?:boolean,
   *          onUpdate?:(loader)=>void}} options
   */
  constructor(imageIds, { rows, columns, concurrency = 16, prefetchRadius = 12, lowRes = true, batchUrl = null,
    batchFrames = BATCH_FRAMES, headers = () => ({}), onUpdate } = {}) {
    this.imageIds = imageIds;
    this.n = imageIds.length;
    this.indexOf = new Map(imageIds.map((id, i) => [id, i]));
    this.indexOfFrame = new Map(imageIds.map((id, i) => [frameKey(id), i]));
    this.quality = new Uint8Array(this.n);
    this.best = new Array(this.n).fill(null);
    this.inflight = new Map(); // `${index}:${level}` -> true
    this.failures = new Uint8Array(this.n);
    this.failed = new Set();
    this.concurrency = concurrency;
    this.prefetchRadius = prefetchRadius;
    this.current = 0;
    this.order = interleavedOrder(this.n);
    this.lowCursor = 0;
    this.fullCursor = 0;
    this.rows = rows;
    this.columns = columns;
    this.low = lowResolutionFor(rows, columns);
    this.lowRes = lowRes && this.low.decodeLevel > 0;
    // The batched pass over the whole series (`batchUrl`: the series' …/pixeldata URL): idle, running, done, failed.
    this.batchUrl = this.lowRes && this.n > 1 ? batchUrl : null;
    this.batch = this.batchUrl ? 'idle' : 'failed';
    this.batchFrames = batchFrames;
    this.headers = headers;
    this.prefixes = new Map(); // index -> the level-0 prefix the batched pass brought (its remainder is fetched later)
    this.onUpdate = onUpdate;
    this.listener = null;
    this.pending = new Map(); // index -> [resolve]
    this.deferred = new Map(); // index -> {resolve, reject}: pending Cornerstone cache entries
    this.onUpgrade = null; // (index) => void: the shown slice got sharper (used by the CPU render path)
    this.stats = {
      startedAt: null,
      firstImageAt: null, // ms since start: first decoded image of any quality
      firstFullAt: null,
      allLowAt: null,
      allFullAt: null, // every slice at full resolution
      loadedLow: 0,
      loadedFull: 0,
      requests: 0,
      errors: 0,
      batch: null, // the batched low-resolution request: {ms, bytes, frames} or {error}
      remainders: 0, // slices completed by a Range request for the rest of their codestream
    };
    this.running = false;
  }

  /** Use an image decoded ahead (prefetch) as slice `index` at full resolution. Call before start(). */
  seed(index, image) {
    if (index < 0 || index >= this.n || this.quality[index] === FULL) return;
    if (this.quality[index] === NONE) this.stats.loadedLow += 1;
    this.quality[index] = FULL;
    this.best[index] = image;
    this.stats.loadedFull += 1;
    this.stats.seeded = (this.stats.seeded || 0) + 1;
    const imageId = this.imageIds[index];
    try {
      if (cache.getImageLoadObject(imageId)) cache.removeImageLoadObject(imageId, { force: true });
      cache.putImageSync(imageId, image);
    } catch {
      // The cache may be full; the loader keeps its own reference either way.
    }
    if (this.stats.loadedFull === this.n) this.stats.allFullAt = 0;
    if (this.stats.loadedLow === this.n) this.stats.allLowAt = 0;
  }

  start(current = 0) {
    this.current = current;
    this.running = true;
    this.stats.startedAt = performance.now();
    this.pump();
  }

  stop() {
    this.running = false;
  }

  setCurrent(index) {
    if (index >= 0 && index < this.n && index !== this.current) {
      this.current = index;
      this.ensureCacheEntry(index);
      this.pump();
    }
  }

  /**
   * Put a pending entry for this slice in Cornerstone's cache (resolved by the first version that arrives), so a
   * viewport that loads through the cache waits for this loader instead of fetching the slice itself.
   */
  ensureCacheEntry(index) {
    const imageId = this.imageIds[index];
    if (this.deferred.has(index) || this.quality[index] !== NONE || cache.getImageLoadObject(imageId)) return;
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.deferred.set(index, { resolve, reject });
    cache.putImageLoadObject(imageId, { promise }).catch(() => {});
  }

  /** Number of slices available at full resolution. */
  get loadedCount() {
    return this.stats.loadedFull;
  }

  // -- Cornerstone3D image-retrieve interface (StackViewport calls this for the image it shows) -----------------

  loadImages(imageIds, listener) {
    this.listener = listener;
    return Promise.all(
      imageIds.map((imageId) => {
        const index = this.indexOf.get(imageId);
        if (index === undefined) return Promise.resolve(imageId);
        this.setCurrent(index);
        const image = this.best[index];
        if (image) {
          listener.successCallback(imageId, image);
          return Promise.resolve(imageId);
        }
        return new Promise((resolve) => {
          const waiting = this.pending.get(index) || [];
          waiting.push(resolve);
          this.pending.set(index, waiting);
          this.pump();
        }).then(() => imageId);
      }),
    );
  }

  // -- scheduling ------------------------------------------------------------------------------------------------

  busy(index, level) {
    return this.inflight.has(`${index}:${level}`);
  }

  needs(index, level) {
    return !this.failed.has(index) && this.quality[index] < level && !this.busy(index, level) &&
      !(level === LOW && this.busy(index, FULL));
  }

  next() {
    const c = this.current;
    // 1. The current slice: low resolution first (instant), then the whole series at the lowest resolution in one
    //    request (2a), then the current slice at full resolution; while the batch runs, only the shown slice beside it.
    if (this.lowRes && this.quality[c] === NONE && this.needs(c, LOW)) return [c, LOW];
    if (this.batch === 'idle') return [-1, LOW];
    if (this.needs(c, FULL)) return [c, FULL];
    if (this.batch === 'running') return null;
    // 2. The prefetch window around it, nearest first, straight at full resolution.
    for (let d = 1; d <= this.prefetchRadius; d += 1) {
      for (const i of [c + d, c - d]) if (i >= 0 && i < this.n && this.needs(i, FULL)) return [i, FULL];
    }
    // 3. The whole series interleaved: a low-resolution pass, then full resolution.
    if (this.lowRes) {
      while (this.lowCursor < this.n) {
        const i = this.order[this.lowCursor];
        if (this.quality[i] === NONE && this.needs(i, LOW)) return [i, LOW];
        if (this.quality[i] !== NONE || this.failed.has(i)) this.lowCursor += 1;
        else break; // in flight at full resolution already: move on once that settles
      }
      for (let k = this.lowCursor; k < this.n; k += 1) {
        const i = this.order[k];
        if (this.quality[i] === NONE && this.needs(i, LOW)) return [i, LOW];
      }
    }
    for (let k = this.fullCursor; k < this.n; k += 1) {
      const i = this.order[k];
      if (this.quality[i] === FULL || this.failed.has(i)) {
        if (k === this.fullCursor) this.fullCursor += 1;
        continue;
      }
      if (this.needs(i, FULL)) return [i, FULL];
    }
    return null;
  }

  pump() {
    if (!this.running) return;
    // Until the first image is on screen only two requests run, so the first one has the link to itself; then the
    // full concurrency keeps a throttled link busy while earlier frames are still being decoded.
    const limit = this.stats.firstImageAt === null ? Math.min(2, this.concurrency) : this.concurrency;
    while (this.inflight.size < limit) {
      const task = this.next();
      if (!task) break;
      if (task[0] === -1) this.launchBatch();
      else this.launch(task[0], task[1]);
    }
  }

  /** The batched low-resolution pass: Series Pixel Data requests (one unless the series is over the gateway's frame
   * limit), their parts decoded a few at a time. */
  launchBatch() {
    this.batch = 'running';
    this.inflight.set('batch', true);
    this.stats.requests += 1;
    const t0 = performance.now();
    const decodeLevel = this.low.levels; // level 0: every decomposition level skipped
    this.fetchBatch(decodeLevel, t0)
      .then((result) => {
        this.batch = 'done';
        this.stats.batch = { ...result, startMs: Math.round(t0 - this.stats.startedAt),
          ms: Math.round(performance.now() - t0) };
      })
      .catch((error) => {
        this.batch = 'failed'; // the per-slice low-resolution pass takes over
        this.stats.batch = { error: String(error?.message || error) };
        console.warn('radloop viewer: the batched low-resolution request failed; one request per slice instead', error);
      })
      .finally(() => {
        this.inflight.delete('batch');
        this.pump();
      });
  }

  /**
   * The series' level-0 prefixes in as few requests as the gateway allows: `?offset=&limit=` pieces of
   * `batchFrames` frames (radloop's parameters on the Series Pixel Data resource). A 413 names the gateway's frame
   * limit (`X-Max-Frames`): the pieces shrink to it (or by half, for its byte limit) and the same piece is asked
   * again. Every answer says how many frames the series has (`X-Series-Frames`); a server without these parameters
   * sends the whole series in the first answer.
   */
  async fetchBatch(decodeLevel, t0) {
    let headersMs = null;
    let requests = 0;
    let offset = 0;
    let total = null;
    let size = this.batchFrames;
    const nextAnswer = async () => {
      // Bounded: each turn either moves `offset` on (by at least one frame, checked below) or halves `size`.
      for (;;) {
        const res = await fetch(`${this.batchUrl}?resolution=0&offset=${offset}&limit=${size}`,
          { headers: { ...this.headers(), Accept: BATCH_ACCEPT } });
        requests += 1;
        if (res.status !== 413) {
          if (!res.ok) throw new Error(`the server answered ${res.status}`);
          return res;
        }
        const most = Number.parseInt(res.headers.get('X-Max-Frames') || '', 10);
        const smaller = most > 0 && most < size ? most : Math.floor(size / 2);
        res.body?.cancel();
        if (smaller < MIN_BATCH_FRAMES) throw new Error(`the server answered 413 for ${size} frames`);
        size = smaller;
      }
    };
    // Parts are decoded as they arrive (in Cornerstone's worker pool, a few at a time, so that the shown slice's own
    // requests are not starved), while the rest of the body is still on the wire.
    const timing = { decode: 0, upsample: 0, accept: 0 };
    const jobs = [];
    let frames = 0;
    let finished = false;
    let wake = [];
    const signal = () => {
      const waiting = wake;
      wake = [];
      waiting.forEach((resolve) => resolve());
    };
    const decodeOne = async (index, part) => {
      const ts = /transfer-syntax=([0-9.]+)/.exec(part.headers['content-type'] || '')?.[1] || HTJ2K_RPCL;
      const imageId = this.imageIds[index];
      try {
        const d0 = performance.now();
        if (ts === HTJ2K_RPCL || ts === '3.2.840.10008.1.2.4.96') this.prefixes.set(index, part.body);
        const image = await createImage(imageId, part.body.slice(), ts, { useRGBA: false, decodeLevel });
        const d1 = performance.now();
        image.imageQualityStatus = Enums.ImageQualityStatus.SUBRESOLUTION;
        const full = upsampleToFull(image, this.rows, this.columns);
        const d2 = performance.now();
        this.accept(index, LOW, full);
        timing.decode += d1 - d0;
        timing.upsample += d2 - d1;
        timing.accept += performance.now() - d2;
      } catch (error) {
        console.warn(`radloop viewer: slice ${index + 1}'s low-resolution prefix did not decode`, error);
      }
    };
    const worker = async () => {
      while (this.running) {
        const job = jobs.shift();
        if (job) {
          if (this.quality[job[0]] === NONE) await decodeOne(job[0], job[1]);
        } else if (finished) {
          return;
        } else {
          await new Promise((resolve) => wake.push(resolve));
        }
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    let bytes = 0;
    try {
      while (total === null || offset < total) {
        const res = await nextAnswer();
        if (headersMs === null) headersMs = Math.round(performance.now() - t0);
        const count = Number.parseInt(res.headers.get('X-Series-Frames') || '', 10);
        let got = 0;
        bytes += await readMultipart(res, (part) => {
          frames += 1;
          got += 1;
          const index = this.indexOfFrame.get(frameKey(part.headers['content-location']));
          if (index !== undefined && this.quality[index] === NONE) {
            jobs.push([index, part]);
            signal();
          }
        });
        if (!(count > 0) || got === 0) break; // a server without pieces sent everything (or nothing more came)
        total = count;
        offset += got;
      }
    } finally {
      finished = true;
      signal();
    }
    const bodyMs = Math.round(performance.now() - t0);
    await Promise.all(workers);
    const ms = (v) => Math.round(v);
    return { bytes, frames, requests, piece: size, headersMs, bodyMs, decodeMs: ms(timing.decode),
      upsampleMs: ms(timing.upsample), acceptMs: ms(timing.accept) };
  }

  retrieveOptions(level) {
    if (level === LOW) {
      return {
        urlArguments: `resolution=${this.low.resolution}`,
        decodeLevel: this.low.decodeLevel,
        imageQualityStatus: Enums.ImageQualityStatus.SUBRESOLUTION,
      };
    }
    return { imageQualityStatus: Enums.ImageQualityStatus.FULL_RESOLUTION };
  }

  launch(index, level) {
    this.ensureCacheEntry(index);
    const key = `${index}:${level}`;
    this.inflight.set(key, true);
    this.stats.requests += 1;
    const imageId = this.imageIds[index];
    const options = {
      useRGBA: false,
      ignoreCache: true,
      priority: level === FULL ? 0 : -1,
      requestType: index === this.current ? Enums.RequestType.Interaction : Enums.RequestType.Prefetch,
      retrieveOptions: this.retrieveOptions(level),
    };
    const prefix = level === FULL ? this.prefixes.get(index) : undefined;
    const loading = prefix ? this.loadRemainder(index, prefix) : imageLoader.loadImage(imageId, options);
    loading
      .then((image) => this.accept(index, level, level === LOW ? upsampleToFull(image, this.rows, this.columns) : image))
      .catch((error) => this.reject(index, level, error))
      .finally(() => {
        this.inflight.delete(key);
        this.pump();
      });
  }

  /**
   * Slice `index` at full resolution from the bytes after the prefix the batched pass brought: an HTTP Range request
   * for the rest of the stored codestream (the prefix's last two bytes are the EOC marker the gateway closed it with),
   * joined to the prefix and decoded. Nothing is fetched twice; a server that ignores Range sends the whole frame.
   */
  async loadRemainder(index, prefix) {
    const imageId = this.imageIds[index];
    const keep = prefix.length - 2;
    const res = await fetch(imageId.slice('wadors:'.length), {
      headers: { ...this.headers(), Accept: 'image/jphc', Range: `bytes=${keep}-` },
    });
    if (res.status !== 206 && res.status !== 200) throw new Error(`the server answered ${res.status}`);
    const rest = new Uint8Array(await res.arrayBuffer());
    let whole = rest;
    if (res.status === 206) {
      if (!(res.headers.get('content-range') || '').startsWith(`bytes ${keep}-`)) throw new Error('unexpected range');
      whole = new Uint8Array(keep + rest.length);
      whole.set(prefix.subarray(0, keep));
      whole.set(rest, keep);
    }
    const image = await createImage(imageId, whole, HTJ2K_RPCL, { useRGBA: false, decodeLevel: 0 });
    image.imageQualityStatus = Enums.ImageQualityStatus.FULL_RESOLUTION;
    this.prefixes.delete(index);
    this.stats.remainders += 1;
    return image;
  }

  accept(index, level, image) {
    const now = performance.now() - this.stats.startedAt;
    if (this.stats.firstImageAt === null) this.stats.firstImageAt = now;
    if (level <= this.quality[index]) return;
    const before = this.quality[index];
    this.quality[index] = level;
    this.best[index] = image;
    const imageId = this.imageIds[index];
    const entry = this.deferred.get(index);
    if (entry) {
      // First version of this slice: it becomes the cache entry that viewports (and the scroll tool) see.
      this.deferred.delete(index);
      entry.resolve(image);
    } else {
      // A sharper version replaces the cached one.
      try {
        if (cache.getImageLoadObject(imageId)) cache.removeImageLoadObject(imageId, { force: true });
        cache.putImageSync(imageId, image);
      } catch {
        // The cache may be full; the loader keeps its own reference either way.
      }
    }
    if (level === FULL) {
      if (this.stats.firstFullAt === null) this.stats.firstFullAt = now;
      this.stats.loadedFull += 1;
      if (before === NONE) this.stats.loadedLow += 1;
      if (this.stats.loadedFull === this.n) this.stats.allFullAt = now;
    } else {
      this.stats.loadedLow += 1;
    }
    if (this.stats.allLowAt === null && this.stats.loadedLow === this.n) this.stats.allLowAt = now;
    const waiting = this.pending.get(index);
    if (waiting) {
      this.pending.delete(index);
      waiting.forEach((resolve) => resolve());
    }
    // The viewport ignores images that are not its current one, so an upgrade of the shown slice sharpens it.
    if (this.listener) this.listener.successCallback(imageId, image);
    if (before !== NONE && index === this.current) this.onUpgrade?.(index);
    this.onUpdate?.(this, index, level);
  }

  reject(index, level, error) {
    this.stats.errors += 1;
    this.failures[index] += 1;
    if (this.failures[index] >= 3) {
      this.failed.add(index);
      const entry = this.deferred.get(index);
      if (entry) {
        this.deferred.delete(index);
        entry.reject(error);
      }
      const waiting = this.pending.get(index);
      if (waiting) {
        this.pending.delete(index);
        waiting.forEach((resolve) => resolve());
      }
      this.listener?.errorCallback?.(this.imageIds[index], true, error);
    }
    console.warn(`radloop viewer: slice ${index + 1} at ${level === LOW ? 'low' : 'full'} resolution failed`, error);
    this.onUpdate?.(this, index, level);
  }
}
