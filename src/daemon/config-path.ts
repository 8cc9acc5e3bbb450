/** Where the daemon's configuration is by default; apart from config.ts so the CLI's help names it without loading the YAML parser and schema validator. */
export const DEFAULT_CONFIG = '/etc/thinarchive/thinarchive.yml';
