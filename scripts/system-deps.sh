#!/usr/bin/env bash
# Debian packages docingest uses when present: Tesseract with English and orientation (OSD) data (OCR of images and
# scanned PDF pages), and, for the tests, Prometheus and its Pushgateway (the metrics test starts both on loopback).
# Installed when missing and we run as root with apt; otherwise one line says what is missing and how to add it.
#   bash scripts/system-deps.sh        # everything the tests use
#   bash scripts/system-deps.sh ocr    # Tesseract only (the demo's setup)
set -uo pipefail
want=()
langs=$(tesseract --list-langs 2>/dev/null || true)
command -v tesseract >/dev/null 2>&1 || want+=(tesseract-ocr)
grep -qx eng <<<"$langs" || want+=(tesseract-ocr-eng)
grep -qx osd <<<"$langs" || want+=(tesseract-ocr-osd)
if [ "${1:-all}" != ocr ]; then
  command -v prometheus >/dev/null 2>&1 || want+=(prometheus)
  command -v prometheus-pushgateway >/dev/null 2>&1 || want+=(prometheus-pushgateway)
fi
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${want[*]} not installed (needs root and apt-get: sudo apt-get install ${want[*]}); without" \
       "Tesseract images and scanned PDF pages are skipped, and the tests that need these are skipped" >&2
  exit 0
fi
echo "installing ${want[*]} (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
# Only the binaries are used: the packages' own services are never started by the tests (policy-rc.d: no autostart).
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
fi
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}"; } >/tmp/docingest-apt.log 2>&1 \
  || echo "note: apt-get install ${want[*]} failed (see /tmp/docingest-apt.log); those features and tests are skipped" >&2
[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
