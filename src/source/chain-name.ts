/**
 * Chain names of managed snapshot chains (`send VG/LV --chain NAME`), pure: kept apart from
 * snapshot-chain.ts so that the CLI's help can name the default without loading the LVM code.
 */
import { UsageError } from '../errors.js';

export const DEFAULT_CHAIN = 'default';

const CHAIN_NAME = /^[A-Za-z0-9_+.-]{1,64}$/;

export function checkChainName(chain: string): void {
  if (!CHAIN_NAME.test(chain)) throw new UsageError(`bad chain name ${JSON.stringify(chain)}: 1 to 64 of A-Z a-z 0-9 _ + . -`);
}
