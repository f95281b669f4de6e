// The wellbeing work list: residents whose devices nobody has pressed,
// cancelled or tested for 24, 48 or 72 hours, and whom nobody has called in
// that time. Operators and supervisors record each call and how it went; the
// resident then leaves the list. Admins read it.

import { api } from './api.js';
import { fill, h, when } from './dom.js';
import { label, t } from './i18n.js';
import { problem } from './incident.js';

const HOURS = [24, 48, 72];
const OUTCOMES = ['well', 'needs_help', 'no_answer', 'visited', 'away'];

export class WellbeingView {
  /**
   * @param {object} o
   * @param {boolean} o.canAct  operators and supervisors record calls; admins only read
   * @param {(kind: 'ok'|'error', text: string) => void} o.notify
   */
  constructor(o) {
    this.o = o;
    this.hours = 24;
    this.rows = null;
    this.seq = 0;
    this.busy = new Set(); // client ids with a call being recorded
    this.inputs = new Map(); // client id -> { outcome, note, error }: kept across reloads
    this.el = h('section', { class: 'wellbeing panel', 'aria-labelledby': 'wellbeing-title', 'data-test': 'wellbeing' });
    this.head = h('div', {});
    this.body = h('div', {});
    fill(this.el, this.head, this.body);
    this.relabel();
  }

  /** Shown (a tab): read the list afresh. */
  show() {
    this.load();
  }

  stop() {}

  relabel() {
    const hours = h('select', {
      id: 'wellbeing-hours',
      onchange: (e) => {
        this.hours = Number(e.target.value);
        this.rows = null;
        this.render();
        this.load();
      },
    }, HOURS.map((n) => h('option', { value: n, selected: n === this.hours }, t('wb.hours_n', { n }))));
    fill(this.head,
      h('h2', { id: 'wellbeing-title' }, t('wb.title'), ' ', h('span', { class: 'count' })),
      h('div', { class: 'toolbar' },
        h('label', { for: 'wellbeing-hours' }, t('wb.hours')), hours,
        h('button', { type: 'button', id: 'wellbeing-reload', onclick: () => this.load() }, `↻ ${t('wb.reload')}`)),
      h('p', { class: 'help' }, t('wb.help', { hours: this.hours })),
      this.o.canAct ? null : h('p', { class: 'readonly' }, t('wb.readonly')));
    this.render();
  }

  async load() {
    const seq = ++this.seq;
    try {
      const rows = await api('GET', `/api/v1/wellbeing?hours=${this.hours}`);
      if (seq !== this.seq) return;
      this.rows = rows;
      this.render();
    } catch (e) {
      if (seq === this.seq) this.o.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  render() {
    const rows = this.rows;
    const help = this.head.querySelector('.help');
    if (help) help.textContent = t('wb.help', { hours: this.hours });
    const count = this.head.querySelector('.count');
    if (count) count.textContent = rows ? t('queue.count', { n: rows.length }) : '';
    // Keep the keyboard where it was across a reload.
    const focused = document.activeElement && this.body.contains(document.activeElement) ? document.activeElement.id : null;
    if (rows === null) fill(this.body, h('p', { class: 'muted' }, t('queue.loading')));
    else if (!rows.length) fill(this.body, h('p', { class: 'empty' }, t('wb.empty')));
    else fill(this.body, this.table(rows));
    this.el.dataset.loaded = String(rows !== null);
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  }

  table(rows) {
    const cols = ['col.resident', 'col.where', 'wb.last_used', 'wb.last_call'];
    if (this.o.canAct) cols.push('wb.record_call');
    return h('table', { class: 'wellbeing-table' },
      h('thead', {}, h('tr', {}, cols.map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, rows.map((r) => this.row(r))));
  }

  row(r) {
    const id = r.client_id;
    const lastUsed = r.last_used_at == null
      ? h('span', { class: 'never' }, t('wb.never'))
      : when(r.last_used_at);
    const lastCall = r.last_check_at == null
      ? h('span', { class: 'muted' }, t('wb.not_called'))
      : [when(r.last_check_at), ' · ', h('strong', {}, label('check', r.last_outcome))];
    const tr = h('tr', { 'data-client': id },
      h('th', { scope: 'row', class: 'resident', lang: 'zh-CN' }, r.name),
      h('td', {}, [r.district, r.street].filter(Boolean).join(' ') || '—'),
      h('td', {}, lastUsed),
      h('td', {}, lastCall));
    if (this.o.canAct) tr.append(h('td', { class: 'record' }, this.form(r)));
    return tr;
  }

  /** Outcome, note and the button; what was typed survives a reload. */
  form(r) {
    const id = r.client_id;
    const keep = this.inputs.get(id) || { outcome: 'well', note: '', error: '' };
    this.inputs.set(id, keep);
    const outcome = h('select', { id: `wb-outcome-${id}`, onchange: (e) => { keep.outcome = e.target.value; } },
      OUTCOMES.map((o) => h('option', { value: o, selected: o === keep.outcome }, label('check', o))));
    const note = h('input', {
      id: `wb-note-${id}`, type: 'text', maxlength: 2000, value: keep.note, autocomplete: 'off',
      oninput: (e) => { keep.note = e.target.value; },
    });
    const busy = this.busy.has(id);
    return h('form', {
      class: 'record-call',
      'aria-busy': String(busy),
      onsubmit: (e) => {
        e.preventDefault();
        this.record(r);
      },
    },
    h('label', { for: outcome.id }, t('wb.outcome')), outcome, ' ',
    h('label', { for: note.id }, t('wb.note')), note, ' ',
    h('button', { type: 'submit', class: 'primary', 'data-action': 'record', disabled: busy }, t('wb.record')),
    keep.error ? h('p', { class: 'problem', role: 'alert' }, keep.error) : null);
  }

  async record(r) {
    const id = r.client_id;
    if (this.busy.has(id)) return;
    const keep = this.inputs.get(id);
    this.busy.add(id);
    keep.error = '';
    this.render();
    try {
      await api('POST', `/api/v1/clients/${id}/wellbeing-checks`, { outcome: keep.outcome, note: keep.note.trim() });
      this.inputs.delete(id);
      // Called: off the list at once, and the server says who is left.
      if (this.rows) this.rows = this.rows.filter((x) => x.client_id !== id);
      this.o.notify('ok', t('wb.done', { name: r.name, outcome: label('check', keep.outcome) }));
      this.load();
    } catch (e) {
      keep.error = t('error.action', { action: t('wb.record'), message: problem(e) });
      this.o.notify('error', keep.error);
    } finally {
      this.busy.delete(id);
      this.render();
    }
  }
}
