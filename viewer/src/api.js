// Talks to the same origin's DICOMweb (/dicomweb) and verification (/verification) APIs with the viewer's token,
// sent as an Authorization bearer header on every request.
//
// The token is never read from the query string: a URL's query reaches the server, its access logs and every proxy
// on the way, and stays in the browser history. It comes from the tab's session storage, where the workstation's
// sign-in (/viewer/worklist/#/signin, shared key) puts it, or from the URL fragment (`#token=…`), which browsers
// never send to a server; the fragment is removed from the address bar at once. A `?token=` of an old link is
// ignored and removed from the address bar too.

const TOKEN_KEY = 'radloop.token'; // shared with the workstation (src/ws/auth.js)
const RETURN_KEY = 'radloop.return'; // where the workstation's sign-in sends the tab back to (src/ws/app.js)
const URL_TOKEN_PARAMS = ['token', 'access_token'];

/** The sign-in page of the platform (the workstation's: development sign-in locally, OpenID Connect elsewhere). */
export const SIGN_IN_PATH = '/viewer/worklist/#/signin';

/**
 * Take a token from the URL fragment (`#token=…`) into this tab's session storage and strip it from the address;
 * drop any `?token=`/`?access_token=` unused. Returns {token, refusedQueryToken}.
 */
export function initToken(location = window.location) {
  const params = new URLSearchParams(location.search);
  const fromQuery = [...params.keys()].filter((k) => URL_TOKEN_PARAMS.includes(k.toLowerCase()));
  fromQuery.forEach((k) => params.delete(k));
  const frag = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromFragment = frag.get('token');
  if (fromFragment) {
    sessionStorage.setItem(TOKEN_KEY, fromFragment);
    frag.delete('token');
  }
  if (fromQuery.length || fromFragment) {
    const rest = params.toString();
    const hash = frag.toString();
    window.history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}${hash ? `#${hash}` : ''}`);
  }
  return { token: sessionStorage.getItem(TOKEN_KEY) || '', refusedQueryToken: fromQuery.length > 0 };
}

/** Remember this page for the workstation's sign-in to come back to (same-origin viewer paths only). */
export function rememberReturn(location = window.location) {
  sessionStorage.setItem(RETURN_KEY, `${location.pathname}${location.search}`);
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
