// Incidents waiting to be closed: help was given (a carer completed the job,
// or an operator resolved it), so they have left the open queue, and an
// operator still closes each with an outcome. A row opens the screen-pop.

import { fill, h, when } from './dom.js';
import { kindLabel, t } from './i18n.js';

export class ClosingView {
  /**
   * @param {object} o
   * @param {(id: number) => void} o.onSelect
   */
  constructor(o) {
    this.o = o;
    this.rows = null;
    this.selected = null;
    this.el = h('section', { class: 'closing panel', 'aria-labelledby': 'closing-title', 'data-test': 'closing' });
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
    const focused = document.activeElement && this.el.contains(document.activeElement)
      ? document.activeElement.dataset.open
      : undefined;
    const rows = this.rows || [];
    const parts = [
      h('h2', { id: 'closing-title' }, t('closing.title'), ' ',
        h('span', { class: 'count' }, this.rows ? t('queue.count', { n: rows.length }) : '')),
      h('p', { class: 'help' }, t('closing.help')),
    ];
    if (!this.rows) parts.push(h('p', { class: 'muted' }, t('queue.loading')));
    else if (!rows.length) parts.push(h('p', { class: 'muted' }, t('closing.empty')));
    else parts.push(this.table(rows));
    fill(this.el, parts);
    this.el.dataset.loaded = String(this.rows !== null);
    this.select(this.selected);
    if (focused) {
      const again = this.el.querySelector(`button[data-open="${focused}"]`);
      if (again) again.focus();
    }
  }

  table(rows) {
    const head = h('tr', {}, ['col.kind', 'col.resident', 'col.where', 'col.opened', 'col.claimed']
      .map((k) => h('th', { scope: 'col' }, t(k))));
    const body = rows.map((r) => h('tr', { 'data-incident': r.id, 'data-lane': r.lane, onclick: () => this.o.onSelect(r.id) },
      h('td', { class: 'kind' }, h('button', {
        type: 'button',
        class: 'open',
        'data-open': r.id,
        'aria-label': t('queue.open', { kind: kindLabel(r.kind), name: r.client_name || r.device_id }),
        onclick: (e) => {
          e.stopPropagation();
          this.o.onSelect(r.id);
        },
      }, kindLabel(r.kind))),
      h('td', { class: 'resident' }, r.client_name || `${t('unknown.resident')} (${r.device_id})`),
      h('td', {}, [r.district, r.street].filter(Boolean).join(' ') || '—'),
      h('td', {}, when(r.opened_at)),
      h('td', {}, r.claimed_by ? r.claimed_by.replace(/^operator:/, '') : '—')));
    return h('table', { class: 'queue-table closing-table' }, h('thead', {}, head), h('tbody', {}, body));
  }
}
