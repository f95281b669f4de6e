// A carer's own view: offers and jobs (refreshed every 5 s) with what is
// needed at the door, and the answers: accept, decline with a reason,
// arrived, completed with an outcome.

import { api } from './api.js';
import { distance, fill, h, osm, when } from './dom.js';
import { kindLabel, label, t } from './i18n.js';
import { problem } from './incident.js';

const POLL_MS = 5000;
const OUTCOMES = ['help_given', 'hospital', 'false_alarm', 'no_action_needed', 'other'];

export class CarerView {
  constructor(notify) {
    this.notify = notify;
    this.jobs = null;
    this.last = '';
    this.busy = false;
    this.inputs = new Map(); // dispatch id -> {reason, outcome}: survive refreshes
    this.el = h('section', { class: 'carer panel', 'aria-labelledby': 'jobs-title', 'data-test': 'jobs' });
    this.render();
  }

  start() {
    this.load();
    this.timer = setInterval(() => this.load(), POLL_MS);
  }

  stop() {
    clearInterval(this.timer);
  }

  async load() {
    try {
      const jobs = await api('GET', '/api/v1/carer/jobs');
      const text = JSON.stringify(jobs);
      this.jobs = jobs;
      // Re-render only on change: focus and half-typed reasons stay put.
      if (text !== this.last) {
        this.last = text;
        this.render();
      }
    } catch (e) {
      this.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  relabel() {
    this.render();
  }

  render() {
    const jobs = this.jobs;
    fill(this.el,
      h('h2', { id: 'jobs-title' }, t('jobs.title')),
      jobs === null
        ? h('p', { class: 'muted' }, t('queue.loading'))
        : jobs.length
          ? h('ul', { class: 'jobs plain' }, jobs.map((j) => this.job(j)))
          : h('p', { class: 'empty' }, t('jobs.none')));
    this.el.dataset.loaded = String(jobs !== null);
  }

  job(j) {
    const keep = this.inputs.get(j.dispatch_id) || { reason: '', outcome: 'help_given' };
    this.inputs.set(j.dispatch_id, keep);
    const reason = h('input', { id: `reason-${j.dispatch_id}`, type: 'text', value: keep.reason, oninput: (e) => { keep.reason = e.target.value; } });
    const outcome = h('select', { id: `outcome-${j.dispatch_id}`, onchange: (e) => { keep.outcome = e.target.value; } },
      OUTCOMES.map((o) => h('option', { value: o, selected: o === keep.outcome }, label('outcome', o))));
    const answer = (action, extra) => h('button', {
      type: 'button',
      class: action === 'accept' ? 'primary' : action === 'decline' ? 'danger' : '',
      'data-action': action,
      onclick: () => this.answer(j.dispatch_id, action, extra ? extra() : {}),
    }, t(`job.${action}`));
    const buttons = [];
    if (j.state === 'offered') {
      buttons.push(answer('accept'),
        h('label', { for: reason.id }, t('job.reason')), reason,
        answer('decline', () => ({ reason: reason.value.trim() || undefined })));
    }
    if (j.state === 'accepted') buttons.push(answer('arrived'));
    // A job is completed once the carer has arrived.
    if (j.state === 'arrived') {
      buttons.push(h('label', { for: outcome.id }, t('close.outcome')), outcome,
        answer('completed', () => ({ outcome: outcome.value })));
    }
    return h('li', { class: `card job job-${j.state}`, 'data-dispatch': j.dispatch_id },
      h('h3', {}, `${kindLabel(j.kind)} · ${label('dstate', j.state)}`),
      h('p', { class: 'name', lang: 'zh-CN' }, j.client_name),
      h('dl', { class: 'facts' },
        h('div', { class: 'field' }, h('dt', {}, t('f.address')), h('dd', {}, j.address)),
        h('div', { class: 'field' }, h('dt', {}, t('f.map')), h('dd', {},
          j.lat != null && j.lon != null ? h('a', { href: osm(j.lat, j.lon), target: '_blank', rel: 'noopener noreferrer' }, t('map.home')) : '—')),
        h('div', { class: 'field' }, h('dt', {}, t('col.distance')), h('dd', {}, distance(j.distance_m) || '—')),
        h('div', { class: 'field' }, h('dt', {}, t('col.offered')), h('dd', {}, when(j.offered_at))),
        h('div', { class: 'field' }, h('dt', {}, t('f.notes')), h('dd', {}, j.medical_notes || '—')),
        h('div', { class: 'field' }, h('dt', {}, t('f.medications')), h('dd', {}, j.medications || '—')),
        h('div', { class: `field ${j.allergies ? 'allergy' : ''}` }, h('dt', {}, t('f.allergies')), h('dd', {}, j.allergies ? `⚠ ${j.allergies}` : '—')),
        h('div', { class: 'field' }, h('dt', {}, t('f.keysafe')), h('dd', {}, j.key_safe || '—'))),
      j.state === 'withdrawn' ? h('p', { class: 'withdrawn', role: 'status' }, t('job.withdrawn')) : null,
      h('div', { class: 'buttons' }, buttons));
  }

  async answer(dispatch, action, extra) {
    if (this.busy) return;
    this.busy = true;
    try {
      await api('POST', `/api/v1/dispatches/${dispatch}/answer`, { action, ...extra });
      this.notify('ok', t('job.done', { action: t(`job.${action}`), id: dispatch }));
      this.last = '';
      await this.load();
    } catch (e) {
      this.notify('error', t('error.action', { action: t(`job.${action}`), message: problem(e) }));
    } finally {
      this.busy = false;
    }
  }
}
