#!/usr/bin/env bash
# Regenerate the real thin_delta fixtures under fixtures/thin-delta/ from the hand-written thin
# metadata in fixtures/thin-delta/meta.xml. Works offline, without device-mapper or root: thin_restore
# turns the metadata XML into a binary metadata file and thin_delta reads that file directly.
#
# Needs thin-provisioning-tools (Debian bookworm ships 0.9.0: apt-get install thin-provisioning-tools).
#
#   scripts/make-thin-delta-fixtures.sh                 # rewrite v0.9-*.xml (the committed fixtures)
#   scripts/make-thin-delta-fixtures.sh --large FILE [N] # write a LARGE real delta (N scattered ranges,
#                                                      # default 200000) to FILE; not committed. Test it with
#                                                      # THINARCHIVE_LARGE_DELTA=FILE npx vitest run src/lvm/thin-delta.test.ts
#
# The v1-*.xml fixtures cannot be produced here (the 1.x Rust tools are not packaged for bookworm):
# they are hand-written, see fixtures/thin-delta/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fx="$here/fixtures/thin-delta"

for tool in thin_restore thin_delta; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install thin-provisioning-tools)" >&2; exit 1; }
done
version="$(thin_delta -V)"
case "$version" in
  0.9.*) ;;
  *) echo "warning: thin_delta is $version, the committed fixtures are named for 0.9" >&2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ "${1:-}" == "--large" ]]; then
  out="${2:?usage: $0 --large FILE [N]}"
  n="${3:-200000}"
  # Scattered single-block ranges, one every 4 pool blocks, cycling through the three changed kinds
  # (must match largeDeltaDocument() in src/lvm/thin-delta.test.ts):
  #   i % 3 == 0: mapped only in dev 2                      -> right_only begin=4i length=1
  #   i % 3 == 1: mapped only in dev 1                      -> left_only  begin=4i length=1
  #   i % 3 == 2: mapped in both, to different pool blocks  -> different  begin=4i length=1
  awk -v n="$n" 'BEGIN {
    printf "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"%d\">\n", 2 * n + 16
    for (dev = 1; dev <= 2; dev++) {
      printf "  <device dev_id=\"%d\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n", dev
      for (i = 0; i < n; i++) {
        k = i % 3
        if ((dev == 1 && k == 0) || (dev == 2 && k == 1)) continue
        # dev 1 uses pool blocks [0, n), dev 2 uses [n, 2n): never contiguous across neighbours
        # because origin blocks are 4 apart, so thin_delta reports each one separately.
        printf "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", 4 * i, (dev - 1) * n + i
      }
      printf "  </device>\n"
    }
    printf "</superblock>\n"
  }' >"$work/large.xml"
  truncate -s 256M "$work/large.bin"
  thin_restore -i "$work/large.xml" -o "$work/large.bin"
  thin_delta --snap1 1 --snap2 2 "$work/large.bin" >"$out"
  echo "wrote $out ($(wc -c <"$out") bytes, $(grep -c 'begin=' "$out") ranges) with thin_delta $version"
  exit 0
fi

# Binary metadata is sparse; 4 MiB is plenty for a few hundred mappings.
truncate -s 4M "$work/meta.bin"
thin_restore -i "$fx/meta.xml" -o "$work/meta.bin"

thin_delta --snap1 1 --snap2 2 "$work/meta.bin" >"$fx/v0.9-plain.xml"
thin_delta --verbose --snap1 1 --snap2 2 "$work/meta.bin" >"$fx/v0.9-verbose.xml"
# A device against itself: only <same> elements, i.e. no change at all.
thin_delta --snap1 1 --snap2 1 "$work/meta.bin" >"$fx/v0.9-plain-nochange.xml"

echo "regenerated fixtures/thin-delta/v0.9-{plain,verbose,plain-nochange}.xml with thin_delta $version"
