// mulberry32: a small, fast, seeded 32-bit PRNG. The same sequence on every platform, so generated
// fixtures, test volumes and benchmark images are reproducible from their seed.

/** Unsigned 32-bit integers. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Floats in [0, 1). */
export function mulberry32Float(seed) {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}
