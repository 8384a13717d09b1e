"""What a user would run instead of `tlx shard`, and the ceiling of merely reading the files: each a
variant that benchmarks/shard_throughput runs in a fresh process (its CPU time, imports included).

    python -m benchmarks.shard_peers VARIANT FILES.json OUT_DIR

FILES.json: {"files": [path, ...], "syntaxes": [transfer syntax UID, ...]}, the slices tlx's plan
converts (peers do no scan, no dedup, no split, no coverage: they are handed the right files).
Every peer stores what tlx stores: the slice in HU, area-resized to 256 x 256, rounded to int16,
zstd level 3, one sample per slice, 5000 samples per shard. Every peer decodes with the plugins tlx
picks (same_plugins: pydicom's decoders keep only that plugin), so the rows compare the work around
the decoders, not the decoders.

  ceiling         pydicom dcmread + pixel_array of each file, with the decoding plugins tlx picks
                  (datakit.dicom_pixels.preferred_plugin), nothing else: merely reading the files
  ceiling-default the same with pydicom's own plugin choice
  pydicom-wds     a plain script: dcmread, pixel_array, rescale, PIL BOX resize, int16, zstd, and
                  webdataset.ShardWriter
  litdata         LitData `optimize()` (num_workers=1) over the files, the same per-file function
  monai           MONAI `LoadImage(reader="PydicomReader")` (it rescales), `Resize(mode="area")`,
                  int16, zstd, webdataset.ShardWriter
  headers         pydicom dcmread(stop_before_pixels=True) of every file found (FILES.json's
                  "all_files"): the ceiling of `tlx scan`
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SIZE = 256
PER_SHARD = 5000


def ceiling(files, syntaxes, out, same_plugins=True):
    import pydicom

    from datakit.dicom_pixels import preferred_plugin

    for path, ts in zip(files, syntaxes):
        ds = pydicom.dcmread(path)
        plugin = preferred_plugin(ts) if same_plugins else None
        if plugin:
            ds.pixel_array_options(decoding_plugin=plugin)
        ds.pixel_array


def same_plugins(syntaxes) -> None:
    """Leave each syntax's pydicom decoder only the plugin tlx asks for first, so that code which calls
    plain `pixel_array` (the peers, MONAI's PydicomReader) decodes as tlx does; calling it again is cheap."""
    from pydicom.pixels import get_decoder

    from datakit.dicom_pixels import preferred_plugin

    for ts in set(syntaxes):
        plugin = preferred_plugin(ts)
        if plugin is None:
            continue
        decoder = get_decoder(ts)
        for other in [p for p in decoder.available_plugins if p != plugin]:
            decoder.remove_plugin(other)


def _slice_to_payload(hu: np.ndarray, compressor) -> bytes:
    """HU float -> 256 x 256 BOX resize (PIL, as the obvious script does) -> int16 -> zstd-3."""
    from PIL import Image

    img = np.asarray(Image.fromarray(np.ascontiguousarray(hu, np.float32), mode="F")
                     .resize((SIZE, SIZE), Image.Resampling.BOX))
    return compressor.compress(np.clip(np.rint(img), -32768, 32767).astype("<i2").tobytes())


def _pydicom_hu(path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) + \
        float(ds.get("RescaleIntercept", 0) or 0)


def pydicom_wds(files, syntaxes, out):
    import webdataset as wds
    import zstandard

    same_plugins(syntaxes)
    c = zstandard.ZstdCompressor(level=3)
    with wds.ShardWriter(str(Path(out) / "shard-%06d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
        for i, path in enumerate(files):
            sink.write({"__key__": f"s{i:07d}", "hu.zst": _slice_to_payload(_pydicom_hu(path), c), "cls": b"0"})


def _litdata_item(item):
    import zstandard

    path, ts = item
    same_plugins([ts])
    return {"hu": _slice_to_payload(_pydicom_hu(path), zstandard.ZstdCompressor(level=3)), "cls": 0}


def litdata(files, syntaxes, out):
    from litdata import optimize

    optimize(fn=_litdata_item, inputs=list(zip(files, syntaxes)), output_dir=str(Path(out) / "litdata"),
             chunk_size=PER_SHARD, num_workers=1, verbose=False, reorder_files=False)


def monai(files, syntaxes, out):
    import webdataset as wds
    import zstandard
    from monai.transforms import LoadImage, Resize

    same_plugins(syntaxes)
    load = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)
    resize = Resize((SIZE, SIZE), mode="area")
    c = zstandard.ZstdCompressor(level=3)
    with wds.ShardWriter(str(Path(out) / "shard-%06d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
        for i, path in enumerate(files):
            img = resize(load(path))[0].numpy()
            stored = np.clip(np.rint(img), -32768, 32767).astype("<i2")
            sink.write({"__key__": f"s{i:07d}", "hu.zst": c.compress(stored.tobytes()), "cls": b"0"})


def headers(files, syntaxes, out, all_files=()):
    import pydicom

    for path in all_files:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files fail here as they would in any reader
            pass


VARIANTS = {"ceiling": ceiling, "ceiling-default": lambda f, s, o: ceiling(f, s, o, same_plugins=False),
            "pydicom-wds": pydicom_wds, "litdata": litdata, "monai": monai}


def main(argv=None) -> None:
    variant, listing, out = (argv or sys.argv[1:])[:3]
    spec = json.loads(Path(listing).read_text())
    Path(out).mkdir(parents=True, exist_ok=True)
    if variant == "headers":
        headers(spec["files"], spec["syntaxes"], out, spec["all_files"])
    else:
        VARIANTS[variant](spec["files"], spec["syntaxes"], out)


if __name__ == "__main__":
    main()
