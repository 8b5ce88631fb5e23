"""Read a TensorBoard log folder (`OUT/tb`) with TensorBoard's own reader and print, as JSON,
each run's scalars and images as TensorBoard shows them (after its purge of steps a resumed
run logged again):
{run: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, w, h, sha256], ...]}}}
With `--raw` after the folder: every event as written, without that purge.
"""

import hashlib
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

root = sys.argv[1]
purge = "--raw" not in sys.argv[2:]
out = {}
for run in sorted(os.listdir(root)):
    acc = ea.EventAccumulator(
        os.path.join(root, run),
        size_guidance={ea.SCALARS: 0, ea.IMAGES: 0},  # keep every event
        purge_orphaned_data=purge,
    )
    acc.Reload()
    tags = acc.Tags()
    out[run] = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {
            t: [
                [e.step, e.width, e.height, hashlib.sha256(e.encoded_image_string).hexdigest()]
                for e in acc.Images(t)
            ]
            for t in tags["images"]
        },
    }
print(json.dumps(out))
