// The incident queue as the API orders it (life-safety first, then oldest),
// with the time since the press counting up and the claim limits: amber once
// a life-safety incident waits 60 s unclaimed, red at 180 s. Supervisors also
// get the counts of those breaches and who holds which incident.

import { now } from './api.js';
import { clock, fill, h } from './dom.js';
import { kindLabel, stateLabel, t } from './i18n.js';

/** An operator must have claimed a life-safety incident by then… */
export const CLAIM_MS = 60000;
/** …and at the latest by then. */
export const LIMIT_MS = 180000;

/** How a row stands now: claimed, technical, waiting, over60 or over180. */
export function urgency(row, at) {
  if (row.claimed_by) return 'claimed';
  if (row.lane !== 'life_safety') return 'technical';
  const age = at - row.opened_at;
  if (age >= LIMIT_MS) return 'over180';
  if (age >= CLAIM_MS) return 'over60';
  return 'waiting';
}

/** The text of the limit cell: colour is never the only sign. */
function limitText(row, at) {
  const age = at - row.opened_at;
  switch (urgency(row, at)) {
    case 'claimed':
      return `✓ ${t('limit.claimed')}`;
    case 'technical':
      return t('limit.technical');
    case 'waiting':
      return t('limit.waiting', { left: clock(CLAIM_MS - age) });
    case 'over60':
      return `⚠ ${t('limit.over60', { left: clock(LIMIT_MS - age) })}`;
    default:
      return `‼ ${t('limit.over180')}`;
  }
}

export class QueueView {
  /**
   * @param {object} o
   * @param {(id: number) => void} o.onSelect
   * @param {boolean} o.supervisor  show breach counts and who holds what
   */
  constructor(o) {
    this.o = o;
    this.rows = null;
    this.selected = null;
    this.el = h('section', { class: 'queue panel', 'aria-labelledby': 'queue-title', 'data-test': 'queue' });
    this.render();
  }

  set(rows) {
    this.rows = rows;
    this.render();
  }

  select(id) {
    this.selected = id;
    for (const tr of this.el.querySelectorAll('tr[data-incident]')) {
      const on = Number(tr.dataset.incident) === id;
      tr.classList.toggle('selected', on);
      tr.setAttribute('aria-selected', String(on));
    }
  }

  render() {
    // Keep the keyboard where it was across a refresh.
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.open
      : undefined;
    const rows = this.rows || [];
    const title = h('h2', { id: 'queue-title' }, t('queue.title'), ' ',
      h('span', { class: 'count' }, this.rows ? t('queue.count', { n: rows.length }) : ''));
    const parts = [title];
    if (this.o.supervisor) {
      this.summary = h('div', { class: 'summary', 'data-test': 'breaches', 'aria-live': 'polite' });
      parts.push(this.summary);
    }
    if (!this.rows) {
      parts.push(h('p', { class: 'muted' }, t('queue.loading')));
    } else if (!rows.length) {
      parts.push(h('p', { class: 'empty' }, t('queue.empty')));
    } else {
      parts.push(this.table(rows));
    }
    fill(this.el, parts);
    this.el.dataset.loaded = String(this.rows !== null);
    this.select(this.selected);
    this.tick();
    if (focused) {
      const again = this.el.querySelector(`button[data-open="${focused}"]`);
      if (again) again.focus();
    }
  }

  table(rows) {
    const head = h('tr', {},
      ['col.kind', 'col.resident', 'col.where', 'col.since', 'col.limit', 'col.presses', 'col.claimed', 'col.state']
        .map((k) => h('th', { scope: 'col' }, t(k))));
    const body = rows.map((r) => {
      const open = h('button', {
        type: 'button',
        class: 'open',
        'data-open': r.id,
        'aria-label': t('queue.open', { kind: kindLabel(r.kind), name: r.client_name || r.device_id }),
        onclick: (e) => {
          e.stopPropagation();
          this.o.onSelect(r.id);
        },
      }, kindLabel(r.kind));
      return h('tr', { 'data-incident': r.id, 'data-lane': r.lane, onclick: () => this.o.onSelect(r.id) },
        h('td', { class: 'kind' }, open, r.verified ? '' : h('span', { class: 'tag warn' }, t('unverified'))),
        h('td', { class: 'resident' }, r.client_name || `${t('unknown.resident')} (${r.device_id})`),
        h('td', {}, [r.district, r.street].filter(Boolean).join(' ') || '—'),
        h('td', { class: 'since' }, h('span', { class: 'elapsed' })),
        h('td', { class: 'limit' }, h('span', { class: 'limit-text' }),
          r.lane === 'life_safety' ? h('span', { class: 'meter', 'aria-hidden': 'true' }, h('span', { class: 'fill' }),
            h('span', { class: 'mark m60' }), h('span', { class: 'mark m180' })) : ''),
        h('td', { class: 'presses' }, String(r.press_count)),
        h('td', { class: 'claimed' }, r.claimed_by ? r.claimed_by.replace(/^operator:/, '') : '—'),
        h('td', { class: 'state' }, stateLabel(r.state)));
    });
    return h('table', { class: 'queue-table' }, h('thead', {}, head), h('tbody', {}, body));
  }

  /** Once a second: the clocks, the colours, the supervisor's counts. */
  tick() {
    if (!this.rows) return;
    const at = now();
    const byId = new Map(this.rows.map((r) => [r.id, r]));
    for (const tr of this.el.querySelectorAll('tr[data-incident]')) {
      const r = byId.get(Number(tr.dataset.incident));
      if (!r) continue;
      const u = urgency(r, at);
      tr.classList.remove('claimed', 'technical', 'waiting', 'over60', 'over180');
      tr.classList.add(u);
      tr.dataset.urgency = u;
      tr.querySelector('.elapsed').textContent = clock(at - r.opened_at);
      tr.querySelector('.limit-text').textContent = limitText(r, at);
      const fillBar = tr.querySelector('.meter .fill');
      if (fillBar) fillBar.style.width = `${Math.min(100, ((at - r.opened_at) / LIMIT_MS) * 100)}%`;
    }
    if (this.summary) this.renderSummary(at);
  }

  renderSummary(at) {
    const rows = this.rows;
    const count = (u) => rows.filter((r) => urgency(r, at) === u).length;
    const unclaimed = rows.filter((r) => !r.claimed_by && r.lane === 'life_safety');
    const holders = new Map();
    for (const r of rows) {
      if (!r.claimed_by) continue;
      const who = r.claimed_by.replace(/^operator:/, '');
      if (!holders.has(who)) holders.set(who, []);
      holders.get(who).push(r);
    }
    const over60 = count('over60') + count('over180');
    const over180 = count('over180');
    const stat = (cls, label, n) => h('div', { class: `stat ${cls}` }, h('span', { class: 'n' }, String(n)), ' ', label);
    const ref = (r) => h('button', { type: 'button', class: 'link', onclick: () => this.o.onSelect(r.id) }, `#${r.id}`);
    fill(this.summary,
      h('div', { class: 'stats' },
        stat('', t('sup.open'), rows.length),
        stat(unclaimed.length ? 'waiting' : '', t('sup.unclaimed'), unclaimed.length),
        stat(over60 ? 'over60' : '', t('sup.over60'), over60),
        stat(over180 ? 'over180' : '', t('sup.over180'), over180)),
      h('div', { class: 'holders' },
        h('h3', {}, t('sup.holders')),
        holders.size
          ? h('ul', {}, [...holders].map(([who, rs]) => h('li', {}, h('strong', {}, who), ': ', rs.map((r) => [ref(r), ' ']))))
          : h('p', { class: 'muted' }, t('sup.nobody'))));
  }
}
