// JSON calls to the same origin's APIs with the bearer token in the Authorization header (never in the URL).

import { token } from './auth.js';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** Call an API; resolves to the parsed JSON body (null for 204), throws ApiError with the server's reason. */
export async function api(method, path, { body, headers = {}, keepalive = false } = {}) {
  const h = { Accept: 'application/json', ...headers };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers: h, keepalive,
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const detail = data && (typeof data.detail === 'string' ? data.detail : JSON.stringify(data.detail));
    throw new ApiError(res.status, detail || `The server answered ${res.status}.`, data);
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body, opts = {}) => api('POST', path, { body, ...opts });
export const del = (path, opts = {}) => api('DELETE', path, opts);
