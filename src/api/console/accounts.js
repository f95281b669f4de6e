// Accounts, for admins: console accounts (disable, enable, unlock, a new
// password) and the MQTT credentials of devices, carers' phones and bridges
// (issue or rotate, revoke). Every change is audited by the server under the
// admin's name; a new MQTT password is shown here once and never again.

import { api, session } from './api.js';
import { fill, h, when } from './dom.js';
import { t } from './i18n.js';
import { problem } from './incident.js';

export class AccountsView {
  /** @param {{ notify: (kind: 'ok'|'error', text: string) => void }} o */
  constructor(o) {
    this.o = o;
    this.users = null;
    this.credentials = null;
    this.issued = null; // { username, password }: shown once
    this.busy = false;
    this.el = h('section', { class: 'accounts panel', 'aria-labelledby': 'accounts-title', 'data-test': 'accounts' });
    this.relabel();
  }

  show() {
    this.load();
  }

  stop() {}

  relabel() {
    this.render();
  }

  async load() {
    try {
      const [users, credentials] = await Promise.all([
        api('GET', '/api/v1/users'),
        api('GET', '/api/v1/mqtt/credentials'),
      ]);
      this.users = users;
      this.credentials = credentials;
      this.render();
    } catch (e) {
      this.o.notify('error', t('error.load', { message: problem(e) }));
    }
  }

  /** One change, then the lists afresh; the server's refusal is shown as it is. */
  async act(label, method, path, body) {
    if (this.busy) return null;
    this.busy = true;
    this.render();
    try {
      const answer = await api(method, path, body);
      this.o.notify('ok', t('acct.done', { action: label }));
      return answer ?? true;
    } catch (e) {
      this.o.notify('error', t('error.action', { action: label, message: problem(e) }));
      return null;
    } finally {
      this.busy = false;
      await this.load();
    }
  }

  render() {
    const loaded = this.users !== null && this.credentials !== null;
    this.el.dataset.loaded = String(loaded);
    this.el.setAttribute('aria-busy', String(this.busy));
    fill(this.el,
      h('h2', { id: 'accounts-title' }, t('acct.title')),
      h('p', { class: 'help' }, t('acct.help')),
      loaded ? this.userTable() : h('p', { class: 'muted' }, t('queue.loading')),
      h('h2', { id: 'mqtt-title' }, t('acct.mqtt_title')),
      h('p', { class: 'help' }, t('acct.mqtt_help')),
      this.issueForm(),
      loaded ? this.credentialTable() : null);
  }

  userTable() {
    const now = Date.now();
    return h('table', { class: 'accounts-table', 'data-test': 'users' },
      h('thead', {}, h('tr', {}, ['acct.username', 'acct.role', 'acct.state', 'acct.sessions', 'acct.actions']
        .map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, this.users.map((u) => {
        const locked = u.locked_until != null && u.locked_until > now;
        const state = u.disabled ? 'disabled' : locked ? 'locked' : 'enabled';
        const name = encodeURIComponent(u.username);
        const pw = h('input', {
          type: 'password', id: `pw-${u.id}`, minlength: 8, autocomplete: 'new-password',
          'aria-label': t('acct.new_password_for', { name: u.username }),
        });
        return h('tr', { 'data-user': u.username, 'data-state': state },
          h('th', { scope: 'row' }, u.username),
          h('td', {}, t(`role.${u.role}`)),
          h('td', {}, t(`acct.state_${state}`), locked ? [' · ', when(u.locked_until)] : null),
          h('td', {}, String(u.live_sessions)),
          h('td', {}, h('div', { class: 'actions' },
            // The server refuses an admin's disabling their own account: no button for it.
            u.username === (session() || {}).username ? null : u.disabled
              ? h('button', { type: 'button', 'data-action': 'enable', disabled: this.busy,
                onclick: () => this.act(t('acct.enable'), 'POST', `/api/v1/users/${name}/enable`) }, t('acct.enable'))
              : h('button', { type: 'button', 'data-action': 'disable', disabled: this.busy,
                onclick: () => this.act(t('acct.disable'), 'POST', `/api/v1/users/${name}/disable`) }, t('acct.disable')),
            locked
              ? h('button', { type: 'button', 'data-action': 'unlock', disabled: this.busy,
                onclick: () => this.act(t('acct.unlock'), 'POST', `/api/v1/users/${name}/unlock`) }, t('acct.unlock'))
              : null,
            h('form', {
              class: 'new-password',
              onsubmit: (e) => {
                e.preventDefault();
                if (pw.value.length < 8) {
                  this.o.notify('error', t('acct.too_short'));
                  return;
                }
                this.act(t('acct.set_password'), 'POST', `/api/v1/users/${name}/password`, { password: pw.value });
              },
            }, pw, h('button', { type: 'submit', 'data-action': 'password', disabled: this.busy }, t('acct.set_password'))))));
      })));
  }

  issueForm() {
    const who = h('input', {
      id: 'mqtt-username', type: 'text', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'devices/GW-1 · carers/7 · bridges/z2m', maxlength: 64,
    });
    const shown = this.issued
      ? h('p', { class: 'issued', role: 'status', 'data-test': 'issued' },
        t('acct.issued', { name: this.issued.username }), ' ',
        h('output', { id: 'mqtt-password', class: 'secret' }, this.issued.password))
      : null;
    return h('div', {},
      h('form', {
        class: 'toolbar',
        onsubmit: async (e) => {
          e.preventDefault();
          const username = who.value.trim();
          if (!username) return;
          const answer = await this.act(t('acct.issue'), 'POST', '/api/v1/mqtt/credentials', { username });
          this.issued = answer && answer.password ? { username: answer.username, password: answer.password } : null;
          this.render();
        },
      }, h('label', { for: 'mqtt-username' }, t('acct.mqtt_username')), who,
      h('button', { type: 'submit', class: 'primary', id: 'mqtt-issue', disabled: this.busy }, t('acct.issue'))),
      shown);
  }

  credentialTable() {
    return h('table', { class: 'accounts-table', 'data-test': 'credentials' },
      h('thead', {}, h('tr', {}, ['acct.mqtt_username', 'acct.generation', 'acct.state', 'acct.actions']
        .map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, this.credentials.map((c) => h('tr', { 'data-credential': c.username, 'data-revoked': String(c.revoked) },
        h('th', { scope: 'row' }, c.username),
        h('td', {}, String(c.generation)),
        h('td', {}, t(c.revoked ? 'acct.revoked' : 'acct.live')),
        h('td', {}, c.revoked || c.username.startsWith('servers/') ? null
          : h('button', { type: 'button', 'data-action': 'revoke', disabled: this.busy,
            onclick: () => this.act(t('acct.revoke'), 'POST', '/api/v1/mqtt/credentials/revoke', { username: c.username }) },
          t('acct.revoke')))))));
  }
}
