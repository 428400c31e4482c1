#!/usr/bin/env bash
# Runs str0m's own unit tests against the patched copy in third_party/str0m, so that Moien's
# patches are checked by upstream's tests as well as by ours (third_party/README.md).
#
#   scripts/test-str0m.sh [test-name-filter]
#
# The crates.io package cannot be tested as it is: its manifest names crypto backends and
# dev-dependencies that are not on the registry this project builds from (str0m-openssl 0.7,
# str0m-rust-crypto 0.7, str0m-netem 0.5), and two SDP tests read docs/chrome-sdp.json, which
# the package does not ship. The tests therefore run on a copy under target/ whose manifest
# keeps only the aws-lc-rs backend Moien uses, with those two tests skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
copy=target/str0m-tests
mkdir -p "$copy"
rm -rf "$copy/src-tree"
# cp -a keeps modification times, so a second run rebuilds only what changed.
cp -a third_party/str0m "$copy/src-tree"
cp Cargo.lock "$copy/src-tree/Cargo.lock"
python3 - "$copy/src-tree/Cargo.toml" <<'EOF'
import re, sys
path = sys.argv[1]
s = open(path).read()
# Sections for crates this registry lacks, and the features that name them.
for section in [r"dependencies\.str0m-openssl", r"dependencies\.str0m-rust-crypto",
                r"dev-dependencies\.netem", r"dev-dependencies\.str0m-rust-crypto",
                r"dev-dependencies\.rouille",
                r"target\.[^\]]*str0m-apple-crypto", r"target\.[^\]]*str0m-wincrypto"]:
    s, n = re.subn(r"\n\[" + section + r"\]\n(?:[^\[\n][^\n]*\n)*", "\n", s)
    if n != 1:
        sys.exit(f"test-str0m.sh: [{section}] not found once in str0m's manifest")
s = re.sub(r'\n(apple-crypto|openssl|rust-crypto|vendored|wincrypto|wincrypto-dimpl) = \[[^\]]*\]', "", s)
s = re.sub(r'\nopenssl-dimpl = \[[^\]]*\]', "", s)
s = s.replace('examples = ["rouille/rustls"]', "examples = []")
# Its own workspace: the copy lies inside Moien's.
s += "\n[workspace]\n"
open(path, "w").write(s)
EOF
mkdir -p "$copy/src-tree/docs"
[[ -f $copy/src-tree/docs/chrome-sdp.json ]] || echo '{}' > "$copy/src-tree/docs/chrome-sdp.json"
cd "$copy/src-tree"
CARGO_TARGET_DIR=../target cargo test --lib -- "$@" \
    --skip sdp::data::test::fast_and_easy_parse_agree \
    --skip sdp::data::test::invalid_sdp_keeps_the_detailed_error
