// The radiologist's workstation (/viewer/worklist/): sign-in, the AI-ordered worklist, reading a case in the
// Cornerstone3D viewer with the Grad-CAM overlay, the read form (submit and next, with the next case prefetched),
// skip and release, claim leases, blinded double reading and adjudication, amending one's own final reads, and the
// live model performance for the ml and admin roles. Routes are in the address's hash (#/, #/case/<id>, #/mine,
// #/performance, #/signin): case ids are SOP Instance UIDs, never patient data, and the token is never in the URL.

import '../style.css';
import './ws.css';
import { tagValue } from '../api.js';
import { authConfig, can, currentUser, devSignIn, finishOidc, pkceChallenge, signOut, startOidc } from './auth.js';
import { ApiError, api, del, get, post } from './http.js';

// Cornerstone3D (about 3.6 MB of script) loads only when a case opens, and in the background once the worklist is on
// screen, so the worklist paints quickly on a phone over 4G.
let viewerModule = null;
function loadViewer() {
  viewerModule = viewerModule || import('../viewer.js');
  return viewerModule;
}

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 25;
const params = new URLSearchParams(window.location.search);
const POLL_MS = Math.max(500, Number(params.get('poll')) || 5000);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => {
    if (v === undefined || v === null || v === false) return;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  });
  children.flat().forEach((c) => c !== null && c !== undefined && e.append(c));
  return e;
}

let statusTimer = null;
function say(text, { error = false } = {}) {
  const s = $('status');
  s.textContent = text;
  s.className = `toast${error ? ' error' : ''}${text ? ' shown' : ''}`;
  clearTimeout(statusTimer);
  if (text && !error) statusTimer = setTimeout(() => say(''), 6000);
}

const pct = (p) => (p === null || p === undefined ? '–' : `${(Math.round(p * 1000) / 10).toFixed(1)}%`);
const num = (x, d = 2) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));

function waiting(iso) {
  if (!iso) return '';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function clock(epochS) {
  return new Date(epochS * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// -- state and test hooks ------------------------------------------------------------------------------------------
// Drafts of reads survive a reload and a sign-in after an expired token (a 401 sends the tab to sign in; the draft
// was lost then: found by a review, session 22). sessionStorage is this tab's only and goes when it closes, as the
// token does; an explicit Sign out clears the drafts.
const DRAFTS_KEY = 'radloop.drafts';
const MAX_DRAFTS = 20;

function storeDrafts(drafts) {
  try {
    const entries = [...drafts.entries()].slice(-MAX_DRAFTS);
    if (entries.length) sessionStorage.setItem(DRAFTS_KEY, JSON.stringify(entries));
    else sessionStorage.removeItem(DRAFTS_KEY);
  } catch {
    // storage full or disabled: the drafts stay in this page's memory
  }
}

/** Case id -> draft; every change is written through to sessionStorage. */
class Drafts extends Map {
  set(k, v) {
    super.set(k, v);
    storeDrafts(this);
    return this;
  }

  delete(k) {
    const had = super.delete(k);
    storeDrafts(this);
    return had;
  }

  clear() {
    super.clear();
    storeDrafts(this);
  }
}

function loadDrafts() {
  try {
    return new Drafts(JSON.parse(sessionStorage.getItem(DRAFTS_KEY) || '[]'));
  } catch {
    return new Drafts();
  }
}

const S = {
  user: null,
  view: null,
  list: { items: [], cursors: [null], page: 0, next: null, selected: null, seenUrgent: new Set(), timer: null, seq: 0 },
  studyDates: new Map(), // study UID -> YYYY-MM-DD (QIDO), filled after the rows are drawn
  current: null, // the open case: {id, entry, claimed, submitted, viewer, renew, view}
  prefetch: null, // {id, promise}
  skipped: new Set(),
  readByMe: new Set(),
  drafts: loadDrafts(), // case id -> the read form as the reader left it ({label, confidence, comment, key, sent}): a read
  // whose save failed is put back from here, with the same Idempotency-Key while it is unchanged
  readError: null, // {caseId, text}: the read that could not be saved, shown until it is saved or dismissed
  context: '', // the worklist status filter a case was opened from: where "next" comes from
};

const hooks = {
  state: 'loading',
  timings: [], // {caseId, submitToFirstImageMs, prefetched}
  submitted: [], // {caseId, response | error, status}
  get view() {
    return S.view;
  },
  get caseId() {
    return S.current?.id ?? null;
  },
  get claim() {
    return S.current?.claim ?? null;
  },
  get selected() {
    return S.list.selected;
  },
  get prefetchedId() {
    return S.prefetch?.id ?? null;
  },
  get readError() {
    return S.readError;
  },
  get overlay() {
    const img = $('heatmap');
    return { visible: !img.hidden && !!img.src, opacity: Number(img.style.opacity || 0), toggle: $('overlay-toggle').checked };
  },
  viewer() {
    const v = S.current?.viewer;
    if (!v?.viewport) return null;
    const { parallelScale } = v.viewport.getCamera();
    return { index: v.currentIndex, total: v.imageIds.length, parallelScale, pinchMoves: v.pinchMoves || 0, firstRenderAt: v.firstRenderAt,
      rendered: v.renderedCount, seeded: v.loader?.stats.seeded || 0, imageShown: S.current.firstImageAt !== undefined };
  },
  pkceChallenge,
  refreshNow: () => loadWorklist({ quiet: true }),
};
window.radloopWorkstation = hooks;

// -- routing -------------------------------------------------------------------------------------------------------
function showView(name) {
  S.view = name;
  document.querySelectorAll('.page').forEach((p) => {
    p.hidden = p.id !== `view-${name}`;
  });
  document.querySelectorAll('[data-nav]').forEach((a) => {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  });
  document.body.dataset.view = name;
  hooks.state = name;
}

async function route() {
  const hash = window.location.hash || '#/';
  S.user = currentUser();
  if (!S.user) {
    await leaveCase();
    renderHeader();
    await showSignIn();
    return;
  }
  renderHeader();
  const m = hash.match(/^#\/case\/([0-9.]{1,64})$/);
  if (m) {
    if (S.current?.id !== m[1]) await openCase(m[1]);
    return;
  }
  await leaveCase();
  if (hash === '#/mine') await showMine();
  else if (hash === '#/performance') await showPerformance();
  else await showWorklist();
}

function renderHeader() {
  const u = S.user;
  $('nav').hidden = !u;
  $('signout').hidden = !u;
  $('who').hidden = !u;
  $('who').textContent = u ? `${u.name} · ${u.role}` : '';
  $('nav-performance').hidden = !(u && (u.roles.includes('ml') || u.roles.includes('admin')));
}

// -- sign-in -------------------------------------------------------------------------------------------------------
async function showSignIn() {
  showView('signin');
  stopPolling();
  let cfg;
  try {
    cfg = await authConfig();
  } catch (e) {
    say(e.message, { error: true });
    return;
  }
  $('signin-oidc-wrap').hidden = !cfg.oidc;
  $('signin-dev').hidden = !cfg.dev_signin;
  $('signin-none').hidden = !!(cfg.oidc || cfg.dev_signin);
  const sel = $('signin-role');
  if (cfg.dev_signin && !sel.options.length) {
    cfg.roles.filter((r) => r !== 'pacs').forEach((r) => sel.append(el('option', { value: r, text: r })));
    sel.value = 'radiologist';
  }
  $('signin-oidc').onclick = () => startOidc(cfg.oidc).catch((e) => say(e.message, { error: true }));
  hooks.state = 'signin';
}

/**
 * The study viewer page that sent the tab here to sign in (api.js rememberReturn), taken once. Only a path of the
 * study viewer on this origin is followed (no open redirect), never the workstation itself.
 */
function takeReturn() {
  const back = sessionStorage.getItem('radloop.return');
  sessionStorage.removeItem('radloop.return');
  return back && /^\/viewer\/(\?[^#]*)?$/.test(back) ? back : null;
}

$('signin-dev').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    await devSignIn($('signin-role').value, $('signin-name').value.trim());
    const back = takeReturn();
    if (back) {
      window.location.assign(back);
      return;
    }
    if (window.location.hash.startsWith('#/signin')) window.location.hash = '#/';
    await route();
  } catch (err) {
    say(err.message, { error: true });
  }
});

$('signout').addEventListener('click', async () => {
  await leaveCase();
  S.drafts.clear(); // the reader chose to leave: nothing of theirs stays in this tab
  signOut();
  stopPolling();
  S.user = null;
  window.location.hash = '#/';
  await route();
});

/** A 401 from any API: the token expired or was revoked; back to sign-in. */
function onApiError(e) {
  if (e instanceof ApiError && e.status === 401) {
    signOut();
    say('Your session ended. Please sign in again.', { error: true });
    route();
    return true;
  }
  return false;
}

// -- worklist ------------------------------------------------------------------------------------------------------
function filters() {
  return { priority: $('f-priority').value, modality: $('f-modality').value, status: $('f-status').value };
}

function statusText(it) {
  if (it.status === 'adjudication') return 'Adjudication';
  if (it.lease_owner) {
    if (it.lease_owner === S.user?.subject) return 'Claimed by you';
    // Double reading is blinded: who holds the case (maybe its first reader) is not shown to the others.
    return it.reads_required > 1 ? 'Claimed by another reader' : `Claimed by ${it.lease_owner}`;
  }
  const reads = it.reads_required > 1 ? ` · ${it.reads_done}/${it.reads_required} reads` : '';
  // Double reading: a case the reader already read stays open for the second reader; say so (it read as unread).
  if (it.read_by_me) return `Read by you · waiting for a 2nd reader${reads}`;
  return `Unread${reads}`;
}

function rowFor(it) {
  const ai = it.ai || {};
  const urgent = ai.priority === 'urgent';
  const open = el('button', { type: 'button', class: 'open', 'data-open': it.case_id,
    'aria-label': `Open ${urgent ? 'urgent' : 'routine'} ${it.modality || ''} case, AI ${pct(ai.probability)}` },
  'Open');
  const aiText = ai.probability === null || ai.probability === undefined
    ? (ai.status === 'not_applicable' ? 'n/a' : 'pending')
    : pct(ai.probability);
  const date = S.studyDates.get(it.study_uid) || '';
  const tr = el('tr', { 'data-case': it.case_id, class: urgent ? 'is-urgent' : '' },
    el('td', {}, el('span', { class: `badge ${urgent ? 'urgent' : 'routine'}`, text: urgent ? 'Urgent' : 'Routine' })),
    el('td', { class: 'ai' }, el('span', { class: 'prob', text: aiText }),
      ai.model_version ? el('span', { class: 'model', text: ` model v${ai.model_version}` }) : null),
    el('td', { text: it.modality || '' }),
    el('td', { class: 'study-date', 'data-study': it.study_uid, text: date }),
    el('td', { text: waiting(it.arrived_at) }),
    el('td', { class: 'claim', text: statusText(it) }),
    el('td', {}, open));
  if (it.case_id === S.list.selected) {
    tr.classList.add('selected');
    tr.setAttribute('aria-current', 'true');
  }
  return tr;
}

function renderRows() {
  const body = $('worklist-table').querySelector('tbody');
  const scroller = $('worklist-scroll');
  const top = scroller.scrollTop;
  const winTop = window.scrollY;
  const focusedCase = document.activeElement?.closest?.('tr[data-case]')?.dataset.case;
  body.replaceChildren(...S.list.items.map(rowFor));
  $('worklist-empty').hidden = S.list.items.length > 0;
  // A refresh never moves what the radiologist is looking at: same scroll position, same selection and focus.
  scroller.scrollTop = top;
  if (window.scrollY !== winTop) window.scrollTo(0, winTop);
  if (focusedCase) body.querySelector(`tr[data-case="${focusedCase}"] button`)?.focus({ preventScroll: true });
  $('page-no').textContent = `Page ${S.list.page + 1}`;
  $('page-prev').disabled = S.list.page === 0;
  $('page-next').disabled = !S.list.next;
  fillStudyDates();
}

/** Study dates come from QIDO-RS (the worklist entry has none); one query per study, cached. */
async function fillStudyDates() {
  const missing = [...new Set(S.list.items.map((i) => i.study_uid))].filter((u) => !S.studyDates.has(u));
  await Promise.all(missing.slice(0, 50).map(async (uid) => {
    S.studyDates.set(uid, '');
    try {
      const rows = await get(`/dicomweb/studies?StudyInstanceUID=${encodeURIComponent(uid)}&includefield=00080020`);
      const da = tagValue(rows?.[0], '00080020') || '';
      S.studyDates.set(uid, da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da);
    } catch {
      // no date shown
    }
  }));
  document.querySelectorAll('td.study-date').forEach((td) => {
    td.textContent = S.studyDates.get(td.dataset.study) || '';
  });
}

async function fetchWorklist({ status = '', modality = '', priority = '', cursor = null, limit = PAGE_SIZE } = {}) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (status) q.set('status', status);
  if (modality) q.set('modality', modality);
  // Filtered on the server: a filter applied to one page in the browser showed "No cases match." while matching
  // cases waited on later pages (found by a review, session 22).
  if (priority) q.set('priority', priority);
  if (cursor) q.set('cursor', cursor);
  return get(`/verification/worklist?${q}`);
}

async function loadWorklist({ quiet = false } = {}) {
  const f = filters();
  // Only the newest request's answer is shown: an older one (another filter) arriving late overwrote it (found by a
  // review, session 22).
  const seq = (S.list.seq = (S.list.seq || 0) + 1);
  let data = null;
  const early = window.radloopEarlyWorklist; // index.html's head asked for the default first page already
  window.radloopEarlyWorklist = null;
  if (early && !f.status && !f.modality && !f.priority && S.list.page === 0 && PAGE_SIZE === 25) {
    data = await early.then((res) => (res.ok ? res.json() : null)).catch(() => null);
  }
  try {
    if (!data) {
      data = await fetchWorklist({ status: f.status, modality: f.modality, priority: f.priority,
        cursor: S.list.cursors[S.list.page] });
    }
  } catch (e) {
    if (seq === S.list.seq && !onApiError(e)) say(`The worklist could not be loaded: ${e.message}`, { error: true });
    return;
  }
  if (S.view !== 'worklist' || seq !== S.list.seq) return;
  const items = data.items;
  const urgentNew = items.filter((i) => i.ai?.priority === 'urgent' && !S.list.seenUrgent.has(i.case_id));
  if (quiet && urgentNew.length) say(`${urgentNew.length} new urgent case${urgentNew.length > 1 ? 's' : ''}.`);
  urgentNew.forEach((i) => S.list.seenUrgent.add(i.case_id));
  S.list.items = items;
  S.list.next = data.next_cursor;
  if (!items.some((i) => i.case_id === S.list.selected)) S.list.selected = items[0]?.case_id ?? null;
  renderRows();
  hooks.listedAt = performance.now();
  hooks.listCount = items.length;
  if (hooks.firstListPaintAt === undefined) {
    // First paint of the rows: the frame after they were put in the page.
    hooks.firstListPaintAt = null;
    requestAnimationFrame(() => setTimeout(() => {
      hooks.firstListPaintAt = performance.now();
      setTimeout(loadViewer, 0);
    }, 0));
  }
}

function startPolling() {
  stopPolling();
  S.list.timer = setInterval(() => {
    if (S.view === 'worklist' && !document.hidden) loadWorklist({ quiet: true });
  }, POLL_MS);
}

function stopPolling() {
  clearInterval(S.list.timer);
  S.list.timer = null;
}

async function showWorklist() {
  showView('worklist');
  await loadWorklist();
  // The user may have gone elsewhere while the list loaded (signed out, opened a case): a late finish must neither
  // restart polling nor claim the page's state.
  if (S.view !== 'worklist') return;
  startPolling();
  hooks.state = 'worklist';
}

function select(caseId, { focus = true } = {}) {
  S.list.selected = caseId;
  document.querySelectorAll('#worklist-table tr[data-case]').forEach((tr) => {
    const on = tr.dataset.case === caseId;
    tr.classList.toggle('selected', on);
    if (on) tr.setAttribute('aria-current', 'true');
    else tr.removeAttribute('aria-current');
    if (on && focus) {
      tr.querySelector('button').focus({ preventScroll: true });
      tr.scrollIntoView({ block: 'nearest' });
    }
  });
}

function moveSelection(delta) {
  const ids = S.list.items.map((i) => i.case_id);
  if (!ids.length) return;
  const k = Math.max(0, Math.min(ids.length - 1, ids.indexOf(S.list.selected) + delta));
  select(ids[k]);
}

$('worklist-table').addEventListener('click', (e) => {
  const b = e.target.closest('button[data-open]');
  if (b) {
    S.context = filters().status;
    window.location.hash = `#/case/${b.dataset.open}`;
    return;
  }
  const tr = e.target.closest('tr[data-case]');
  if (tr) select(tr.dataset.case, { focus: false });
});
$('filters').addEventListener('change', () => {
  S.list.cursors = [null];
  S.list.page = 0;
  loadWorklist();
});
$('filters').addEventListener('submit', (e) => e.preventDefault());
$('page-next').addEventListener('click', () => {
  if (!S.list.next) return;
  S.list.cursors[S.list.page + 1] = S.list.next;
  S.list.page += 1;
  loadWorklist();
});
$('page-prev').addEventListener('click', () => {
  if (S.list.page === 0) return;
  S.list.page -= 1;
  loadWorklist();
});

// -- reading a case ------------------------------------------------------------------------------------------------
function setAlert(text) {
  $('case-alert').textContent = text;
  $('case-alert').hidden = !text;
}

function formEnabled(on) {
  $('read-form').querySelectorAll('input, textarea, button').forEach((x) => {
    x.disabled = !on && x.id !== 'release-case' && x.id !== 'skip-case';
  });
}

function resetForm() {
  $('read-form').reset();
  $('confidence-out').textContent = `${$('confidence').value}%`;
}

/** The read form as the reader left it (raw values, to put back exactly). */
function formState() {
  return { label: $('read-form').querySelector('input[name=label]:checked')?.value || null,
    confidence: $('confidence').value, comment: $('comment').value };
}

function formTouched() {
  const f = formState();
  return !!(f.label || f.comment || f.confidence !== $('confidence').defaultValue);
}

function fillForm(d) {
  $('read-form').querySelectorAll('input[name=label]').forEach((r) => {
    r.checked = r.value === d.label;
  });
  $('confidence').value = d.confidence;
  $('comment').value = d.comment;
  $('confidence-out').textContent = `${$('confidence').value}%`;
}

/** What went wrong with a read's save, in words: the server's status and reason, or the network. */
function readFailure(e) {
  const why = e instanceof ApiError ? `the server answered ${e.status}: ${e.message}`
    : `the network request failed (${e.message || 'no connection'})`;
  return `Your read was NOT saved: ${why}.`;
}

/** The persistent, assertive message of a read that could not be saved; only its save or Dismiss removes it. */
function showReadError(caseId, text) {
  S.readError = { caseId, text };
  $('read-error-text').textContent = text;
  $('read-error-open').setAttribute('href', `#/case/${caseId}`);
  renderReadError();
}

function renderReadError() {
  const r = S.readError;
  $('read-error').hidden = !r;
  if (!r) return;
  const here = S.current?.id === r.caseId;
  $('read-error-open').hidden = here;
  $('read-error-text').textContent = here ? `${r.text} It is filled in again below: check it and submit it again.`
    : `${r.text} Open the case again to submit it (your read is kept in this tab).`;
}

function clearReadError(caseId = null) {
  if (!S.readError || (caseId && S.readError.caseId !== caseId)) return;
  S.readError = null;
  $('read-error-text').textContent = '';
  renderReadError();
}

$('read-error-dismiss').addEventListener('click', () => clearReadError());

/** Where the read form's labels and title come from: the case's workflow state and the caller's part in it. */
function describeCase(view) {
  const me = S.user.subject;
  const reads = (view.history || []).filter((h) => h.type === 'read');
  const mine = reads.filter((r) => r.reader === me);
  const visibleOthers = reads.filter((r) => r.reader !== me && !r.hidden);
  if (view.workflow_status === 'final') {
    return { kind: 'amend', title: 'Amend your read', submit: 'Amend', reads: reads.filter((r) => !r.hidden) };
  }
  if (view.workflow_status === 'adjudication' && !mine.length) {
    return { kind: 'adjudicate', title: 'Adjudication: your decision', submit: 'Decide and next',
      reads: visibleOthers };
  }
  if (mine.length) return { kind: 'amend', title: 'Amend your read', submit: 'Amend and next', reads: mine };
  return { kind: 'read', title: view.read_mode === 'double' ? 'Your read (double reading, blinded)' : 'Your read',
    submit: 'Submit and next', reads: [] };
}

function renderReads(view, d) {
  const panel = $('reads-panel');
  const box = $('reads');
  box.replaceChildren();
  panel.hidden = !d.reads.length && d.kind !== 'adjudicate';
  $('reads-title').textContent = d.kind === 'adjudicate' ? 'The two reads and the AI' : 'Reads';
  box.classList.toggle('side-by-side', d.kind === 'adjudicate');
  d.reads.forEach((r) => box.append(el('div', { class: 'read-card', 'data-reader': r.reader },
    el('h3', { text: `${r.reader === S.user.subject ? 'You' : r.reader} · ${r.read_kind || 'read'}` }),
    el('p', { class: 'label', text: r.label || '' }),
    el('p', { text: r.confidence === null || r.confidence === undefined ? '' : `Confidence ${pct(r.confidence)}` }),
    r.comment ? el('p', { class: 'comment', text: r.comment }) : null)));
  if (d.kind === 'adjudicate') {
    const ai = view.ai || {};
    box.append(el('div', { class: 'read-card ai-card' }, el('h3', { text: 'AI' }),
      el('p', { class: 'label', text: ai.probability === null || ai.probability === undefined ? 'no score'
        : `${pct(ai.probability)} (${ai.priority})` }),
      el('p', { text: ai.threshold !== null && ai.threshold !== undefined ? `threshold ${pct(ai.threshold)}` : '' })));
  }
  if (view.final_label) {
    box.append(el('p', { class: 'final', 'data-testid': 'final-label',
      text: `Final label: ${view.final_label.label} (version ${view.final_label.version}, ${view.final_label.resolution})` }));
    panel.hidden = false;
  }
}

function renderAi(view) {
  const ai = view.ai || {};
  const parts = [];
  if (ai.probability !== null && ai.probability !== undefined) {
    parts.push(el('span', { class: `badge ${ai.priority === 'urgent' ? 'urgent' : 'routine'}`,
      text: ai.priority === 'urgent' ? 'Urgent' : 'Routine' }), ' ',
    el('strong', { text: `Pneumonia ${pct(ai.probability)}` }),
    el('br'), `Operating threshold ${pct(ai.threshold)} · model v${ai.model_version ?? '?'}`);
  } else {
    parts.push(ai.status === 'not_applicable' ? 'The AI does not score this image.' : 'No AI score yet.');
  }
  $('ai-result').replaceChildren(...parts);
  $('overlay-controls').hidden = !ai.heatmap_url;
  const img = $('heatmap');
  img.hidden = true;
  img.removeAttribute('src');
  $('overlay-toggle').checked = false;
  img.dataset.url = ai.heatmap_url || '';
}

function placeOverlay() {
  const v = S.current?.viewer;
  const img = $('heatmap');
  if (!v?.viewport || img.hidden) return;
  const r = v.imageCanvasRect();
  // Cornerstone's worldToCanvas assumes a canvas of devicePixelRatio times its CSS size; the CPU render path's canvas
  // is CSS-sized, so there its coordinates come out divided by devicePixelRatio (the overlay was half size on phones).
  const canvas = v.element.querySelector('canvas');
  const cssWidth = canvas?.getBoundingClientRect().width || 0;
  const k = canvas && cssWidth ? r.dpr / (canvas.width / cssWidth) : 1;
  Object.assign(img.style, { left: `${(k * r.x) / r.dpr}px`, top: `${(k * r.y) / r.dpr}px`,
    width: `${(k * r.width) / r.dpr}px`, height: `${(k * r.height) / r.dpr}px` });
}

/** Show or hide the Grad-CAM overlay (the presigned storage URL carries its own authorisation: no token). */
function setOverlay(on) {
  const img = $('heatmap');
  const url = img.dataset.url;
  $('overlay-toggle').checked = !!(on && url);
  if (!on || !url) {
    img.hidden = true;
    return;
  }
  if (img.getAttribute('src') !== url) img.src = url;
  img.style.opacity = String(Number($('overlay-opacity').value) / 100);
  img.hidden = false;
  placeOverlay();
}

$('overlay-toggle').addEventListener('change', () => setOverlay($('overlay-toggle').checked));
$('overlay-opacity').addEventListener('input', () => {
  $('heatmap').style.opacity = String(Number($('overlay-opacity').value) / 100);
  if (!$('overlay-toggle').checked) setOverlay(true);
});
$('confidence').addEventListener('input', () => {
  $('confidence-out').textContent = `${$('confidence').value}%`;
});

function renderLease() {
  const c = S.current;
  const p = $('lease');
  if (!c) {
    p.textContent = '';
    return;
  }
  if (c.claimError) {
    p.textContent = '';
    return;
  }
  if (!c.claim) {
    p.textContent = 'Claiming…';
    return;
  }
  const left = Math.max(0, Math.round(c.claim.lease_expires_at - Date.now() / 1000));
  p.textContent = `Claimed by you · lease until ${clock(c.claim.lease_expires_at)} (${left} s), renewed while open`;
  if (c.renewNote) p.append(' · ', el('span', { class: 'renew-note', text: c.renewNote }));
}

/** Claim the case on opening it (renewals are renewClaim's). */
async function claim(c) {
  try {
    c.claim = await post(`/verification/cases/${c.id}/claim`);
    c.claimError = null;
    renderLease();
    return true;
  } catch (e) {
    if (onApiError(e)) return false;
    // A case left meanwhile is not on screen: its failure must not touch the open case's alert or form.
    if (S.current !== c) return false;
    c.claim = null;
    c.claimError = e;
    const other = e.status === 409;
    setAlert(other ? `This case is claimed by another reader. ${e.message}` : `The case could not be claimed: ${e.message}`);
    formEnabled(false);
    renderLease();
    return false;
  }
}

/**
 * Renew the lease once: 'ok', or {lost, error}. A 409 on renewal means our lease ended (expired or released) or
 * another reader holds the case: claim it again, and only a 409 then means another reader. A 5xx or a network error
 * says nothing about the lease: the caller retries.
 */
async function renewClaim(c) {
  const attempt = async (renew) => {
    c.claim = await post(`/verification/cases/${c.id}/claim${renew ? '?renew=true' : ''}`);
    c.claimError = null;
    return 'ok';
  };
  const failed = (e) => {
    if (onApiError(e)) return { lost: true, error: e };
    return { lost: e instanceof ApiError && e.status < 500, error: e };
  };
  // The renewal (?renew=true) only extends a lease we still hold: one still in flight when the reader leaves the
  // case reaches the service after the release, and must not claim the case again for someone who has gone.
  try {
    return await attempt(true);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 409)) return failed(e);
    if (S.current !== c && !c.saving) return { lost: true, error: e }; // left: never claim it again
    try {
      return await attempt(false);
    } catch (e2) {
      return failed(e2);
    }
  }
}

/**
 * Keep the claim while the case is open and unread, and while its read is being saved (until the save is settled).
 * A failed renewal (5xx, network) is retried with backoff; the form stays usable while the lease has time left.
 */
function startRenew(c) {
  const every = Math.max(1000, ((c.claim?.lease_s || 900) * 1000) / 3);
  let failures = 0;
  const active = () => (S.current === c && !c.submitted) || c.saving;
  const tick = async () => {
    if (!active()) return;
    const r = await renewClaim(c);
    if (!active()) return; // left or saved while renewing: leaveCase / the save stopped the renewals
    const here = S.current === c;
    if (r === 'ok') {
      failures = 0;
      c.renewNote = '';
      if (here && c.leaseLapsed) {
        c.leaseLapsed = false;
        setAlert('');
        formEnabled(true);
      }
      if (here) renderLease();
      c.renew = setTimeout(tick, every);
      return;
    }
    if (r.lost) {
      c.claim = null;
      if (here) {
        setAlert(r.error.status === 409 ? 'The lease was lost: another reader claimed this case. Your read cannot be '
          + 'submitted.' : `The lease could not be renewed: ${r.error.message} Your read cannot be submitted.`);
        formEnabled(false);
        renderLease();
      }
      return;
    }
    failures += 1;
    const left = c.claim ? c.claim.lease_expires_at - Date.now() / 1000 : 0;
    c.renewNote = `renewing failed (${r.error.message}), retrying`;
    if (here && left <= 0 && !c.leaseLapsed) {
      c.leaseLapsed = true;
      setAlert(`The lease has run out and could not be renewed (${r.error.message}); retrying. `
        + 'Submit is back once the case is claimed again.');
      formEnabled(false);
    }
    if (here) renderLease();
    c.renew = setTimeout(tick, Math.min(every, 500 * 2 ** Math.min(failures - 1, 6)));
  };
  c.renew = setTimeout(tick, every);
  c.tick = setInterval(renderLease, 1000);
}

/** Leave the open case: stop renewing, release the claim unless a read was submitted, destroy its viewer. */
async function leaveCase({ release = true, keepalive = false } = {}) {
  const c = S.current;
  if (!c) return;
  S.current = null;
  if (!c.saving) clearTimeout(c.renew); // a read being saved keeps its claim until the save is settled
  clearInterval(c.tick);
  c.viewer?.destroy();
  $('heatmap').hidden = true;
  if (release && c.claim && !c.submitted) {
    try {
      await del(`/verification/cases/${c.id}/claim`, { keepalive });
    } catch (e) {
      console.info('radloop workstation: release failed', e.message);
    }
  }
}

/** The case view (GET /verification/cases/{id}). */
function caseView(id) {
  return get(`/verification/cases/${encodeURIComponent(id)}`);
}

function nextStatusFilter() {
  return S.context === 'adjudication' ? 'adjudication' : 'unread';
}

/** The next case to read: the first unclaimed case of the same queue, not this one, not skipped or read here. */
async function pickNext(excludeId) {
  let data;
  try {
    data = await fetchWorklist({ status: nextStatusFilter(), modality: filters().modality,
      priority: filters().priority, limit: 20 });
  } catch {
    return null;
  }
  // read_by_me comes from the server: a case read in another tab or on a phone is never offered again (the tab's own
  // memory was the only check; found by a review, session 22).
  return data.items.find((i) => i.case_id !== excludeId && !S.skipped.has(i.case_id) && !S.readByMe.has(i.case_id)
    && !i.read_by_me && !i.lease_owner) || null;
}

/** Fetch the next case's view, series metadata and first frame ahead of time, so it opens at once. */
function prefetchNext(c) {
  if (params.get('prefetch') === '0') return; // for measurements: what prefetching saves
  const start = async () => {
    const next = await pickNext(c.id);
    if (!next || S.current !== c) return null;
    const view = caseView(next.case_id);
    const { chooseRenderPath, prefetchSeriesImage } = await loadViewer();
    const series = prefetchSeriesImage(next.study_uid, next.series_uid, next.sop_uid,
      { renderPath: chooseRenderPath(params.get('render')) });
    const v = await view;
    if (v.ai?.heatmap_url) new Image().src = v.ai.heatmap_url; // the overlay too, if it is turned on
    return { entry: next, view: v, series: await series };
  };
  const promise = start().catch((e) => {
    console.info('radloop workstation: prefetch failed', e.message);
    return null;
  });
  S.prefetch = { id: null, promise };
  promise.then((p) => {
    if (S.prefetch?.promise === promise) S.prefetch.id = p?.entry.case_id ?? null;
  });
}

async function openCase(id, { submitAt = null } = {}) {
  await leaveCase();
  showView('reading');
  stopPolling();
  setAlert('');
  resetForm();
  const draft = S.drafts.get(id);
  if (draft) fillForm(draft); // a read that could not be saved (or one left for it): as the reader left it
  formEnabled(false);
  $('case-title').textContent = 'Case';
  $('ai-result').textContent = 'Loading…';
  $('reads-panel').hidden = true;
  const c = { id, claim: null, submitted: false, saving: false, viewer: null };
  S.current = c;
  renderLease();
  renderReadError();

  // A prefetched next case (metadata, first frame decoded, case view) opens without waiting for the network.
  let pre = null;
  if (S.prefetch) {
    const pf = S.prefetch;
    const p = await pf.promise;
    if (p?.entry.case_id === id) pre = p;
    if (S.prefetch === pf) S.prefetch = null;
  }
  if (S.current !== c) return; // another case was opened meanwhile: do not claim this one
  const claimed = claim(c).then((ok) => {
    if (ok && S.current !== c && S.current?.id !== c.id) {
      // Left while the claim was on its way: leaveCase saw no claim to release, so release it here.
      del(`/verification/cases/${c.id}/claim`).catch(() => {});
      return false;
    }
    return ok;
  });
  let view = pre?.view;
  if (!view) {
    try {
      view = await caseView(id);
    } catch (e) {
      if (!onApiError(e)) setAlert(e.status === 404 ? 'No such case.' : `The case could not be loaded: ${e.message}`);
      return;
    }
  }
  if (S.current !== c) return;
  c.view = view;
  $('case-title').textContent = `${view.modality || ''} case${view.body_part ? ` · ${view.body_part}` : ''}`;
  renderAi(view);
  const d = describeCase(view);
  c.kind = d.kind;
  $('form-title').textContent = d.title;
  $('submit-read').firstChild.textContent = `${d.submit} `;
  renderReads(view, d);

  // The viewer: a fresh element per case (Cornerstone's viewport is re-enabled on it).
  const { chooseRenderPath, StackViewer } = await loadViewer();
  if (S.current !== c) return;
  const host = $('viewport-host');
  const element = el('div', { id: 'viewport', 'data-testid': 'viewport', tabindex: '0', role: 'img',
    'aria-label': 'Case image: arrow keys or swipe change the image, pinch or z zooms, h toggles the AI overlay' });
  host.replaceChildren(element);
  const viewer = new StackViewer({ element, counter: $('counter'), progress: $('progress'), voiLabel: $('voi'),
    slider: $('slider') });
  c.viewer = viewer;
  element.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
    // The viewport also renders before its image has arrived (an empty frame): count only a frame with the image.
    const shown = viewer.loader && viewer.loader.quality[viewer.currentIndex] > 0;
    if (shown && c.firstImageAt === undefined) {
      c.firstImageAt = performance.now();
      if (submitAt !== null) {
        hooks.timings.push({ caseId: id, submitToFirstImageMs: c.firstImageAt - submitAt, prefetched: !!pre });
      }
      if (S.current === c) prefetchNext(c);
    }
    placeOverlay();
  });
  element.addEventListener('CORNERSTONE_CAMERA_MODIFIED', placeOverlay);
  const opened = viewer.open(view.study_uid, view.series_uid, {
    renderPath: chooseRenderPath(params.get('render')),
    startIndex: pre ? pre.series.index : null,
    prefetched: pre?.series ?? null,
  }).then(async (info) => {
    if (!info || S.current !== c) return;
    if (!pre) {
      // Start at the case's own image within its series.
      const k = viewer.instances.findIndex((m) => tagValue(m, '00080018') === view.sop_uid);
      if (k >= 0 && k !== viewer.currentIndex) await viewer.scrollTo(k);
    }
  }).catch((e) => {
    if (S.current === c) setAlert(`The images could not be loaded: ${e.message}`);
  });
  if (await claimed && S.current === c) {
    formEnabled(true);
    startRenew(c);
  }
  await opened;
  if (S.current === c) hooks.state = 'reading';
}

function readBody() {
  const f = $('read-form');
  const label = f.querySelector('input[name=label]:checked')?.value;
  return { label, confidence: Number($('confidence').value) / 100, comment: $('comment').value.trim() || null };
}

/** The Idempotency-Key of a read: the one of its failed try while the read is unchanged (a retry), else a new one. */
function readKey(caseId, body) {
  const sent = JSON.stringify(body);
  const prev = S.drafts.get(caseId);
  if (prev?.key && prev.sent === sent) return prev.key;
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

/**
 * A read's save failed: it is never lost. Back on its case (or still there), the form is filled in as the reader
 * left it and usable again, and the persistent alert says what happened. The claim was kept renewed meanwhile.
 */
async function backToRead(c) {
  if (S.current === c) {
    // still on the case (the last of the queue, an amendment, or the next case had not opened yet)
    if (c.claim) formEnabled(true);
    renderReadError();
    return;
  }
  clearTimeout(c.renew); // the case opened again claims and renews it itself
  if (S.view !== 'reading' || !S.user) {
    // The reader had left the reading view: let the claim go; the alert's link opens the case with the read.
    del(`/verification/cases/${c.id}/claim`).catch(() => {});
    renderReadError();
    return;
  }
  // Going back leaves the case opened next: whatever was begun there is kept for when it opens again.
  if (S.current && formTouched()) S.drafts.set(S.current.id, formState());
  window.history.replaceState(null, '', `#/case/${c.id}`);
  await openCase(c.id);
}

/** POST the read (in the background while the next case opens); a failure brings the read back (backToRead). */
function saveRead(c, body, key) {
  return post(`/verification/cases/${c.id}/reads`, body, { headers: { 'Idempotency-Key': key } })
    .then((res) => {
      c.saving = false;
      clearTimeout(c.renew);
      S.drafts.delete(c.id);
      clearReadError(c.id);
      hooks.submitted.push({ caseId: c.id, response: res });
      say(res.final_label && res.label_version ? `Read saved: final label ${res.final_label} (version ${res.label_version}).`
        : `Read saved (${res.status === 'adjudication' ? 'the readers disagree: adjudication' : res.status}).`);
      return res;
    }, (e) => {
      c.saving = false;
      c.submitted = false;
      c.failed = true;
      S.readByMe.delete(c.id);
      hooks.submitted.push({ caseId: c.id, error: e.message, status: e instanceof ApiError ? e.status : null });
      showReadError(c.id, readFailure(e));
      if (onApiError(e)) clearTimeout(c.renew);
      else backToRead(c);
      return null;
    });
}

async function submitAndNext() {
  const c = S.current;
  if (!c || !c.claim || c.submitted || c.saving) return;
  const body = readBody();
  if (!body.label) {
    say('Choose a finding first (pneumonia, normal or indeterminate).', { error: true });
    $('read-form').querySelector('input[name=label]').focus();
    return;
  }
  const submitAt = performance.now();
  const key = readKey(c.id, body);
  // A copy of the read until it is saved: a failed save puts it back in the form, with the same key for the retry.
  S.drafts.set(c.id, { ...formState(), key, sent: JSON.stringify(body) });
  c.submitted = true;
  c.saving = true;
  c.failed = false;
  formEnabled(false);
  S.readByMe.add(c.id);
  const saved = saveRead(c, body, key);
  // Amending a final read stays on the case; otherwise the next case (prefetched) opens while the read is saved.
  if (c.kind === 'amend' && c.view?.workflow_status === 'final') {
    if (!(await saved) || S.current !== c) return;
    await leaveCase({ release: false });
    await openCase(c.id);
    return;
  }
  const pre = S.prefetch ? await S.prefetch.promise : null;
  const next = pre?.entry || (await pickNext(c.id));
  if (c.failed || S.current !== c) return; // the save failed meanwhile (the read is back in the form), or left
  if (next) {
    window.history.replaceState(null, '', `#/case/${next.case_id}`);
    await openCase(next.case_id, { submitAt });
  } else {
    // The last case of the queue: stay on it until the read is saved; a failure keeps it open with the read.
    if (!(await saved) || S.current !== c) return;
    await leaveCase({ release: false });
    window.location.hash = '#/';
    say('No more cases in this queue.');
  }
}

async function skipCase() {
  const c = S.current;
  if (!c) return;
  S.skipped.add(c.id);
  const pre = S.prefetch ? await S.prefetch.promise : null;
  const next = (pre && !S.skipped.has(pre.entry.case_id) ? pre.entry : null) || (await pickNext(c.id));
  if (next) {
    window.history.replaceState(null, '', `#/case/${next.case_id}`);
    await openCase(next.case_id);
  } else {
    window.location.hash = '#/';
  }
}

$('read-form').addEventListener('submit', (e) => {
  e.preventDefault();
  submitAndNext();
});
// Only the submit button and Ctrl+Enter submit a read: plain Enter on a finding or the slider (the browser's implicit
// submission) must not.
$('read-form').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.ctrlKey && !e.metaKey && e.target instanceof HTMLInputElement) e.preventDefault();
});
$('skip-case').addEventListener('click', () => skipCase());
$('release-case').addEventListener('click', () => {
  window.location.hash = '#/';
});
document.querySelectorAll('.toolbar [data-tool]').forEach((b) => b.addEventListener('click', () =>
  S.current?.viewer?.setMode(b.dataset.tool)));
$('tool-reset').addEventListener('click', () => S.current?.viewer?.reset());

// Touch: a tap on the image toggles the overlay (one finger, short, hardly moving); swipe and pinch are the viewer's.
(function tapToToggle() {
  let start = null;
  const wrap = $('viewport-wrap');
  wrap.addEventListener('touchstart', (e) => {
    // A tap on a control in the image area (the series slider) is that control's, not the overlay's.
    const onControl = e.target instanceof Element && e.target.closest('input, button, select, textarea, a, label');
    start = e.touches.length === 1 && !onControl
      ? { x: e.touches[0].clientX, y: e.touches[0].clientY, t: performance.now() } : null;
  }, { passive: true, capture: true });
  wrap.addEventListener('touchmove', (e) => {
    if (start && (e.touches.length > 1 || Math.hypot(e.touches[0].clientX - start.x, e.touches[0].clientY - start.y) > 10)) {
      start = null;
    }
  }, { passive: true, capture: true });
  wrap.addEventListener('touchend', (e) => {
    if (start && e.touches.length === 0 && performance.now() - start.t < 300 && $('heatmap').dataset.url) {
      setOverlay($('heatmap').hidden);
    }
    start = null;
  }, { passive: true, capture: true });
}());

// -- keyboard ------------------------------------------------------------------------------------------------------
window.addEventListener('keydown', (e) => {
  const t = e.target;
  const typing = t instanceof HTMLTextAreaElement || (t instanceof HTMLInputElement && !['radio', 'checkbox', 'range']
    .includes(t.type)) || t instanceof HTMLSelectElement;
  const inField = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
  if (e.isComposing) return; // an input method is composing text: its keys are not commands
  if (S.view === 'reading') {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submitAndNext();
      return;
    }
    if (e.key === 'Escape') {
      // Esc in a form field (a comment being typed) does not release the case and lose the draft.
      if (inField) return;
      e.preventDefault();
      window.location.hash = '#/';
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const labels = { a: 'pneumonia', n: 'normal', i: 'indeterminate' };
    if (labels[e.key]) {
      const radio = $('read-form').querySelector(`input[value=${labels[e.key]}]`);
      if (!radio.disabled) radio.checked = true;
      e.preventDefault();
    } else if (e.key === 'h') {
      e.preventDefault();
      setOverlay($('heatmap').hidden);
    } else if (e.key === 'x') {
      e.preventDefault();
      skipCase();
    }
    return;
  }
  if (S.view === 'worklist' && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
    if (e.key === 'j') {
      e.preventDefault();
      moveSelection(1);
    } else if (e.key === 'k') {
      e.preventDefault();
      moveSelection(-1);
    } else if (e.key === 'Enter' && S.list.selected && !(t instanceof HTMLButtonElement)) {
      e.preventDefault();
      S.context = filters().status;
      window.location.hash = `#/case/${S.list.selected}`;
    }
  }
});

// -- my reads, performance -----------------------------------------------------------------------------------------
async function showMine() {
  showView('mine');
  stopPolling();
  const body = $('mine-table').querySelector('tbody');
  try {
    const data = await get('/verification/my-reads?limit=50');
    body.replaceChildren(...data.items.map((it) => el('tr', { 'data-case': it.case_id },
      el('td', { text: it.final_label.label }), el('td', { text: String(it.final_label.version) }),
      el('td', { text: it.final_label.resolution }), el('td', { text: it.modality || '' }),
      el('td', { text: pct(it.ai?.probability) }),
      el('td', {}, el('a', { href: `#/case/${it.case_id}`, 'aria-label': `Open ${it.final_label.label} case to amend`,
        text: 'Open' })))));
  } catch (e) {
    if (!onApiError(e)) say(e.status === 403 ? 'Only radiologists have reads.' : e.message, { error: true });
  }
  if (S.view === 'mine') hooks.state = 'mine';
}

async function showPerformance() {
  showView('performance');
  stopPolling();
  if (!can(S.user, 'approve') && !S.user.roles.includes('admin')) {
    $('perf-note').textContent = 'Model performance is for the ml and admin roles.';
    $('perf-table').querySelector('tbody').replaceChildren();
    hooks.state = 'performance';
    return;
  }
  try {
    const r = await get('/verification/metrics/model-performance');
    $('perf-note').textContent = `Rolling window of the last ${r.window} verified images per model version; alerts need at least ${r.min_sample}. Floors: AUC ${r.floors.auc}, sensitivity ${r.floors.sensitivity}. Reading mode: ${r.read_mode}.`;
    $('perf-table').querySelector('tbody').replaceChildren(...r.versions.map((v) => el('tr', { 'data-version': v.model_version },
      el('th', { scope: 'row', text: `v${v.model_version}` }), el('td', { text: String(v.sample_size) }),
      el('td', { text: num(v.sensitivity) }), el('td', { text: num(v.specificity) }), el('td', { text: num(v.ppv) }),
      el('td', { text: num(v.auc) }),
      el('td', { class: v.degraded.length ? 'urgent' : '', text: v.degraded.length
        ? v.degraded.map((d) => `${d.metric} ${num(d.value)} < ${d.floor}`).join('; ') : 'none' }))));
    const k = r.reader_agreement || {};
    $('perf-kappa').textContent = k.pairs ? `Reader agreement (double reads): kappa ${num(k.kappa)} over ${k.pairs} pairs.` : '';
  } catch (e) {
    if (!onApiError(e)) say(e.message, { error: true });
  }
  if (S.view === 'performance') hooks.state = 'performance';
}

// -- start ---------------------------------------------------------------------------------------------------------
window.addEventListener('hashchange', () => route());
window.addEventListener('pagehide', () => {
  // Closing the tab releases the claim (keepalive lets the request outlive the page).
  leaveCase({ keepalive: true });
});
window.addEventListener('resize', placeOverlay);

(async () => {
  try {
    if (await finishOidc()) {
      const back = takeReturn();
      if (back) {
        window.location.assign(back);
        return;
      }
    }
  } catch (e) {
    say(e.message, { error: true });
  }
  await route();
})();

// The read being written is kept as a draft while the reader types (a failed save keeps its own, with its key).
$('read-form').addEventListener('input', () => {
  const c = S.current;
  if (!c || c.saving || c.submitted || !formTouched()) return;
  const prev = S.drafts.get(c.id);
  S.drafts.set(c.id, { ...formState(), key: prev?.key, sent: prev?.sent });
});
