#!/usr/bin/env bash
# The system packages the build and the tests use, found by their commands:
#   report:  xelatex and pandoc (the PDF; pandoc also the HTML report's formulas), pdftotext (tests)
#   browser: chromium (browser tests of the explorer and the HTML report)
#
#   ensure-system-deps.sh --install GROUP...      install what is missing with apt-get, or fail saying why
#   ensure-system-deps.sh --if-possible GROUP...  install when apt-get and root (or sudo) are there; otherwise
#                                                 say what is missing and what it disables, and carry on
set -euo pipefail
mode="$1"; shift
case "$mode" in --install|--if-possible) ;; *) echo "usage: $0 --install|--if-possible report|browser..." >&2; exit 2 ;; esac
need=(); missing=()
for what in "$@"; do
  case "$what" in
    report)
      command -v xelatex >/dev/null || { need+=(texlive-xetex texlive-fonts-recommended texlive-plain-generic lmodern); missing+=(xelatex); }
      command -v pandoc >/dev/null || { need+=(pandoc); missing+=(pandoc); }
      command -v pdftotext >/dev/null || { need+=(poppler-utils); missing+=(pdftotext); }
      ;;
    browser)
      command -v chromium >/dev/null || { need+=(chromium fonts-dejavu-core); missing+=(chromium); }
      ;;
    *) echo "ensure-system-deps: unknown group '$what' (use report or browser)" >&2; exit 2 ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; fi
if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
  echo "Installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
if [ "$mode" = "--install" ]; then
  echo "Cannot install ${need[*]}: this needs apt-get and root (or sudo). On macOS: brew install pandoc basictex poppler" >&2
  echo "(and a Chromium for the browser tests); see the README." >&2
  exit 1
fi
echo "Not found: ${missing[*]} (no apt-get with root here). Carrying on without them: without xelatex the report is HTML only,"
echo "and the tests that need them are skipped. To enable them: 'sudo make system-deps' (Debian/Ubuntu) or see the README (macOS)."
