// AI triage panel: when the verification service has a score for the shown image (radiographs), show the
// probability, priority and model version, and offer the Grad-CAM heatmap as an overlay on the image.

import { getBlobUrl, getJson } from './api.js';

function pick(obj, ...paths) {
  for (const path of paths) {
    const v = path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
    if (v !== undefined && v !== null) return v;
  }
  return undefined;
}

/**
 * The AI fields of a verification case view (`GET /verification/cases/{sop}`: `ai.probability`, `ai.priority`,
 * `ai.threshold`, `ai.model_version`, `ai.heatmap_url`); null while unscored (`ai.status` pending or
 * not_applicable, probability null).
 */
export function scoreFromCase(c) {
  if (!c) return null;
  const probability = pick(c, 'ai.probability', 'score.probability', 'ai_score.probability', 'probability',
    'ai_probability', 'score');
  if (typeof probability !== 'number') return null;
  return {
    probability,
    priority: pick(c, 'ai.priority', 'score.priority', 'priority'),
    threshold: pick(c, 'ai.threshold', 'score.threshold', 'threshold'),
    modelVersion: pick(c, 'ai.model_version', 'score.model_version', 'model_version'),
    heatmapUrl: pick(c, 'ai.heatmap_url', 'heatmap_url', 'score.heatmap_url'),
  };
}

/**
 * Where the overlay image comes from. A same-origin URL is fetched with the viewer's token; any other (the
 * verification service hands out a short-lived presigned storage URL) is used as it is: it carries its own
 * authorisation, and an Authorization header would be refused there.
 */
export async function heatmapSource(url) {
  const target = new URL(url, window.location.href);
  return target.origin === window.location.origin ? getBlobUrl(target.href) : target.href;
}

export class TriagePanel {
  constructor({ panel, scoreEl, priorityEl, modelEl, toggleLabel, toggle, overlay, viewer }) {
    Object.assign(this, { panel, scoreEl, priorityEl, modelEl, toggleLabel, toggle, overlay, viewer });
    this.score = null;
    toggle.addEventListener('change', () => this.setHeatmap(toggle.checked));
  }

  /** Ask verification for the case of this SOP instance; hide the panel when there is none (404) or no score. */
  async load(sopUid) {
    let c = null;
    try {
      c = await getJson(`/verification/cases/${encodeURIComponent(sopUid)}`, { accept: 'application/json',
        allow404: true });
    } catch (e) {
      console.info('radloop viewer: no triage information', e.message);
    }
    this.score = scoreFromCase(c);
    if (!this.score) {
      this.panel.hidden = true;
      return null;
    }
    const pct = Math.round(this.score.probability * 1000) / 10;
    this.scoreEl.textContent = `Pneumonia likelihood ${pct}%`;
    this.priorityEl.textContent = this.score.priority ? `(${this.score.priority})` : '';
    this.priorityEl.className = this.score.priority === 'urgent' ? 'urgent' : '';
    this.modelEl.textContent = this.score.modelVersion !== undefined ? `model v${this.score.modelVersion}` : '';
    this.toggleLabel.hidden = !this.score.heatmapUrl;
    this.panel.hidden = false;
    return this.score;
  }

  async setHeatmap(on) {
    if (!on || !this.score?.heatmapUrl) {
      this.overlay.hidden = true;
      return;
    }
    if (!this.overlay.src) this.overlay.src = await heatmapSource(this.score.heatmapUrl);
    this.placeOverlay();
    this.overlay.hidden = false;
  }

  /** Keep the heatmap over the image as it is zoomed and panned. */
  placeOverlay() {
    const r = this.viewer.imageCanvasRect();
    Object.assign(this.overlay.style, {
      left: `${r.x / r.dpr}px`, top: `${r.y / r.dpr}px`, width: `${r.width / r.dpr}px`, height: `${r.height / r.dpr}px`,
    });
  }
}
