/**
 * xxh64 (seed 0) through xxhash-wasm. The API is loaded once (`initHash`) and then used synchronously;
 * every entry point of the library that decodes or encodes awaits `initHash()` first.
 */
import xxhash, { type XXHashAPI } from 'xxhash-wasm';

let api: XXHashAPI | undefined;
let loading: Promise<XXHashAPI> | undefined;

export async function initHash(): Promise<void> {
  if (api) return;
  loading ??= xxhash();
  api = await loading;
}

function ready(): XXHashAPI {
  if (!api) throw new Error('initHash() must be awaited before hashing');
  return api;
}

/** xxh64 of `data` with seed 0. */
export function xxh64(data: Uint8Array): bigint {
  return ready().h64Raw(data);
}

/** xxh64 of the concatenation of `parts` with seed 0, without copying them together. */
export function xxh64Parts(...parts: Uint8Array[]): bigint {
  const h = ready().create64();
  for (const p of parts) h.update(p);
  return h.digest();
}
