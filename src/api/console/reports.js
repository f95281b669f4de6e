// The city's monthly reports for regulators, supervisors and admins: a China
// Standard Time month, per provider, district, street or subsidy category;
// every figure of the report with the targets beside the percentages (met or
// not, in words and colour), a bar chart of the calls answered within the
// first limit, the list of incidents over a limit, and the CSV files.

import { apiFile, api, now } from './api.js';
import { barChart } from './chart.js';
import { fill, h } from './dom.js';
import { kindLabel, label, t } from './i18n.js';
import { problem } from './incident.js';

const GROUPINGS = ['provider', 'district', 'street', 'category'];
const CLOSED = ['resolved', 'closed', 'cancelled', 'merged'];
const pad = (n) => String(n).padStart(2, '0');

/** The China Standard Time (UTC+8) month of a moment: `YYYY-MM`. */
export function cstMonth(ms) {
  const d = new Date(ms + 8 * 3600 * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}`;
}

/** A moment in China Standard Time: `YYYY-MM-DD HH:MM`. */
function cstTime(ms) {
  const d = new Date(ms + 8 * 3600 * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
}

/** A percentage as the city reads it: two decimals. */
const pct = (v) => `${v.toFixed(2)} %`;

/** A duration as the breach list words it: seconds for answers, minutes for attendance. */
function duration(measure, secs) {
  if (measure === 'answer') return t('dur.s', { n: secs });
  const m = Math.floor(secs / 60);
  const rest = secs % 60;
  return rest ? t('dur.min_s', { m, s: rest }) : t('dur.min', { n: m });
}

/** Why an incident is on the breach list, in the console's language. */
function why(b) {
  const limit = duration(b.measure, b.limit_secs);
  const open = !CLOSED.includes(b.state);
  if (b.actual_secs != null) {
    const took = duration(b.measure, b.actual_secs);
    return b.measure === 'answer' ? t('why.answered', { took, limit }) : t('why.attended', { took, limit });
  }
  if (b.measure === 'answer') return open ? t('why.not_answered', { limit }) : t('why.never_answered', { limit });
  return open ? t('why.not_arrived', { limit }) : t('why.no_arrival', { limit });
}

/** The name of a group as a person reads it. */
function groupName(row, by) {
  const known = (v) => (v === '(unknown)' ? t('rep.unknown') : v);
  switch (by) {
    case 'provider':
      return row.provider === '(none)' ? t('rep.no_provider') : known(row.provider);
    case 'district':
      return known(row.district);
    case 'street':
      return row.street === '(unknown)' ? t('rep.unknown') : `${row.district} ${row.street}`;
    default:
      return row.subsidy_category === '(none)' ? t('rep.no_category') : known(label('subsidy', row.subsidy_category));
  }
}

export class ReportsView {
  /**
   * @param {object} o
   * @param {(kind: 'ok'|'error', text: string) => void} o.notify
   * @param {((id: number) => void)|null} o.onOpen  open an incident (staff), or null (regulators)
   */
  constructor(o) {
    this.o = o;
    this.report = null;
    this.breaches = null;
    this.error = null;
    this.seq = 0;
    this.month = cstMonth(now());
    this.by = 'provider';
    this.el = h('section', { class: 'reports panel', 'aria-labelledby': 'reports-title', 'data-test': 'reports' });
    this.head = h('div', {});
    this.body = h('div', { 'aria-live': 'polite' });
    fill(this.el, this.head, this.body);
    this.relabel();
  }

  start() {
    this.load();
  }

  stop() {}

  /** Shown again (a tab): the figures may have moved on. */
  show() {
    this.load();
  }

  /** The title and the controls are built once (and again in another language): focus stays put. */
  relabel() {
    fill(this.head, h('h2', { id: 'reports-title' }, t('rep.title')), this.controls());
    this.render();
  }

  query(format) {
    return `month=${encodeURIComponent(this.month)}&format=${format}`;
  }

  async load() {
    if (!/^\d{4}-\d\d$/.test(this.month)) {
      this.error = t('rep.month_bad');
      this.render();
      return;
    }
    const seq = ++this.seq;
    this.error = null;
    this.loading = true;
    this.render();
    try {
      const [report, breaches] = await Promise.all([
        api('GET', `/api/v1/reports/monthly?${this.query('json')}&by=${this.by}`),
        api('GET', `/api/v1/sla/breaches?${this.query('json')}`),
      ]);
      if (seq !== this.seq) return;
      this.report = report;
      this.breaches = breaches;
    } catch (e) {
      if (seq !== this.seq) return;
      this.report = null;
      this.breaches = null;
      this.error = t('error.load', { message: problem(e) });
    }
    this.loading = false;
    this.render();
  }

  /** Fetch a CSV with the token and hand it to the browser as a download. */
  async download(path, fallback) {
    try {
      const { blob, filename } = await apiFile(path, 'text/csv');
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: filename || fallback, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      this.o.notify('ok', t('rep.saved', { name: filename || fallback }));
    } catch (e) {
      this.o.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  controls() {
    const month = h('input', {
      id: 'report-month',
      type: 'month',
      value: this.month,
      max: cstMonth(now()),
      required: true,
      onchange: (e) => {
        this.month = e.target.value;
        this.load();
      },
    });
    const by = h('select', {
      id: 'report-by',
      onchange: (e) => {
        this.by = e.target.value;
        this.load();
      },
    }, GROUPINGS.map((g) => h('option', { value: g, selected: g === this.by }, label('by', g))));
    const csv = h('button', {
      type: 'button',
      id: 'report-csv',
      onclick: () => this.download(`/api/v1/reports/monthly?${this.query('csv')}&by=${this.by}`, `pingantong-${this.month}-${this.by}.csv`),
    }, `⇩ ${t('rep.csv')}`);
    const breachCsv = h('button', {
      type: 'button',
      id: 'breaches-csv',
      onclick: () => this.download(`/api/v1/sla/breaches?${this.query('csv')}`, `pingantong-${this.month}-breaches.csv`),
    }, `⇩ ${t('rep.csv_breaches')}`);
    return h('div', { class: 'toolbar' },
      h('label', { for: 'report-month' }, t('rep.month')), month,
      h('label', { for: 'report-by' }, t('rep.by')), by,
      h('span', { class: 'spacer' }), csv, breachCsv);
  }

  render() {
    const parts = [];
    const r = this.report;
    if (this.error) parts.push(h('p', { class: 'problem', role: 'alert' }, this.error));
    if (this.loading && !r) parts.push(h('p', { class: 'muted' }, t('rep.loading')));
    if (r) {
      const tg = r.targets;
      parts.push(
        h('p', { class: 'report-period' }, t('rep.as_of', { month: r.month, at: cstTime(r.as_of_ms) })),
        h('p', { class: 'report-targets' }, t('rep.targets', {
          a1: tg.answer_secs, p1: tg.answer_pct, a2: tg.answer_max_secs, p2: tg.answer_max_pct,
          m1: tg.attend_mins, q1: tg.attend_pct, m2: tg.attend_max_mins, q2: tg.attend_max_pct,
        })),
        h('div', { class: 'table-wrap' }, this.table(r)),
        h('h3', {}, t('chart.title', { s: tg.answer_secs })),
        h('div', { class: 'chart-wrap' }, this.chart(r)));
    }
    if (this.breaches) parts.push(this.breachList(this.breaches));
    fill(this.body, parts);
    this.el.dataset.loaded = String(!this.loading && r !== null);
    this.el.setAttribute('aria-busy', String(Boolean(this.loading)));
  }

  table(r) {
    const tg = r.targets;
    const by = r.by;
    const keyCols = by === 'street' ? ['rep.col.district', 'rep.col.street'] : [`rep.col.${by}`];
    const th = (text, attrs) => h('th', { scope: 'col', ...attrs }, text);
    const head1 = h('tr', {},
      keyCols.map((k) => th(t(k), { rowspan: 2 })),
      th(t('rep.h.incidents'), { colspan: 4, scope: 'colgroup' }),
      th(t('rep.h.handled'), { colspan: 2, scope: 'colgroup' }),
      th(t('rep.h.answer'), { colspan: 4, scope: 'colgroup' }),
      th(t('rep.h.attend'), { colspan: 4, scope: 'colgroup' }),
      th(t('rep.h.devices'), { colspan: 3, scope: 'colgroup' }));
    const head2 = h('tr', {},
      th(t('rep.life_safety')), th(t('rep.technical')), th(t('rep.cancelled')), th(t('rep.merged')),
      th(t('rep.handled')), th('%'),
      th(t('rep.measured')), th(t('rep.within_s', { s: tg.answer_secs })), th(t('rep.within_s', { s: tg.answer_max_secs })), th(t('rep.met')),
      th(t('rep.measured')), th(t('rep.within_min', { m: tg.attend_mins })), th(t('rep.within_min', { m: tg.attend_max_mins })), th(t('rep.met')),
      th(t('rep.watched')), th(t('rep.online')), th(t('rep.uptime')));
    const known = (v) => (v === '(unknown)' ? t('rep.unknown') : v);
    const keyCells = (row) => (by === 'street'
      ? [h('th', { scope: 'row' }, known(row.district)), h('th', { scope: 'row' }, known(row.street))]
      : [h('th', { scope: 'row' }, groupName(row, by))]);
    const body = r.rows.map((row) => this.figures(h('tr', { 'data-row': groupName(row, by) }), keyCells(row), row, tg));
    const total = this.figures(h('tr', { class: 'total', 'data-row': 'total' }),
      [h('th', { scope: 'row', colspan: keyCols.length }, t('rep.total'))], r.total, tg);
    return h('table', { class: 'report-table', 'data-test': 'report-table' },
      h('thead', {}, head1, head2),
      h('tbody', {}, r.rows.length ? body : h('tr', {}, h('td', { colspan: 17 + keyCols.length, class: 'muted' }, t('rep.empty')))),
      h('tfoot', {}, total));
  }

  /** One row's figures after its key cells. */
  figures(tr, keys, f, tg) {
    const num = (n) => h('td', { class: 'num' }, String(n));
    const measured = (m) => h('td', { class: 'num' }, String(m.measured),
      m.pending ? h('div', { class: 'small muted' }, t('rep.pending', { n: m.pending })) : null);
    const met = (v) => h('td', { class: `met ${v === true ? 'pass' : v === false ? 'fail' : 'none'}` },
      v === true ? t('rep.met.yes') : v === false ? t('rep.met.no') : '—');
    const share = (value, count, base, target) => {
      if (value == null) return h('td', { class: 'pct none' }, '—', h('div', { class: 'small muted' }, t('rep.nothing')));
      const ok = target == null ? null : value >= target;
      return h('td', { class: `pct ${ok === null ? '' : ok ? 'pass' : 'fail'}` },
        h('span', { class: 'value' }, pct(value)),
        count != null ? h('div', { class: 'small' }, `${count} / ${base}`) : null,
        ok === null ? null : h('div', { class: 'verdict' }, ok ? t('rep.pass') : t('rep.fail'),
          h('div', { class: 'target' }, t('rep.target', { target }))));
    };
    const d = f.devices;
    fill(tr, keys,
      num(f.incidents_life_safety), num(f.incidents_technical), num(f.cancelled), num(f.merged),
      h('td', { class: 'num' }, `${f.handled} / ${f.handled_base}`), share(f.handled_pct, null, null, null),
      measured(f.answer),
      share(f.answer.within_pct, f.answer.within, f.answer.measured, tg.answer_pct),
      share(f.answer.within_max_pct, f.answer.within_max, f.answer.measured, tg.answer_max_pct),
      met(f.answer.target_met),
      measured(f.attend),
      share(f.attend.within_pct, f.attend.within, f.attend.measured, tg.attend_pct),
      share(f.attend.within_max_pct, f.attend.within_max, f.attend.measured, tg.attend_max_pct),
      met(f.attend.target_met),
      num(d.watched),
      share(d.online_pct, d.online, d.watched, null),
      share(d.uptime_pct, null, null, null));
    return tr;
  }

  chart(r) {
    const tg = r.targets;
    const bars = r.rows.map((row) => ({ name: groupName(row, r.by), pct: row.answer.within_pct }));
    bars.push({ name: t('rep.total'), pct: r.total.answer.within_pct, total: true });
    return barChart({
      title: t('chart.title', { s: tg.answer_secs }),
      desc: t('chart.desc', { s: tg.answer_secs, pct: tg.answer_pct }),
      bars,
      target: tg.answer_pct,
      targetLabel: t('chart.target', { pct: tg.answer_pct }),
      valueText: (v) => (v == null
        ? t('chart.none')
        : `${pct(v)} ${v >= tg.answer_pct ? t('rep.pass') : t('rep.fail')} (${t('rep.target', { target: tg.answer_pct })})`),
    });
  }

  breachList(list) {
    const rows = list.breaches;
    const title = h('h3', { id: 'breach-title' }, t('br.title'), ' ', h('span', { class: 'count' }, t('queue.count', { n: rows.length })));
    if (!rows.length) return h('div', { class: 'breach-list', 'data-test': 'breach-list' }, title, h('p', { class: 'empty' }, t('br.empty')));
    const incident = (b) => (this.o.onOpen
      ? h('button', { type: 'button', class: 'link', onclick: () => this.o.onOpen(b.incident_id) }, `#${b.incident_id}`)
      : `#${b.incident_id}`);
    return h('div', { class: 'breach-list', 'data-test': 'breach-list' }, title,
      h('table', { 'aria-labelledby': 'breach-title' },
        h('thead', {}, h('tr', {}, ['br.col.incident', 'br.col.opened', 'col.kind', 'col.provider', 'col.where', 'br.col.measure', 'br.col.why']
          .map((k) => h('th', { scope: 'col' }, t(k))))),
        h('tbody', {}, rows.map((b) => h('tr', { 'data-breach': b.incident_id },
          h('td', {}, incident(b)),
          h('td', { class: 'when' }, cstTime(b.opened_at)),
          h('td', {}, kindLabel(b.kind)),
          h('td', {}, b.provider || t('rep.no_provider')),
          h('td', {}, `${b.district} ${b.street}`),
          h('td', {}, label('measure', b.measure)),
          h('td', { class: 'why', title: b.why }, why(b)))))));
  }
}
