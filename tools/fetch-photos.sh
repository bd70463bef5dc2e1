#!/usr/bin/env bash
# Puts 17 real photos from scikit-image's bundled data into .cache/data/photos/, arranged in
# labelled sub-folders as `mscope embed --images` reads them (the sub-folder is the label):
#   everyday/  astronaut, camera, chelsea (a cat), coffee, horse, motorcycle_left, rocket,
#              clock_motion
#   science/   cell, ihc, microaneurysms, retina, hubble_deep_field
#   textures/  brick, grass, gravel, moon
# and prints the folder. The photos ship inside the scikit-image wheel as skimage/data/*; this
# downloads one pinned wheel from PyPI and checks every photo's sha256. Idempotent: does
# nothing when the folder is already complete.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tools/lib/pypi-wheel.sh"
dest="$root/.cache/data/photos"
version="0.25.2"
# label/name sha256
photos="
everyday/astronaut.png 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
everyday/camera.png b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a
everyday/chelsea.png 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
everyday/coffee.png cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
everyday/horse.png c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455
everyday/motorcycle_left.png db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179
everyday/rocket.jpg c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c
everyday/clock_motion.png f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955
science/cell.png 8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515
science/ihc.png f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef
science/microaneurysms.png a1e1be59aa447f8ce082f7fa809997ab369a2b137cb6c4202abc647c7ccf6456
science/retina.jpg 38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6
science/hubble_deep_field.jpg 3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4
textures/brick.png 7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf
textures/grass.png b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89
textures/gravel.png c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12
textures/moon.png 78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577
"
if [ -f "$dest/.complete" ]; then
    echo "$dest"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download_wheel fetch-photos.sh scikit-image "$version" "$work"
# Unpacked beside the destination and renamed into place: an interrupted run leaves no
# half-filled folder behind.
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
python3 - "$work"/scikit_image-"$version"-*.whl "$dest.partial" "$photos" <<'PY'
import hashlib, os, sys, zipfile
wheel, out, listing = sys.argv[1:4]
archive = zipfile.ZipFile(wheel)
for line in listing.split("\n"):
    if not line.strip():
        continue
    target, want = line.split()
    data = archive.read("skimage/data/" + os.path.basename(target))
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        sys.exit(f"fetch-photos.sh: {target} from {wheel} has sha256 {got}, expected {want}")
    os.makedirs(os.path.join(out, os.path.dirname(target)), exist_ok=True)
    with open(os.path.join(out, target), "wb") as f:
        f.write(data)
# Hidden, so `mscope embed --images` passes over it.
open(os.path.join(out, ".complete"), "w").close()
PY
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "$dest"
