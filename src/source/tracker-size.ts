/** The size of a classic LV's change tracker (source/classic.ts): `--tracker-size 20%` or `--tracker-size 2G`. Pure. */

/** Bytes, or a percentage of the origin's size. */
export type TrackerSize = { bytes: number } | { percent: number };

export const DEFAULT_TRACKER_SIZE: TrackerSize = { percent: 20 };

/** "20%" or a size ("512M", "1G", bytes, read by `parseSize`) -> TrackerSize; undefined when it is neither. */
export function parseTrackerSize(s: string, parseSize: (s: string) => number | undefined): TrackerSize | undefined {
  const p = /^(\d+(?:\.\d+)?)\s*%$/.exec(s.trim());
  if (p) {
    const percent = Number(p[1]);
    return percent > 0 && percent <= 100 ? { percent } : undefined;
  }
  const bytes = parseSize(s);
  return bytes !== undefined && bytes > 0 ? { bytes } : undefined;
}

/** The tracker's size in bytes for an origin of `originBytes`, rounded up to whole extents of `extentBytes`. */
export function trackerBytes(size: TrackerSize, originBytes: number, extentBytes: number): number {
  const raw = 'bytes' in size ? size.bytes : Math.ceil((originBytes * size.percent) / 100);
  return Math.max(1, Math.ceil(raw / extentBytes)) * extentBytes;
}
