// The audible alarm for unclaimed life-safety incidents: a repeating two-tone
// made with the Web Audio API (no audio files). Browsers allow sound only after
// a user gesture: the log-in click unlocks it, or the "sound on" button.

const PERIOD_MS = 1600;

export class Alarm {
  constructor(onChange) {
    this.onChange = onChange;
    this.ctx = null;
    this.muted = false;
    this.active = false;
    this.timer = null;
  }

  /** Call inside a click handler: creates or resumes the audio context. */
  unlock() {
    try {
      if (!this.ctx) {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        if (!Ctx) return;
        this.ctx = new Ctx();
        this.ctx.addEventListener('statechange', () => this.changed());
      }
      if (this.ctx.state !== 'running') {
        this.ctx.resume().then(() => this.changed(), () => this.changed());
      }
    } catch {
      this.ctx = null;
    }
    this.changed();
  }

  /** 'on' (will sound), 'muted' (turned off by the user) or 'blocked' (needs a click). */
  get sound() {
    if (this.muted) return 'muted';
    return this.ctx && this.ctx.state === 'running' ? 'on' : 'blocked';
  }

  /** The sound button: unlock when blocked, otherwise mute or unmute. */
  toggle() {
    if (this.sound === 'blocked') {
      this.muted = false;
      this.unlock();
    } else {
      this.muted = !this.muted;
      if (!this.muted) this.unlock();
    }
    this.changed();
  }

  /** Sound (and flash) while something needs claiming. */
  set(active) {
    if (active === this.active) return;
    this.active = active;
    this.changed();
  }

  changed() {
    const ringing = this.active && this.sound === 'on';
    if (ringing && !this.timer) {
      this.beep();
      this.timer = setInterval(() => this.beep(), PERIOD_MS);
    } else if (!ringing && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
    this.onChange(this);
  }

  /** 880 Hz then 660 Hz, a quarter second each, with soft edges. */
  beep() {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== 'running') return;
    const t0 = ctx.currentTime;
    [880, 660].forEach((f, i) => {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      const start = t0 + i * 0.3;
      osc.type = 'square';
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.25);
      osc.connect(gain).connect(ctx.destination);
      osc.start(start);
      osc.stop(start + 0.27);
    });
  }

  /** Silence for good (log-out). */
  stop() {
    this.active = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }
}
