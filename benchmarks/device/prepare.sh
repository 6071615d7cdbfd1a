#!/usr/bin/env bash
# Run HERE (the CPU machine) before a device run: fills two git-ignored folders that the device tool
# carries (the device machine sees only the checkout, at most 64 MiB, and lacks some packages):
#   .whl/      wheels for Python 3.12 x86-64 of what the device image lacks (albumentations and its
#              needs, pycocotools), at the versions this project's venv resolved on 2026-12-05 (each one
#              pinned: --no-deps cannot check that they agree); run.sh installs them into /tmp/site there
#   .devdata/  a subset of ../shared/data in the same layouts: CamVid (every sequence, 0016E5 kept
#              for val), hymenoptera (train/ants, train/bees), BCCD (all of it; its lists filtered)
# Then, with the device tool: run(command="bash benchmarks/device/run.sh", carry=[".whl", ".devdata"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared/data}
CAMVID_PER_SEQUENCE=${CAMVID_PER_SEQUENCE:-30}
HYMENOPTERA_PER_CLASS=${HYMENOPTERA_PER_CLASS:-40}

rm -rf .whl .devdata
mkdir -p .whl .devdata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform any -d .whl \
    albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2 simsimd==6.5.16 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pycocotools==2.0.11

# CamVid: the first N frames of each sequence (file names start with it), images and masks
mkdir -p .devdata/CamVid/train .devdata/CamVid/trainannot
for seq in $(ls "$SHARED/CamVid/train" | sed -E 's/^([A-Za-z0-9]+)_.*/\1/' | sort -u); do
    for f in $(ls "$SHARED/CamVid/train" | grep "^${seq}_" | head -n "$CAMVID_PER_SEQUENCE"); do
        cp "$SHARED/CamVid/train/$f" .devdata/CamVid/train/
        cp "$SHARED/CamVid/trainannot/$f" .devdata/CamVid/trainannot/
    done
done
# hymenoptera: N images per class of its train folder (the GIF placeholder skipped)
for cls in ants bees; do
    mkdir -p ".devdata/hymenoptera/train/$cls"
    ls "$SHARED/hymenoptera/train/$cls" | grep -v '\.gif$' | head -n "$HYMENOPTERA_PER_CLASS" \
        | while read -r f; do cp "$SHARED/hymenoptera/train/$cls/$f" ".devdata/hymenoptera/train/$cls/"; done
done
# BCCD: all of it (8 MB)
mkdir -p .devdata/BCCD_Dataset
cp -r "$SHARED/BCCD_Dataset/BCCD" .devdata/BCCD_Dataset/
du -sh .whl .devdata
echo "checkout + carried: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked"
