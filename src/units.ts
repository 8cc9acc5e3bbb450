/** Units in options and configuration: durations. */
import { UsageError } from './errors.js';

/** "30d", "12h", "90m", "2w", "45s" -> milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+)\s*([smhdw])$/i.exec(s.trim());
  if (!m) throw new UsageError(`cannot read duration ${JSON.stringify(s)} (examples: 45s, 90m, 12h, 30d, 2w)`);
  const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2].toLowerCase() as 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(m[1]) * unit;
}
