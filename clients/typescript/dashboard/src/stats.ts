// The page's one animation-frame loop, and what it measures (on `window.__conveyorStats`, where
// a test or a person in the console reads it): events applied, each event's lag from the
// server's event time to the end of the first frame after it arrived (the frame that drew it,
// unless its view was hidden), frame intervals and the time the views took to draw.
//
// Everything on screen changes inside this loop: streams only record what arrived and mark
// rows dirty, so a burst of 10,000 events costs one DOM pass per frame, not one per event.

/** The last `capacity` numbers, oldest overwritten first: a long-open page does not grow. */
class Samples {
  private values = new Float64Array(0);
  private next = 0;
  private count = 0;

  constructor(private capacity: number) {}

  add(value: number): void {
    if (this.values.length === 0) this.values = new Float64Array(this.capacity);
    this.values[this.next] = value;
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  clear(): void {
    this.next = 0;
    this.count = 0;
  }

  /** p50, p99 and max in milliseconds (rounded to 0.1), and how many samples. */
  summary(): { n: number; p50: number; p99: number; max: number } {
    const sorted = Array.from(this.values.subarray(0, this.count)).sort((a, b) => a - b);
    const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
    const round = (v: number) => Math.round(v * 10) / 10;
    return { n: sorted.length, p50: round(at(0.5)), p99: round(at(0.99)), max: round(sorted[sorted.length - 1] ?? 0) };
  }
}

const frames = new Samples(100_000);
const renders = new Samples(100_000);
const lags = new Samples(200_000);

export const stats = {
  /** Events that changed what the page holds (stale repeats are not counted). */
  eventsApplied: 0,
  /** Events dropped because the page already held that seq or a later one. */
  eventsDropped: 0,
  /** Whether the jobs list's stream has sent its whole snapshot. */
  synced: false,
  /** Rows in the jobs list. */
  rows: 0,
  reset(): void {
    stats.eventsApplied = 0;
    stats.eventsDropped = 0;
    frames.clear();
    renders.clear();
    lags.clear();
  },
  summary() {
    return {
      events: stats.eventsApplied,
      dropped: stats.eventsDropped,
      rows: stats.rows,
      frameMs: frames.summary(),
      renderMs: renders.summary(),
      lagMs: lags.summary(),
    };
  },
};

declare global {
  interface Window {
    __conveyorStats: typeof stats;
  }
}
window.__conveyorStats = stats;

/** Server times (ms since the epoch) of events applied since the last frame. */
let shown: number[] = [];

/** Notes an applied event, to measure its lag when the next frame shows it. */
export function applied(eventTimeMs: number | undefined): void {
  stats.eventsApplied++;
  if (eventTimeMs !== undefined) shown.push(eventTimeMs);
}

/** A view's share of a frame: it writes what changed and says whether it wrote anything. */
export type Renderer = () => boolean;

/** Starts the loop that calls every renderer once per frame. */
export function startFrames(renderers: Renderer[]): void {
  let last: number | undefined;
  const frame = (now: number) => {
    if (last !== undefined) frames.add(now - last);
    last = now;
    const start = performance.now();
    let wrote = false;
    for (const render of renderers) wrote = render() || wrote;
    if (wrote) renders.add(performance.now() - start);
    if (shown.length > 0) {
      const at = Date.now();
      for (const t of shown) lags.add(at - t);
      shown = [];
    }
    requestAnimationFrame(frame);
  };
  // A hidden tab gets no frames; its gap is not a slow frame.
  document.addEventListener("visibilitychange", () => (last = undefined));
  requestAnimationFrame(frame);
}
