// A horizontal bar chart drawn as inline SVG (no library, nothing loaded):
// one bar per group, a target line across them, the value in words beside
// every bar so the colour is never the only sign.

const NS = 'http://www.w3.org/2000/svg';

/** Build an SVG element: s('rect', { x: 1, class: 'bar' }, child, 'text'). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const ROW = 34; // px per bar
const LABEL = 250; // the groups' names
const PLOT = 520; // 0–100 %
const VALUE = 230; // the value and the verdict
const TOP = 30; // the target's label
const AXIS = 28; // the axis' labels

/** A name cut to fit its column, whole in the bar's tooltip. */
function fit(name, max) {
  return [...name].length > max ? `${[...name].slice(0, max - 1).join('')}…` : name;
}

/**
 * @param {object} o
 * @param {string} o.title  what the chart shows (its accessible name)
 * @param {string} o.desc  how to read it
 * @param {{name: string, pct: number|null, total?: boolean}[]} o.bars
 * @param {number} o.target  the target percentage: the line
 * @param {string} o.targetLabel
 * @param {(pct: number|null) => string} o.valueText  the words beside a bar
 */
export function barChart(o) {
  const width = LABEL + PLOT + VALUE;
  const height = TOP + o.bars.length * ROW + AXIS;
  const x = (pct) => LABEL + (Math.max(0, Math.min(100, pct)) / 100) * PLOT;
  const parts = [s('title', { id: 'chart-title' }, o.title), s('desc', { id: 'chart-desc' }, o.desc)];
  for (const tick of [0, 25, 50, 75, 100]) {
    parts.push(
      s('line', { class: 'grid', x1: x(tick), x2: x(tick), y1: TOP - 4, y2: TOP + o.bars.length * ROW }),
      s('text', { class: 'axis', x: x(tick), y: height - 8, 'text-anchor': 'middle' }, `${tick} %`));
  }
  o.bars.forEach((b, k) => {
    const y = TOP + k * ROW;
    const cls = b.pct == null ? 'none' : b.pct >= o.target ? 'pass' : 'fail';
    const row = s('g', { class: `bar-row ${cls}${b.total ? ' total' : ''}`, 'data-group': b.name },
      s('title', {}, `${b.name}: ${o.valueText(b.pct)}`),
      s('text', { class: 'name', x: LABEL - 10, y: y + ROW / 2 + 6, 'text-anchor': 'end' }, fit(b.name, 14)));
    if (b.pct != null) {
      row.append(s('rect', { class: 'bar', x: LABEL, y: y + 6, width: Math.max(2, x(b.pct) - LABEL), height: ROW - 12, rx: 3 }));
    }
    row.append(s('text', { class: 'value', x: LABEL + PLOT + 12, y: y + ROW / 2 + 6 }, o.valueText(b.pct)));
    parts.push(row);
  });
  const tx = x(o.target);
  parts.push(
    s('line', { class: 'target', x1: tx, x2: tx, y1: TOP - 6, y2: TOP + o.bars.length * ROW + 4 }),
    s('text', { class: 'target-label', x: tx, y: TOP - 12, 'text-anchor': 'end' }, o.targetLabel));
  return s('svg', {
    class: 'chart',
    role: 'img',
    'aria-labelledby': 'chart-title chart-desc',
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    'data-test': 'chart',
  }, parts);
}
