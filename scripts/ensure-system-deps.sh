#!/usr/bin/env bash
# Install the Debian packages the build needs, only when a command is missing.
#   report: xelatex + pandoc (nbconvert's LaTeX route), pdftotext (tests read the PDF)
#   browser: chromium (the explorer's browser test)
set -euo pipefail
need=()
for what in "$@"; do
  case "$what" in
    report)
      command -v xelatex >/dev/null || need+=(texlive-xetex texlive-fonts-recommended texlive-plain-generic lmodern)
      command -v pandoc >/dev/null || need+=(pandoc)
      command -v pdftotext >/dev/null || need+=(poppler-utils)
      ;;
    browser)
      command -v chromium >/dev/null || need+=(chromium fonts-dejavu-core)
      ;;
    *) echo "ensure-system-deps: unknown group '$what' (use report or browser)" >&2; exit 2 ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
