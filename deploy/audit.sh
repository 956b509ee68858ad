#!/usr/bin/env bash
# `make lint`'s dependency audit: known vulnerabilities in what the image ships
# (deploy/requirements.lock, pinned with hashes), checked with pip-audit against PyPI's
# vulnerability data. Exit 0: audited, nothing known. 1: vulnerabilities (listed). 2: the audit
# could not be done (the vulnerability service unreachable, or it does not know the pinned
# versions): that is NOT a pass. AUDIT=warn reports that case and exits 0.
#
#   bash deploy/audit.sh [PIP_AUDIT]        # default: .venv/bin/pip-audit
set -uo pipefail
cd "$(dirname "$0")/.."
pip_audit="${1:-.venv/bin/pip-audit}"
lock=deploy/requirements.lock
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# --strict: a package that cannot be looked up fails the audit instead of being skipped quietly
"$pip_audit" --requirement "$lock" --require-hashes --disable-pip --strict \
    --progress-spinner off --desc on > "$out" 2>&1
code=$?
if [ "$code" -eq 0 ]; then
    cat "$out"
    echo "pip-audit: $(grep -c '==' "$lock") pinned packages of $lock audited, no known vulnerabilities"
    exit 0
fi
if grep -qE "could not be audited|ConnectionError|NameResolutionError|Max retries exceeded|timed out" "$out"; then
    grep -m 3 -E "could not be audited|Error" "$out" >&2
    echo "" >&2
    echo "pip-audit: NOT AUDITED. The vulnerability service did not answer for the pinned" >&2
    echo "  packages of $lock (no network, or a PyPI mirror without the per-version JSON API)." >&2
    echo "  Nothing was checked; this is not a pass. Run it where PyPI (or OSV: -s osv) is reachable." >&2
    if [ "${AUDIT:-}" = "warn" ]; then
        echo "  AUDIT=warn: reported, not failing." >&2
        exit 0
    fi
    echo "  (AUDIT=warn make lint reports this without failing.)" >&2
    exit 2
fi
cat "$out" >&2
echo "pip-audit: known vulnerabilities in $lock (above): upgrade, then bash deploy/lock.sh" >&2
exit 1
