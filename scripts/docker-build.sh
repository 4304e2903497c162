#!/usr/bin/env bash
# Build the docingest image (docker/Dockerfile) with a Docker engine, from the repository root:
#   bash scripts/docker-build.sh                      # docingest:latest
#   bash scripts/docker-build.sh --pdf-models         # also Docling's PDF models (needs huggingface.co, see below)
#   bash scripts/docker-build.sh -- --no-cache        # anything after -- goes to `docker build`
# Settings (environment):
#   DOCINGEST_IMAGE         the tag to build (docingest:latest)
#   DOCINGEST_BASE_IMAGE    the base (python:3.11-slim-bookworm). Unset and not pullable (no registry answers): a
#                           Debian bookworm base made here with debootstrap plus this machine's Python 3.11, kept
#                           as local/python:3.11.X-bookworm (needs root and a Debian host)
#   DEBIAN_MIRROR           debootstrap's mirror (default: the one apt uses on this machine)
#   DOCINGEST_DOCKER_CACHE  where wheelhouses are kept between runs (~/.cache/docingest/docker)
#   DOCINGEST_CA_BUNDLE     a CA bundle passed to the build as a secret, never stored in the image
#                           (default /etc/ssl/certs/ca-certificates.crt when it exists: a TLS proxy's CA)
#   DOCINGEST_TORCH_INDEX   only with --pdf-models: where a CPU torchvision comes from (https://download.pytorch.org/whl/cpu)
#
# Python packages reach the image only through a wheelhouse made here by this machine's pip with constraints.txt (so
# the build needs no index, and the torch that goes in is the CPU build this machine installs), cached under
# DOCINGEST_DOCKER_CACHE by a hash of constraints.txt and the requirements, and handed to the build as
# docker/wheelhouse/ (hard links; ignored by git). A second run reuses the base, the wheelhouse and Docker's layer
# cache: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${DOCINGEST_IMAGE:-docingest:latest}
DEFAULT_BASE=python:3.11-slim-bookworm
CACHE=${DOCINGEST_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/docingest/docker}
CA=${DOCINGEST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
TORCH_INDEX=${DOCINGEST_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
pdf_models=false
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pdf-models) pdf_models=true ;;
    --) shift; build_args=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "docker-build: $*" >&2; }
die() { echo "docker-build: error: $*" >&2; exit 1; }
is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# ---- a Docker CLI that builds with BuildKit (the Dockerfile uses RUN --mount) ---------------------------------------
# Docker >= 23 builds with BuildKit through the buildx plugin; 20.10's CLI (Debian's docker.io) has BuildKit built in
# behind DOCKER_BUILDKIT=1. A newer CLI without buildx would fall back to the legacy builder, which cannot.
DOCKER=()
if docker buildx version >/dev/null 2>&1; then
  DOCKER=(docker)
else
  for cli in docker /usr/bin/docker; do
    version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null) || continue
    if [ "${version%%.*}" -lt 23 ] 2>/dev/null; then DOCKER=(env DOCKER_BUILDKIT=1 "$cli"); break; fi
  done
fi
[ ${#DOCKER[@]} -gt 0 ] || die "no Docker CLI that can build with BuildKit (install docker-buildx, or Debian's docker.io)"
"${DOCKER[@]}" info >/dev/null 2>&1 || die "the Docker engine does not answer ($(command -v "${DOCKER[-1]}") info)"

# ---- this machine's Python 3.11: it makes the wheelhouse (wheels are chosen for the interpreter that runs pip) -----
py=""
for candidate in .venv/bin/python python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    py=$candidate; break
  fi
done
[ -n "$py" ] || die "the wheelhouse is made with Python 3.11 (the image's); none found (.venv/bin/python, python3.11)"
py_version=$("$py" -c 'import platform; print(platform.python_version())')
LOCAL_BASE=local/python:$py_version-bookworm

# ---- the base image -----------------------------------------------------------------------------------------------
has_image() { "${DOCKER[@]}" image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
  local mirror=${DEBIAN_MIRROR:-}
  [ -n "$mirror" ] || mirror=$(awk '$1 == "URIs:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
                                 /etc/apt/sources.list 2>/dev/null || true)
  echo "${mirror:-http://deb.debian.org/debian}"
}

# Debian packages that hold the shared libraries the interpreter and its extension modules link to (not Tk).
python_runtime_packages() {
  local home=$1 lib
  for f in "$home/bin/python3.11" "$home"/lib/libpython3.11.so* "$home"/lib/python3.11/lib-dynload/*.so; do
    case $f in *_tkinter*) continue ;; esac
    [ -e "$f" ] && ldd "$f" 2>/dev/null
  done | awk '$3 ~ /^\// {print $3}' | sort -u | grep -v "^$home/" | while read -r lib; do
    dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null \
      || echo "unknown: $lib" >&2
  done | cut -d: -f1 | sort -u | paste -sd, -
}

# Where no registry answers: Debian bookworm (minbase) from the Debian mirror, plus this machine's CPython 3.11 in
# /usr/local, as in the official python images. Debian's own python3.11 (3.11.2) is older than the pinned packages
# accept (soupsieve 4.1.2 wants >= 3.11.5); this interpreter is the one the wheelhouse was made for.
build_debian_base() {
  [ "$(id -u)" = 0 ] || die "building a base with debootstrap needs root (or set DOCINGEST_BASE_IMAGE to an image you have)"
  command -v dpkg >/dev/null 2>&1 || die "$DEFAULT_BASE cannot be pulled; building a base needs a Debian host (dpkg, debootstrap)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    is_root_with_apt || die "debootstrap is not installed"
    say "installing debootstrap (apt)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; } \
      >/dev/null || die "apt-get install debootstrap failed"
  fi
  local mirror dir home packages
  mirror=$(debian_mirror)
  home=$("$py" -c 'import sys; print(sys.base_prefix)')
  packages=$(python_runtime_packages "$home")
  dir=$(mktemp -d "${TMPDIR:-/tmp}/docingest-base.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$dir' '$dir.log'" EXIT
  say "building base $LOCAL_BASE: debootstrap --variant=minbase bookworm from $mirror (about a minute), Python $py_version from $home"
  debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; die "debootstrap failed"; }
  local security=http://deb.debian.org/debian-security
  [[ "${mirror%/}" == */debian ]] && security=${mirror%/}-security
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "$security" >"$dir/etc/apt/sources.list"
  # The interpreter and its standard library, without site-packages, tests, Tk, IDLE and the static library.
  (cd "$home" && tar -c --exclude='lib/python3.11/site-packages/*' --exclude=lib/python3.11/test \
      --exclude=lib/python3.11/idlelib --exclude=lib/python3.11/tkinter --exclude=lib/python3.11/turtledemo \
      --exclude='lib/python3.11/lib-dynload/_tkinter*' --exclude='lib/python3.11/config-3.11-*/*.a' \
      bin/python3.11 lib/libpython3.11.so* lib/python3.11 2>/dev/null) | tar -C "$dir/usr/local" -x
  ln -s python3.11 "$dir/usr/local/bin/python3" && ln -s python3.11 "$dir/usr/local/bin/python"
  chroot "$dir" /sbin/ldconfig
  chroot "$dir" /usr/local/bin/python3.11 -c 'import bz2, ctypes, ensurepip, lzma, sqlite3, ssl, uuid, venv, zlib' \
    || die "the copied Python does not run in the base"
  # What python:*-slim images leave out too: apt's caches and lists (~80 MB), docs and man pages.
  rm -rf "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
         "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/var/log/*.log
  tar -C "$dir" -c . | "${DOCKER[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$dir" "$dir.log"
  trap - EXIT
}

if [ -n "${DOCINGEST_BASE_IMAGE:-}" ]; then
  base=$DOCINGEST_BASE_IMAGE
  has_image "$base" || "${DOCKER[@]}" pull "$base" >&2 || die "base image $base is not here and cannot be pulled"
elif has_image "$DEFAULT_BASE"; then
  base=$DEFAULT_BASE
elif has_image "$LOCAL_BASE"; then
  base=$LOCAL_BASE   # made by an earlier run, when the default could not be pulled
elif timeout 120 "${DOCKER[@]}" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
  base=$DEFAULT_BASE
else
  say "$DEFAULT_BASE cannot be pulled (no registry answers): building a base here"
  build_debian_base
  base=$LOCAL_BASE
fi

# ---- the wheelhouse -----------------------------------------------------------------------------------------------
extras=""
extra_reqs=()
if [ "$pdf_models" = true ]; then
  # The `accurate` extra (Docling's layout and table models need torchvision) and docling-tools (the downloader).
  extras=accurate
  extra_reqs=("docling-slim[cli]")
fi
# docingest's requirements as pyproject.toml states them, plus its build backend (docingest itself is installed
# from the copied source with --no-build-isolation). torch comes as this machine's pip configuration offers it: here
# a local CPU wheel (2.13.0+cpu sorts above PyPI's CUDA 2.13.0); the check below refuses CUDA libraries.
requirements=$("$py" - "$extras" "${extra_reqs[@]}" <<'EOF'
import sys
import tomllib

with open("pyproject.toml", "rb") as fh:
    meta = tomllib.load(fh)
reqs = ["torch", *meta["project"]["dependencies"], *meta["build-system"]["requires"]]
for extra in filter(None, sys.argv[1].split(",")):
    reqs += meta["project"]["optional-dependencies"][extra]
reqs += sys.argv[2:]
print("\n".join(reqs))
EOF
)
key=$( { cat constraints.txt; echo "$requirements"; "$py" -c 'import platform; print(platform.machine())';
         if [ "$pdf_models" = true ]; then echo "$TORCH_INDEX"; fi; } | sha256sum | cut -c1-16)
wheelhouse=$CACHE/wheels-cp311-$key
if [ ! -f "$wheelhouse/requirements.txt" ]; then
  say "making the wheelhouse $wheelhouse (pip wheel with constraints.txt; minutes on a cold pip cache)"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.wheels.XXXXXX")
  echo "$requirements" >"$tmp/requirements.in"
  index_args=()
  [ "$pdf_models" = true ] && index_args=(--extra-index-url "$TORCH_INDEX")
  # The host's pip configuration applies (find-links, extra indexes, proxy CA): the same packages as `.venv`.
  if ! "$py" -m pip wheel --quiet --progress-bar off --wheel-dir "$tmp" -c constraints.txt "${index_args[@]}" \
        -r "$tmp/requirements.in" >"$tmp.log" 2>&1; then
    tail -30 "$tmp.log" >&2; rm -rf "$tmp"; die "pip wheel failed (log: $tmp.log)"
  fi
  # pip chose wheels by this interpreter's markers; the image's Python may be another 3.11 release (Debian's is
  # 3.11.2, and e.g. redis needs async-timeout below 3.11.3): add what any 3.11.x needs beyond that.
  more=$("$py" - "$tmp" <<'EOF'
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

wheels = list(Path(sys.argv[1]).glob("*.whl"))
have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
missing = set()
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.partition(":")[2].strip())
        if canonicalize_name(req.name) in have or not req.marker:
            continue
        if any(req.marker.evaluate({"python_version": "3.11", "python_full_version": f"3.11.{patch}", "extra": ""})
               for patch in range(20)):
            req.marker = None
            missing.add(str(req))
print("\n".join(sorted(missing)))
EOF
)
  if [ -n "$more" ]; then
    say "adding for other Python 3.11 releases: $(echo $more)"
    # shellcheck disable=SC2086
    "$py" -m pip wheel --quiet --progress-bar off --wheel-dir "$tmp" -c constraints.txt $more >"$tmp.log" 2>&1 \
      || { tail -30 "$tmp.log" >&2; rm -rf "$tmp"; die "pip wheel failed (log: $tmp.log)"; }
  fi
  rm -f "$tmp.log"
  if ls "$tmp" | grep -q '^nvidia_'; then
    rm -rf "$tmp"; die "the wheelhouse would hold CUDA libraries (nvidia-*): install a CPU torch for this Python first"
  fi
  if [ "$pdf_models" = true ] && ! ls "$tmp" | grep -q '^torchvision-.*+cpu'; then
    rm -rf "$tmp"
    die "no CPU torchvision wheel found at $TORCH_INDEX (PyPI's torchvision is built for PyPI's CUDA torch and breaks beside the CPU one)"
  fi
  cp constraints.txt "$tmp/constraints.txt"
  mv "$tmp/requirements.in" "$tmp/requirements.txt"   # last: its presence marks a complete wheelhouse
  rm -rf "$wheelhouse" && mv "$tmp" "$wheelhouse"
  say "wheelhouse: $(ls "$wheelhouse" | grep -c '\.whl$') wheels, $(du -sh "$wheelhouse" | cut -f1)"
fi
touch "$wheelhouse"
# Wheelhouses of other pins, unused for 30 days, go.
find "$CACHE" -maxdepth 1 -name 'wheels-*' -mtime +30 -exec rm -rf {} + 2>/dev/null || true
# Into the build context: hard links when on the same file system (instant, no space), else a copy.
rm -rf docker/wheelhouse
cp -al "$wheelhouse" docker/wheelhouse 2>/dev/null || { rm -rf docker/wheelhouse; cp -a "$wheelhouse" docker/wheelhouse; }

# ---- build --------------------------------------------------------------------------------------------------------
secret_args=()
[ -n "$CA" ] && [ -s "$CA" ] && secret_args=(--secret "id=ca,src=$CA")
say "building $IMAGE from $base (pdf models: $pdf_models)"
"${DOCKER[@]}" build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE_IMAGE=$base" \
  --build-arg "PDF_MODELS=$pdf_models" "${secret_args[@]}" "${build_args[@]}" .
say "built $IMAGE ($("${DOCKER[@]}" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}'))"
