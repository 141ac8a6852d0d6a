// Sign-in for the workstation. Production: OpenID Connect Authorization Code with PKCE (a public client, no secret)
// against the issuer the platform announces at /viewer/auth/config. Local development: a sign-in form that asks the
// platform (POST /viewer/auth/dev-token, which exists only when environment=local) for a token of a chosen role.
//
// The token lives in memory and in sessionStorage (this tab only, gone when it closes): never in a URL or a query
// string, so it is not logged, bookmarked, or sent as a referrer. API calls carry it as an Authorization header.

const TOKEN_KEY = 'radloop.token'; // shared with the study viewer (src/api.js), so its links work in the same tab
const OIDC_KEY = 'radloop.oidc';
const ROLE_ORDER = ['pacs', 'viewer', 'radiologist', 'ml', 'admin'];

let memoryToken = '';

/** base64url without padding. */
export function b64url(bytes) {
  let s = '';
  new Uint8Array(bytes).forEach((b) => {
    s += String.fromCharCode(b);
  });
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** RFC 7636 S256 code challenge of a verifier. */
export async function pkceChallenge(verifier) {
  return b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
}

function randomString(n = 32) {
  return b64url(crypto.getRandomValues(new Uint8Array(n)));
}

/** The (unverified) claims of a JWT, for display only: the APIs verify every token. */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch {
    return null;
  }
}

export function token() {
  return memoryToken || sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
  memoryToken = t;
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The signed-in user from the token: {name, roles, role, exp} or null (no token, or expired). */
export function currentUser() {
  const t = token();
  const c = t && claimsOf(t);
  if (!c) return null;
  if (c.exp && c.exp * 1000 < Date.now()) return null;
  let roles = c.roles || c['cognito:groups'] || [];
  if (typeof roles === 'string') roles = roles.split(' ');
  roles = roles.filter((r) => ROLE_ORDER.includes(r));
  const role = [...ROLE_ORDER].reverse().find((r) => roles.includes(r)) || 'none';
  return { name: c.name || c.preferred_username || c.email || c.sub, subject: c.sub, roles, role, exp: c.exp };
}

export function can(user, permission) {
  const perms = { viewer: ['read'], radiologist: ['read', 'verify'], ml: ['read', 'approve'],
    admin: ['read', 'verify', 'approve', 'admin'], pacs: ['store'] };
  return !!user && user.roles.some((r) => (perms[r] || []).includes(permission));
}

export async function authConfig() {
  const res = await fetch('/viewer/auth/config', { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`The sign-in configuration is unavailable (${res.status}).`);
  return res.json();
}

/** Local development sign-in: the platform mints a token for the role (404 outside environment=local). */
export async function devSignIn(role, name) {
  const res = await fetch('/viewer/auth/dev-token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ role, name }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(typeof body.detail === 'string' ? body.detail : `Sign-in failed (${res.status}).`);
  setToken(body.access_token);
  return currentUser();
}

function redirectUri() {
  return `${window.location.origin}/viewer/worklist/`;
}

async function discovery(issuer) {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`, { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`The identity provider's configuration is unavailable (${res.status}).`);
  return res.json();
}

/** Production sign-in, step 1: redirect to the issuer's authorization endpoint with a PKCE S256 challenge. */
export async function startOidc(oidc) {
  const meta = await discovery(oidc.issuer);
  const verifier = randomString(48);
  const state = randomString(16);
  const nonce = randomString(16);
  sessionStorage.setItem(OIDC_KEY, JSON.stringify({ verifier, state, nonce, tokenEndpoint: meta.token_endpoint,
    clientId: oidc.client_id, back: window.location.hash }));
  const url = new URL(meta.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code', client_id: oidc.client_id, redirect_uri: redirectUri(), scope: oidc.scope,
    state, nonce, code_challenge: await pkceChallenge(verifier), code_challenge_method: 'S256',
  }).toString();
  window.location.assign(url.toString());
}

/**
 * Production sign-in, step 2 (on return): exchange ?code= for tokens with the PKCE verifier. The one-time code and
 * state leave the address bar at once; the token itself never enters it. Returns true when a code was handled.
 */
export async function finishOidc() {
  const params = new URLSearchParams(window.location.search);
  if (!params.has('code') && !params.has('error')) return false;
  const saved = JSON.parse(sessionStorage.getItem(OIDC_KEY) || 'null');
  sessionStorage.removeItem(OIDC_KEY);
  window.history.replaceState(null, '', `${window.location.pathname}${saved?.back || '#/'}`);
  if (params.has('error')) throw new Error(`Sign-in was refused: ${params.get('error_description') || params.get('error')}.`);
  if (!saved || params.get('state') !== saved.state) throw new Error('Sign-in failed: the state does not match.');
  const res = await fetch(saved.tokenEndpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: params.get('code'),
      redirect_uri: redirectUri(), client_id: saved.clientId, code_verifier: saved.verifier }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.access_token) throw new Error(`Sign-in failed at the token endpoint (${res.status}).`);
  const idClaims = body.id_token ? claimsOf(body.id_token) : null;
  if (idClaims && idClaims.nonce !== saved.nonce) throw new Error('Sign-in failed: the nonce does not match.');
  setToken(body.access_token);
  return true;
}

export function signOut() {
  setToken('');
  sessionStorage.removeItem(OIDC_KEY);
}
