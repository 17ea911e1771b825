#!/usr/bin/env bash
# Install the Debian packages the tests and the local stack use, when any is missing:
#   chromium + fonts-dejavu-core  headless browser for the dashboard test
#   dicom3tools                   dciodvfy, the DICOM validator the de-identification tests compare with
#   orthanc + orthanc-dicomweb    the DICOMweb server of the local stack
# Idempotent and quick when everything is there (one dpkg query). Needs root or sudo and the apt mirrors.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core dicom3tools orthanc orthanc-dicomweb)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-debian-packages: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Orthanc's post-install asks for a system service; in a container that is refused, which is harmless:
# the local stack starts its own Orthanc process.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
  # a refused service start can leave the package half-configured; configure it once more, then check
  $SUDO dpkg --configure -a >/dev/null 2>&1 || true
}
for pkg in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || {
    echo "install-debian-packages: $pkg did not install" >&2
    exit 1
  }
done
