// The screen-pop of one incident: who the resident is, where, what they live
// with, who to call, the device, what has been done; and the operator's
// actions on it. The actions panel is built once per incident so typing and
// keyboard focus survive the live refreshes of everything around it.

import { ApiError, api, now, session } from './api.js';
import { clock, distance, fill, h, osm, when } from './dom.js';
import { kindLabel, label, stateLabel, t } from './i18n.js';

const OPEN = ['received', 'queued', 'claimed', 'in_contact', 'dispatched', 'carer_accepted', 'on_scene'];
const OUTCOMES = ['help_given', 'false_alarm', 'hospital', 'no_action_needed', 'other'];
const SERVICES = ['120', '110', '119'];
// Why a call for help may be cancelled: the server's fixed list.
const CANCEL_REASONS = ['resident_false_alarm', 'duplicate', 'test', 'device_fault', 'operator_error'];

/** What a failed request says to a person. */
export function problem(e) {
  if (e instanceof ApiError) {
    if (e.status === 0) return t(`net.${e.message}`);
    return `${e.message} (HTTP ${e.status})`;
  }
  return String(e && e.message ? e.message : e);
}

const field = (name, value, cls) =>
  h('div', { class: `field ${cls || ''}` }, h('dt', {}, name), h('dd', {}, value === '' || value == null ? '—' : value));

export class IncidentView {
  /**
   * @param {object} o
   * @param {boolean} o.canAct  operators and supervisors act; admins only read
   * @param {(kind: 'ok'|'error', text: string) => void} o.notify
   * @param {() => void} o.onChanged  something changed: reload the queue
   */
  constructor(o) {
    this.o = o;
    this.id = null;
    this.detail = null;
    this.carers = [];
    this.seq = 0;
    this.busy = false;
    this.el = h('section', { class: 'incident panel', 'aria-live': 'off', 'data-test': 'incident' });
    this.render();
  }

  async open(id) {
    if (id !== this.id) {
      this.id = id;
      this.detail = null;
      this.carers = [];
      this.actions = null;
      this.render();
    }
    await Promise.all([this.refresh(), this.loadCarers()]);
  }

  /** Reload the incident (after an action, or a feed event about it). */
  async refresh() {
    const id = this.id;
    if (id === null) return;
    const seq = ++this.seq;
    try {
      const d = await api('GET', `/api/v1/incidents/${id}`);
      if (seq !== this.seq || id !== this.id) return;
      this.detail = d;
      this.render();
    } catch (e) {
      if (id === this.id) this.o.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  async loadCarers() {
    const id = this.id;
    if (id === null || !this.o.canAct) return;
    try {
      const c = await api('GET', `/api/v1/incidents/${id}/carers`);
      if (id !== this.id) return;
      this.carers = c;
      this.fillCarers();
    } catch (e) {
      this.o.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  /** Re-render after a language change: the actions too. */
  relabel() {
    this.actions = null;
    this.render();
  }

  render() {
    const d = this.detail;
    if (this.id === null) {
      fill(this.el, h('p', { class: 'placeholder' }, t('incident.none')));
      this.el.removeAttribute('data-incident');
      return;
    }
    this.el.dataset.incident = this.id;
    if (!d) {
      fill(this.el, h('p', { class: 'muted' }, t('incident.loading', { id: this.id })));
      return;
    }
    this.el.dataset.state = d.incident.state;
    if (!this.layout) {
      this.layout = {
        header: h('header', { class: 'incident-head' }),
        left: h('div', { class: 'col' }),
        actions: h('div', { class: 'actions-slot' }),
        right: h('div', { class: 'col below' }),
        timeline: h('div', { class: 'timeline-slot' }),
      };
    }
    const L = this.layout;
    if (!this.el.contains(L.header)) {
      fill(this.el, L.header,
        h('div', { class: 'columns' }, L.left, h('div', { class: 'col' }, L.actions)),
        L.right, L.timeline);
    }
    fill(L.header, this.header(d));
    fill(L.left, this.resident(d), this.medical(d), this.contacts(d), this.devices(d));
    if (this.o.canAct) {
      if (!this.actions) {
        this.actions = this.buildActions(d);
        fill(L.actions, this.actions.el);
        this.fillCarers();
      }
      this.updateActions(d);
    } else {
      fill(L.actions, h('p', { class: 'readonly' }, t('incident.readonly')));
    }
    fill(L.right, this.dispatches(d), this.handoffs(d), this.notices(d));
    fill(L.timeline, this.timeline(d));
  }

  header(d) {
    const i = d.incident;
    return [
      h('h2', {}, `${kindLabel(i.kind)} · #${i.id}`, ' ',
        h('span', { class: `badge state-${i.state}`, 'data-test': 'state' }, stateLabel(i.state))),
      h('dl', { class: 'facts' },
        field(t('f.claimed'), i.claimed_by ? i.claimed_by.replace(/^operator:/, '') : t('f.unclaimed')),
        field(t('f.presses'), String(i.press_count)),
        field(t('f.device'), i.device_id),
        i.outcome ? field(t('f.outcome'), label('outcome', i.outcome)) : null,
        i.verified ? null : field(t('f.verified'), t('unverified'), 'warn')),
      i.advised_service
        ? h('p', { class: 'advised', 'data-test': 'advised' }, `☎ ${t('advised', { service: i.advised_service })}`)
        : null,
    ];
  }

  resident(d) {
    const c = d.client;
    if (!c) return h('div', { class: 'card' }, h('h3', {}, t('resident')), h('p', {}, t('unknown.resident')));
    const age = c.birth_year ? new Date().getFullYear() - c.birth_year : null;
    const seen = d.devices
      .filter((v) => v.lat != null && v.lon != null)
      .sort((a, b) => (b.last_seen_at || 0) - (a.last_seen_at || 0))[0];
    const links = [];
    if (seen) links.push(h('a', { href: osm(seen.lat, seen.lon), target: '_blank', rel: 'noopener noreferrer' }, t('map.device')));
    if (c.lat != null && c.lon != null) {
      links.push(h('a', { href: osm(c.lat, c.lon), target: '_blank', rel: 'noopener noreferrer' }, t('map.home')));
    }
    return h('div', { class: 'card resident' },
      h('h3', {}, t('resident')),
      h('p', { class: 'name', id: 'resident-name', lang: 'zh-CN' }, c.name),
      h('dl', { class: 'facts' },
        field(t('f.age'), age !== null ? t('age', { age, year: c.birth_year }) : ''),
        field(t('f.language'), label('lang', c.language)),
        field(t('f.address'), c.address),
        field(t('f.area'), `${c.district} ${c.street}`),
        c.subsidy_category ? field(t('f.subsidy'), label('subsidy', c.subsidy_category)) : null,
        c.away_until ? field(t('f.away'), when(c.away_until), 'warn') : null,
        field(t('f.map'), links.length ? links.flatMap((a, k) => (k ? [' · ', a] : [a])) : '')));
  }

  medical(d) {
    const c = d.client;
    if (!c) return null;
    return h('div', { class: 'card medical' },
      h('h3', {}, t('medical')),
      h('dl', { class: 'facts' },
        field(t('f.notes'), c.medical_notes),
        field(t('f.medications'), c.medications),
        field(t('f.allergies'), c.allergies ? `⚠ ${c.allergies}` : '', c.allergies ? 'allergy' : ''),
        field(t('f.keysafe'), c.key_safe)));
  }

  contacts(d) {
    const c = d.client;
    if (!c) return null;
    return h('div', { class: 'card' },
      h('h3', {}, t('contacts')),
      c.contacts.length
        ? h('table', {},
          h('thead', {}, h('tr', {}, [t('col.order'), t('col.name'), t('col.relation'), t('col.phone')].map((x) => h('th', { scope: 'col' }, x)))),
          h('tbody', {}, c.contacts.map((k) => h('tr', {},
            h('td', {}, String(k.position)), h('td', {}, k.name), h('td', {}, k.relation),
            h('td', {}, k.phone ? h('a', { href: `tel:${k.phone}` }, k.phone) : '—')))))
        : h('p', { class: 'muted' }, t('none')));
  }

  devices(d) {
    return h('div', { class: 'card' },
      h('h3', {}, t('devices')),
      d.devices.length
        ? h('ul', { class: 'plain' }, d.devices.map((v) => h('li', {},
          h('strong', {}, v.id), ` (${v.protocol}) · `,
          t('battery', { pct: v.battery == null ? '—' : v.battery }), v.battery != null && v.battery < 20 ? ' ⚠' : '', ' · ',
          t('last_seen', { at: when(v.last_seen_at), ago: v.last_seen_at ? clock(now() - v.last_seen_at) : '—' }))))
        : h('p', { class: 'muted' }, t('none')));
  }

  dispatches(d) {
    return h('div', { class: 'card', 'data-test': 'dispatches' },
      h('h3', {}, t('dispatches')),
      d.dispatches.length
        ? h('table', {},
          h('thead', {}, h('tr', {}, [t('col.carer'), t('col.provider'), t('col.state'), t('col.distance'), t('col.offered')].map((x) => h('th', { scope: 'col' }, x)))),
          h('tbody', {}, d.dispatches.map((x) => h('tr', { 'data-dispatch': x.id },
            h('td', {}, `${x.carer_name} (#${x.carer_id})`),
            h('td', {}, x.provider_name, x.fallback ? h('span', { class: 'tag' }, t('fallback')) : ''),
            h('td', {}, label('dstate', x.state)),
            h('td', {}, distance(x.distance_m)),
            h('td', {}, when(x.offered_at))))))
        : h('p', { class: 'muted' }, t('none')));
  }

  handoffs(d) {
    return h('div', { class: 'card', 'data-test': 'handoffs' },
      h('h3', {}, t('handoffs')),
      d.handoffs.length
        ? h('ul', { class: 'plain' }, d.handoffs.map((x) => h('li', { 'data-handoff': x.id },
          h('strong', {}, x.service), ` ${x.reference || '—'} · ${x.operator.replace(/^operator:/, '')} · ${when(x.at)}`,
          x.outcome ? ` · ${x.outcome}` : '')))
        : h('p', { class: 'muted' }, t('none')));
  }

  notices(d) {
    const contacts = new Map(((d.client && d.client.contacts) || []).map((k) => [k.position, k]));
    return h('div', { class: 'card', 'data-test': 'notices' },
      h('h3', {}, t('notices')),
      d.notifications.length
        ? h('table', {},
          h('thead', {}, h('tr', {}, [t('col.contact'), t('col.channel'), t('col.status'), t('col.attempts'), t('col.delivered')].map((x) => h('th', { scope: 'col' }, x)))),
          h('tbody', {}, d.notifications.map((n) => {
            const k = contacts.get(n.position);
            return h('tr', {},
              h('td', {}, k ? `${k.name} (${k.relation})` : `#${n.position}`),
              h('td', {}, n.channel),
              h('td', { class: `notice-${n.status}` }, label('notice', n.status), n.last_error ? h('div', { class: 'muted small' }, n.last_error) : ''),
              h('td', {}, String(n.attempts)),
              h('td', {}, when(n.delivered_at)));
          })))
        : h('p', { class: 'muted' }, t('none')));
  }

  timeline(d) {
    return h('div', { class: 'card timeline' },
      h('h3', {}, t('timeline')),
      h('ol', { class: 'plain' }, d.timeline.map((e) => h('li', {},
        h('time', {}, when(e.at)), ' ',
        h('strong', {}, label('action', e.action)),
        e.to_state && e.to_state !== e.from_state ? ` → ${stateLabel(e.to_state)}` : '',
        ` · ${e.actor}`,
        e.detail ? h('span', { class: 'detail' }, ` — ${e.detail}`) : ''))));
  }

  // ---- actions --------------------------------------------------------

  buildActions(d) {
    const a = {}; // buttons by action name, and the inputs
    const button = (name, cls, run) => {
      a[name] = h('button', { type: 'button', class: cls || '', 'data-action': name, onclick: () => this.act(name, run) }, t(`act.${name}`));
      return a[name];
    };
    const select = (id, options, chosen) =>
      h('select', { id }, options.map(([v, text]) => h('option', { value: v, selected: v === chosen }, text)));

    a.noteText = h('textarea', { id: 'note-text', rows: 2, maxlength: 2000 });
    a.carer = h('select', { id: 'dispatch-carer' });
    a.service = select('handoff-service', SERVICES.map((s) => [s, label('service', s)]), d.incident.advised_service || '120');
    a.reference = h('input', { id: 'handoff-reference', type: 'text', maxlength: 100, autocomplete: 'off' });
    a.outcome = select('close-outcome', OUTCOMES.map((o) => [o, label('outcome', o)]), 'help_given');
    a.closeDetail = h('input', { id: 'close-detail', type: 'text', maxlength: 2000 });
    a.cancelReason = h('select', { id: 'cancel-reason' },
      h('option', { value: '' }, t('cancel.choose')),
      CANCEL_REASONS.map((r) => h('option', { value: r }, label('outcome', r))));
    a.cancelDetail = h('input', { id: 'cancel-detail', type: 'text', maxlength: 2000 });
    a.cancelConfirm = h('input', { id: 'cancel-confirm', type: 'checkbox' });
    // Ending another operator's incident is an explicit take-over.
    a.takeOver = h('input', { id: 'take-over', type: 'checkbox' });
    a.takeOverLabel = h('label', { for: 'take-over' });
    a.takeOverRow = h('p', { class: 'take-over', hidden: true }, a.takeOver, ' ', a.takeOverLabel);
    const id = () => this.id;
    const post = (path, body) => api('POST', `/api/v1/incidents/${id()}/${path}`, body);
    const takeOver = () => (a.takeOverRow.hidden ? {} : { take_over: a.takeOver.checked });

    a.el = h('div', { class: 'card actions', 'data-test': 'actions' },
      h('h3', {}, t('actions')),
      a.takeOverRow,
      h('div', { class: 'buttons' },
        button('claim', 'primary', () => post('claim', {})),
        button('contact', '', () => post('contact', {})),
        button('resolve', '', () => post('resolve', takeOver()))),
      h('fieldset', {}, h('legend', {}, t('act.dispatch')),
        h('label', { for: 'dispatch-carer' }, t('dispatch.carer')), a.carer, ' ',
        button('dispatch', '', async () => {
          const carer = Number(a.carer.value);
          if (!carer) throw new Error(t('dispatch.nobody'));
          await post('dispatch', { carer_id: carer });
          this.loadCarers();
        }), ' ',
        h('button', { type: 'button', class: 'subtle', onclick: () => this.loadCarers(), 'aria-label': t('dispatch.reload') }, '↻')),
      h('fieldset', {}, h('legend', {}, t('act.handoff')),
        h('label', { for: 'handoff-service' }, t('handoff.service')), a.service, ' ',
        h('label', { for: 'handoff-reference' }, t('handoff.reference')), a.reference, ' ',
        button('handoff', '', async () => {
          await post('handoff', { service: a.service.value, reference: a.reference.value.trim() });
          a.reference.value = '';
        })),
      h('fieldset', {}, h('legend', {}, t('act.note')),
        h('label', { for: 'note-text', class: 'sr-only' }, t('act.note')), a.noteText,
        button('note', '', async () => {
          const text = a.noteText.value.trim();
          if (!text) throw new Error(t('note.empty'));
          await api('POST', `/api/v1/incidents/${id()}/notes`, { text });
          a.noteText.value = '';
        })),
      h('fieldset', {}, h('legend', {}, t('act.close')),
        h('label', { for: 'close-outcome' }, t('close.outcome')), a.outcome, ' ',
        h('label', { for: 'close-detail' }, t('close.detail')), a.closeDetail, ' ',
        button('close', '', async () => {
          await post('close', { outcome: a.outcome.value, detail: a.closeDetail.value.trim() || undefined, ...takeOver() });
          a.closeDetail.value = '';
        })),
      h('fieldset', {}, h('legend', {}, t('act.cancel')),
        h('label', { for: 'cancel-reason' }, t('cancel.reason')), a.cancelReason, ' ',
        h('label', { for: 'cancel-detail' }, t('close.detail')), a.cancelDetail, ' ',
        h('label', { class: 'check' }, a.cancelConfirm, ' ', t('cancel.confirm')), ' ',
        button('cancel', 'danger', async () => {
          const reason = a.cancelReason.value;
          const lifeSafety = this.detail && this.detail.incident.lane === 'life_safety';
          if (lifeSafety && !reason) throw new Error(t('cancel.need_reason'));
          if (lifeSafety && !a.cancelConfirm.checked) throw new Error(t('cancel.need_confirm'));
          await post('cancel', {
            reason: reason || undefined,
            confirm: a.cancelConfirm.checked,
            detail: a.cancelDetail.value.trim() || undefined,
            ...takeOver(),
          });
          a.cancelReason.value = '';
          a.cancelDetail.value = '';
          a.cancelConfirm.checked = false;
        })));
    return a;
  }

  fillCarers() {
    const a = this.actions;
    if (!a) return;
    const keep = a.carer.value;
    fill(a.carer, this.carers.length
      ? this.carers.map((c, k) => h('option', { value: c.carer_id },
        `${k === 0 ? `${t('dispatch.suggested')}: ` : ''}${c.name} #${c.carer_id} · ${t('provider')} ${c.provider_id}` +
        `${c.distance_m != null ? ` · ${distance(c.distance_m)}` : ''}${c.fallback ? ` · ${t('fallback')}` : ''}`))
      : h('option', { value: '' }, t('dispatch.none')));
    if (keep && this.carers.some((c) => String(c.carer_id) === keep)) a.carer.value = keep;
    a.el.dataset.carers = String(this.carers.length);
    if (this.detail) this.updateActions(this.detail);
  }

  /** Buttons follow the incident's state; the server has the last word. */
  updateActions(d) {
    const a = this.actions;
    const s = d.incident.state;
    const open = OPEN.includes(s);
    const on = {
      claim: open && !d.incident.claimed_by,
      contact: s === 'claimed',
      resolve: ['claimed', 'in_contact', 'dispatched', 'carer_accepted', 'on_scene'].includes(s),
      dispatch: open && this.carers.length > 0,
      handoff: open && s !== 'received',
      note: true,
      close: s === 'resolved',
      cancel: open && s !== 'on_scene',
    };
    for (const [name, enabled] of Object.entries(on)) a[name].disabled = this.busy || !enabled;
    const me = session() ? `operator:${session().username}` : null;
    const holder = d.incident.claimed_by;
    const others = Boolean(open || s === 'resolved') && Boolean(holder) && holder !== me;
    a.takeOverRow.hidden = !others;
    if (others) a.takeOverLabel.textContent = t('take_over', { who: holder.replace(/^operator:/, '') });
    else a.takeOver.checked = false;
    a.el.setAttribute('aria-busy', String(this.busy));
  }

  async act(name, run) {
    if (this.busy || !this.actions) return;
    this.busy = true;
    this.updateActions(this.detail);
    try {
      await run();
      this.o.notify('ok', t('done', { action: t(`act.${name}`), id: this.id }));
      this.o.onChanged();
    } catch (e) {
      this.o.notify('error', t('error.action', { action: t(`act.${name}`), message: problem(e) }));
    } finally {
      this.busy = false;
      await this.refresh();
      if (this.detail && this.actions) this.updateActions(this.detail);
    }
  }
}
