// The console's shell: log-in, the top bar (who, live feed, sound, language,
// log-out), the alarm banner, messages, and the view for the account's role:
// its pages (alarms, wellbeing calls, reports) behind tabs.

import { api, login, logout, now, session } from './api.js';
import { AccountsView } from './accounts.js';
import { Alarm } from './alert.js';
import { CarerView } from './carer.js';
import { ClosingView } from './closing.js';
import { clock, fill, h } from './dom.js';
import { Feed } from './feed.js';
import { other, setLang, t } from './i18n.js';
import { IncidentView, problem } from './incident.js';
import { QueueView } from './queue.js';
import { ReportsView } from './reports.js';
import { WellbeingView } from './wellbeing.js';

const root = document.getElementById('app');
const banner = document.getElementById('alarm-banner');
const message = document.getElementById('message');

let screen = null; // the running view: { el, start(), stop(), relabel(), waiting() }
let feedState = 'connecting';
let servers = null; // the servers sharing the database, as GET /api/v1/servers last said

const alarm = new Alarm(() => showAlarm());

// ---- messages ------------------------------------------------------------

let messageTimer = null;

/** Tell the user how an action went; errors stay until dismissed or replaced. */
function notify(kind, text) {
  clearTimeout(messageTimer);
  message.className = `message ${kind}`;
  message.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  fill(message, h('span', { class: 'text' }, text), ' ',
    h('button', { type: 'button', class: 'subtle', 'aria-label': t('msg.dismiss'), onclick: () => clearMessage() }, '✕'));
  message.hidden = false;
  if (kind !== 'error') messageTimer = setTimeout(clearMessage, 5000);
}

function clearMessage() {
  message.hidden = true;
  message.replaceChildren();
}

// ---- the alarm -----------------------------------------------------------

function showAlarm() {
  const waiting = screen && screen.waiting ? screen.waiting() : [];
  document.body.dataset.alarm = waiting.length ? 'on' : 'off';
  document.body.dataset.sound = alarm.sound;
  const button = document.getElementById('sound-toggle');
  if (button) {
    button.textContent = t(`sound.${alarm.sound}`);
    button.setAttribute('aria-pressed', String(alarm.sound === 'on'));
    button.classList.toggle('attention', alarm.sound === 'blocked' || (alarm.sound === 'muted' && waiting.length > 0));
  }
  if (!waiting.length) {
    banner.hidden = true;
    banner.replaceChildren();
    return;
  }
  const oldest = waiting[0];
  fill(banner,
    h('strong', {}, t('alarm.banner', { n: waiting.length })), ' ',
    h('span', {}, t('alarm.oldest', { name: oldest.client_name || oldest.device_id, age: clock(now() - oldest.opened_at) })), ' ',
    h('button', { type: 'button', onclick: () => screen.select(oldest.id) }, t('alarm.open')));
  banner.hidden = false;
}

// ---- log-in --------------------------------------------------------------

function renderLogin(note) {
  stopScreen();
  fill(document.getElementById('topbar'), h('span', { class: 'brand' }, t('app.brand')), h('span', { class: 'spacer' }), langButton());
  const user = h('input', { id: 'login-username', name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { id: 'login-submit', type: 'submit', class: 'primary' }, t('login.submit'));
  const status = h('p', { id: 'login-status', role: 'alert' }, note || '');
  const form = h('form', {
    class: 'login panel',
    onsubmit: async (e) => {
      e.preventDefault();
      // This click is the user gesture that lets the alarm make sound.
      alarm.unlock();
      submit.disabled = true;
      submit.textContent = t('login.busy');
      try {
        await login(user.value.trim(), pass.value);
        start();
      } catch (err) {
        status.textContent = t('login.failed', { message: problem(err) });
        submit.disabled = false;
        submit.textContent = t('login.submit');
        pass.select();
      }
    },
  },
  h('h1', {}, t('login.title')),
  h('label', { for: 'login-username' }, t('login.username')), user,
  h('label', { for: 'login-password' }, t('login.password')), pass,
  submit, status,
  h('p', { class: 'muted small' }, t('login.sound')));
  fill(root, form);
  document.title = t('app.title');
  user.focus();
}

// ---- the top bar -----------------------------------------------------------

function langButton() {
  return h('button', {
    id: 'lang-toggle',
    type: 'button',
    lang: other() === 'zh' ? 'zh-CN' : 'en',
    'aria-label': t('lang.switch'),
    onclick: () => {
      setLang(other());
      relabel();
    },
  }, t('lang.other'));
}

function renderTopbar() {
  const s = session();
  const bar = document.getElementById('topbar');
  const canSound = s && (s.role === 'operator' || s.role === 'supervisor');
  fill(bar,
    h('span', { class: 'brand' }, t('app.brand')),
    h('span', { class: 'who' }, `${s.username} · ${t(`role.${s.role}`)}`),
    s.role === 'carer' || s.role === 'regulator'
      ? null
      : h('span', { id: 'feed-state', class: `feed feed-${feedState}`, role: 'status' }, t(`feed.${feedState}`)),
    PAGES[s.role] ? h('span', { id: 'servers-state', role: 'status' }) : null,
    h('span', { class: 'spacer' }),
    canSound ? h('button', { id: 'sound-toggle', type: 'button', onclick: () => alarm.toggle() }) : null,
    langButton(),
    h('button', { id: 'logout', type: 'button', onclick: () => doLogout() }, t('logout')));
  paintServers();
  showAlarm();
}

/**
 * Which servers are up. One that stopped renewing its lease without saying
 * goodbye is named: its devices are being taken over by the others.
 */
function paintServers() {
  const el = document.getElementById('servers-state');
  if (!el) return;
  if (!servers) {
    el.hidden = true;
    return;
  }
  const silent = servers.filter((s) => !s.up && s.stopped_at == null).map((s) => s.instance_id);
  el.hidden = false;
  el.className = silent.length ? 'feed feed-down' : 'feed servers';
  el.textContent = silent.length
    ? t('servers.silent', { names: silent.join(', ') })
    : t('servers.up', { n: servers.filter((s) => s.up).length });
}

async function pollServers() {
  try {
    servers = await api('GET', '/api/v1/servers');
  } catch {
    servers = null;
  }
  paintServers();
}

function setFeedState(state) {
  feedState = state;
  document.body.dataset.feed = state;
  const el = document.getElementById('feed-state');
  if (el) {
    el.className = `feed feed-${state}`;
    el.textContent = t(`feed.${state}`);
  }
}

function relabel() {
  document.title = t('app.title');
  if (!session()) {
    renderLogin();
    return;
  }
  renderTopbar();
  if (screen) screen.relabel();
  showAlarm();
}

async function doLogout() {
  stopScreen();
  alarm.stop();
  await logout();
  renderLogin();
}

// ---- the views by role ---------------------------------------------------------

/** The pages of each staff role, in the order of their tabs (what the API lets the role read). */
const PAGES = {
  operator: ['alarms', 'wellbeing'],
  supervisor: ['alarms', 'wellbeing', 'reports'],
  admin: ['alarms', 'wellbeing', 'reports', 'accounts'],
};

/**
 * Operators, supervisors (with breaches) and admins (read-only): the open
 * queue, the incidents waiting to be closed and the screen-pop; the
 * wellbeing calls; reports for supervisors and admins. The queue, its feed
 * and the alarm keep running whichever page is in front.
 */
class StaffScreen {
  constructor(role) {
    this.canAct = role === 'operator' || role === 'supervisor';
    this.rows = [];
    this.loading = false;
    this.again = false;
    this.pages = PAGES[role];
    this.queue = new QueueView({ onSelect: (id) => this.select(id), supervisor: role === 'supervisor' });
    this.closing = new ClosingView({ onSelect: (id) => this.select(id) });
    this.incident = new IncidentView({ canAct: this.canAct, notify, onChanged: () => this.reload() });
    this.feed = new Feed({
      token: () => (session() ? session().token : null),
      onEvent: (ev) => this.onEvent(ev),
      onOpen: () => this.reload(),
      onState: setFeedState,
      onUnauthorized: () => window.dispatchEvent(new CustomEvent('pat:unauthorized')),
    });
    this.views = {
      alarms: { el: h('div', { class: 'split' }, h('div', { class: 'col' }, this.queue.el, this.closing.el), this.incident.el) },
      wellbeing: new WellbeingView({ canAct: this.canAct, notify }),
    };
    if (this.pages.includes('reports')) this.views.reports = new ReportsView({ notify, onOpen: (id) => this.select(id) });
    if (this.pages.includes('accounts')) this.views.accounts = new AccountsView({ notify });
    this.note = role === 'admin' ? h('p', { class: 'note' }) : null;
    this.tabs = h('nav', { class: 'tabs', 'aria-label': t('nav.label') });
    this.page = this.pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'alarms';
    this.el = h('div', { class: 'staff' }, this.note, this.tabs,
      this.pages.map((p) => h('div', { class: 'page', 'data-page': p }, this.views[p].el)));
    this.relabel();
  }

  start() {
    this.reload();
    this.feed.start();
    this.show(this.page);
    this.ticker = setInterval(() => {
      this.queue.tick();
      showAlarm();
    }, 1000);
    // The feed says when to reload; this is the safety net.
    this.poller = setInterval(() => this.reload(), 30000);
    pollServers();
    this.serverPoller = setInterval(pollServers, 10000);
  }

  stop() {
    this.feed.stop();
    clearInterval(this.ticker);
    clearInterval(this.poller);
    clearInterval(this.serverPoller);
    clearTimeout(this.soon);
    clearTimeout(this.detailSoon);
  }

  /** Bring a page to the front (kept in the address's #fragment across reloads). */
  show(page) {
    const changed = page !== this.page;
    this.page = page;
    for (const el of this.el.querySelectorAll('.page')) el.hidden = el.dataset.page !== page;
    for (const b of this.tabs.querySelectorAll('button')) {
      if (b.dataset.page === page) b.setAttribute('aria-current', 'page');
      else b.removeAttribute('aria-current');
    }
    document.body.dataset.page = page;
    if (location.hash !== `#${page}`) history.replaceState(null, '', `#${page}`);
    const view = this.views[page];
    if (view.show) view.show();
    if (changed && page === 'alarms') this.reload();
  }

  relabel() {
    if (this.note) this.note.textContent = t('admin.note');
    fill(this.tabs, this.pages.map((p) => h('button', {
      type: 'button',
      'data-page': p,
      'aria-current': p === this.page ? 'page' : null,
      onclick: () => this.show(p),
    }, t(`nav.${p}`))));
    this.queue.render();
    this.closing.render();
    this.incident.relabel();
    for (const p of this.pages) if (p !== 'alarms') this.views[p].relabel();
  }

  /** Open an incident's screen-pop, on the alarms page. */
  select(id) {
    if (this.page !== 'alarms') this.show('alarms');
    this.queue.select(id);
    this.closing.select(id);
    this.incident.open(id);
  }

  /** Life-safety incidents nobody has claimed, oldest first. */
  waiting() {
    return this.rows.filter((r) => r.lane === 'life_safety' && !r.claimed_by);
  }

  onEvent(ev) {
    // Bursts of events make one reload.
    clearTimeout(this.soon);
    this.soon = setTimeout(() => this.reload(), 200);
    if (ev.incident_id === this.incident.id) {
      clearTimeout(this.detailSoon);
      this.detailSoon = setTimeout(() => this.incident.refresh(), 200);
    }
  }

  /** The open queue and the incidents waiting to be closed. */
  async reload() {
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      do {
        this.again = false;
        // Each list on its own: a failure of the second never holds up the alarms.
        const [open, resolved] = await Promise.allSettled([
          api('GET', '/api/v1/incidents'),
          api('GET', '/api/v1/incidents?state=resolved'),
        ]);
        if (open.status === 'fulfilled') {
          this.rows = open.value;
          this.queue.set(open.value);
          alarm.set(this.canAct && this.waiting().length > 0);
          showAlarm();
        }
        if (resolved.status === 'fulfilled') this.closing.set(resolved.value);
        const failed = [open, resolved].find((r) => r.status === 'rejected');
        if (failed && session()) notify('error', t('error.load', { message: problem(failed.reason) }));
      } while (this.again);
    } finally {
      this.loading = false;
    }
  }
}

/** Regulators: the city's reports, and nothing else (the API lets them read no queue and no resident). */
class RegulatorScreen {
  constructor() {
    this.view = new ReportsView({ notify, onOpen: null });
    this.el = this.view.el;
  }

  start() {
    this.view.start();
  }

  stop() {}

  relabel() {
    this.view.relabel();
  }
}

class CarerScreen {
  constructor() {
    this.view = new CarerView(notify);
    this.el = this.view.el;
  }

  start() {
    this.view.start();
  }

  stop() {
    this.view.stop();
  }

  relabel() {
    this.view.relabel();
  }
}

function stopScreen() {
  if (screen) screen.stop();
  screen = null;
  banner.hidden = true;
  clearMessage();
  document.body.dataset.alarm = 'off';
  delete document.body.dataset.page;
}

function start() {
  const s = session();
  if (!s) {
    renderLogin();
    return;
  }
  stopScreen();
  document.body.dataset.role = s.role;
  document.body.dataset.feed = 'none';
  if (s.role === 'carer') screen = new CarerScreen();
  else if (s.role === 'regulator') screen = new RegulatorScreen();
  else screen = new StaffScreen(s.role);
  document.title = t('app.title');
  renderTopbar();
  fill(root, screen.el);
  screen.start();
}

window.addEventListener('pat:unauthorized', () => {
  if (!screen) return;
  alarm.stop();
  renderLogin(t('login.expired'));
});

start();
