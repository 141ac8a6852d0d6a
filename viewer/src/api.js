// Talks to the same origin's DICOMweb (/dicomweb) and verification (/verification) APIs with the viewer's token.
// The token comes from ?token= (then removed from the address bar so it is not bookmarked or shared) or from the
// session storage of an earlier visit; it is sent as an Authorization bearer header on every request.

const TOKEN_KEY = 'radloop.token';

/** Read ?token=, keep it for this tab only, and strip it from the visible URL. */
export function initToken(location = window.location) {
  const params = new URLSearchParams(location.search);
  const fromQuery = params.get('token');
  if (fromQuery) {
    sessionStorage.setItem(TOKEN_KEY, fromQuery);
    params.delete('token');
    const rest = params.toString();
    window.history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GET a JSON resource (DICOM JSON or plain JSON); throws ApiError with a readable message on failure. */
export async function getJson(path, { accept = 'application/dicom+json, application/json', allow404 = false } = {}) {
  const res = await fetch(path, { headers: { Accept: accept, ...authHeaders() } });
  if (res.status === 204) return [];
  if (allow404 && res.status === 404) return null;
  if (!res.ok) {
    let reason = '';
    try {
      const body = await res.json();
      reason = body.detail || body.message || '';
      if (typeof reason !== 'string') reason = JSON.stringify(reason);
    } catch {
      reason = res.statusText;
    }
    const what = res.status === 401 ? 'Sign-in is needed (no valid viewer token)'
      : res.status === 403 ? 'This token may not read images' : `The server answered ${res.status}`;
    throw new ApiError(res.status, `${what}${reason ? `: ${reason}` : ''}.`);
  }
  return res.json();
}

/** GET a binary resource as an object URL (used for heatmap overlays, which need the auth header). */
export async function getBlobUrl(path) {
  const res = await fetch(path, { headers: authHeaders() });
  if (!res.ok) throw new ApiError(res.status, `The server answered ${res.status} for the heatmap.`);
  return URL.createObjectURL(await res.blob());
}

/** First value of a DICOM JSON attribute (tag as 8 hex digits), or undefined. */
export function tagValue(item, tag) {
  const el = item?.[tag];
  const v = el?.Value?.[0];
  if (v && typeof v === 'object' && 'Alphabetic' in v) return v.Alphabetic;
  return v;
}

export function tagValues(item, tag) {
  return item?.[tag]?.Value || [];
}
