// The live feed (server-sent events) read with fetch, since EventSource cannot
// send the Authorization header. Reconnects with Last-Event-ID set to the last
// id seen, so nothing is missed and nothing comes twice.

const SILENCE_MS = 45000; // the server sends a keep-alive every 15 s
const MAX_BACKOFF_MS = 15000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Feed {
  /**
   * @param {object} o
   * @param {() => string|null} o.token  the current session token
   * @param {(ev: object) => void} o.onEvent  each timeline entry
   * @param {() => void} o.onOpen  connected (again): reload what may have changed
   * @param {(state: string) => void} o.onState  'connecting' | 'live' | 'down'
   * @param {() => void} o.onUnauthorized
   */
  constructor(o) {
    this.o = o;
    this.lastId = null;
    this.stopped = true;
    this.ctrl = null;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.ctrl) this.ctrl.abort();
  }

  async run() {
    let backoff = 1000;
    while (!this.stopped) {
      this.o.onState('connecting');
      this.ctrl = new AbortController();
      const token = this.o.token();
      if (!token) {
        this.o.onUnauthorized();
        return;
      }
      try {
        const headers = { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' };
        if (this.lastId !== null) headers['Last-Event-ID'] = this.lastId;
        const res = await fetch('/api/v1/feed', {
          headers,
          cache: 'no-store',
          signal: this.ctrl.signal,
        });
        if (res.status === 401) {
          this.stopped = true;
          this.o.onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.o.onState('live');
        backoff = 1000;
        this.o.onOpen();
        await this.read(res.body.getReader());
      } catch {
        // Dropped, refused or aborted: try again below unless stopped.
      }
      if (this.stopped) return;
      this.o.onState('down');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    let ev = { id: null, data: [] };
    let timer = null;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.ctrl.abort(), SILENCE_MS);
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return;
        arm();
        buf += decoder.decode(value, { stream: true });
        // Whole lines only; a lone \r at the end may be the first half of \r\n.
        let m;
        while ((m = /\r\n|\n|\r(?!$)/.exec(buf)) !== null) {
          const line = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          ev = this.line(line, ev);
        }
      }
    } finally {
      clearTimeout(timer);
      reader.cancel().catch(() => {});
    }
  }

  /** One line of the event stream; a blank line ends an event. */
  line(line, ev) {
    if (line === '') {
      if (ev.id !== null) this.lastId = ev.id;
      if (ev.data.length) {
        try {
          this.o.onEvent(JSON.parse(ev.data.join('\n')));
        } catch {
          // Not JSON (a comment-only event): nothing to show.
        }
      }
      return { id: null, data: [] };
    }
    if (line.startsWith(':')) return ev; // keep-alive comment
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') ev.id = value;
    else if (field === 'data') ev.data.push(value);
    return ev;
  }
}
