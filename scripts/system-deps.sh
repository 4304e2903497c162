#!/usr/bin/env bash
# Debian packages that some tests use when present: Tesseract (OCR of images), Prometheus and its Pushgateway (the
# metrics test starts both on loopback). Installed when missing and we are root with apt; otherwise those tests skip.
set -uo pipefail
want=()
command -v tesseract >/dev/null 2>&1 || want+=(tesseract-ocr)
command -v prometheus >/dev/null 2>&1 || want+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || want+=(prometheus-pushgateway)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${want[*]} not installed (needs root and apt-get); the tests that use them will be skipped" >&2
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
  || echo "note: apt-get install ${want[*]} failed (see /tmp/docingest-apt.log); those tests will be skipped" >&2
[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
