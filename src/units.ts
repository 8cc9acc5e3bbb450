/** Units in options, configuration and messages: durations and sizes. */
import { UsageError } from './errors.js';

/** "30d", "12h", "90m", "2w", "45s" -> milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+)\s*([smhdw])$/i.exec(s.trim());
  if (!m) throw new UsageError(`cannot read duration ${JSON.stringify(s)} (examples: 45s, 90m, 12h, 30d, 2w)`);
  const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2].toLowerCase() as 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(m[1]) * unit;
}

/** A size in messages: "512 B", "1.50 KiB", "13.0 MiB" (two decimals below 10, one above). */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** A duration in messages, rounded to its largest sensible unit: "45s", "90m", "36h", "12d". */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}
