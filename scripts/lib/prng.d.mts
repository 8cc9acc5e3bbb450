export function mulberry32(seed: number): () => number;
export function mulberry32Float(seed: number): () => number;
