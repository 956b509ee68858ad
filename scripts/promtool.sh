#!/usr/bin/env bash
# Print the path of a `promtool` (Prometheus's rule checker) for the alert-rule tests.
#
# One on PATH is used as it is. Otherwise, on Debian/Ubuntu, the `prometheus` package is
# downloaded (not installed: no service is set up) and only its promtool is unpacked into
# .cache/promtool/. Prints nothing and exits 1 when neither works (the tests then skip,
# unless OUTREACH_REQUIRE_PROMTOOL=1, as CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
cache=.cache/promtool
if [ ! -x "$cache/usr/bin/promtool" ]; then
    command -v apt-get >/dev/null || { echo "promtool.sh: no promtool and no apt-get" >&2; exit 1; }
    rm -rf "$cache" && mkdir -p "$cache"
    (cd "$cache" && apt-get download prometheus >&2 2>&1 || { apt-get update -qq >&2 && apt-get download prometheus >&2; }) \
        || { echo "promtool.sh: could not download Debian's prometheus package" >&2; exit 1; }
    dpkg-deb -x "$cache"/prometheus_*.deb "$cache"
    rm -f "$cache"/prometheus_*.deb "$cache/usr/bin/prometheus"  # only promtool is needed
fi
echo "$PWD/$cache/usr/bin/promtool"
