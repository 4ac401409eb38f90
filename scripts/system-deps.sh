#!/usr/bin/env bash
# System packages the tests need and PyPI cannot give: Princeton WordNet 3.0 (Debian wordnet-base, read by
# nltk for the official LRS-VQA scorer) and a Chromium for the browser test of the web demo (Playwright
# cannot download browsers here). Installed with apt-get when missing; elsewhere, says what to install.
set -euo pipefail

missing=()
[ -f /usr/share/wordnet/index.noun ] || missing+=(wordnet-base)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${missing[*]} (apt-get)"
  # A failed install is reported, not fatal: the tests that need the package then say what is missing.
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    echo "warning: could not install ${missing[*]} with apt-get" >&2
  fi
else
  echo "warning: no apt-get; install ${missing[*]} yourself (the scorer and browser tests need them)" >&2
fi
