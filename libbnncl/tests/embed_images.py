"""Writes raw uint8 images as a C file for the Cortex-M test program (libbnncl/tests/cortexm/cortexm_main.c).

    python libbnncl/tests/embed_images.py TEST.u8 TRAIN.u8 LABELS.i32 --image-bytes 784 -o data.c

TEST.u8 and TRAIN.u8: N x H x W x C bytes each; LABELS.i32: one little-endian int32 per training image.
The arrays go to the section .testdata (flash, counted apart from the firmware by the linker script).
No dependency beyond the Python standard library.
"""

import argparse
import struct
import sys
from pathlib import Path


def c_bytes(name: str, data: bytes) -> str:
    rows = [", ".join(str(b) for b in data[i:i + 24]) for i in range(0, len(data), 24)]
    body = ",\n    ".join(rows) or "0"
    return (f"__attribute__((section(\".testdata\"))) const uint8_t {name}[{max(len(data), 1)}] = {{\n"
            f"    {body}\n}};\n")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("test")
    ap.add_argument("train")
    ap.add_argument("labels")
    ap.add_argument("--image-bytes", type=int, required=True)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args(argv)
    test, train, lab = (Path(p).read_bytes() for p in (a.test, a.train, a.labels))
    n = a.image_bytes
    if len(test) % n or len(train) % n or len(lab) != 4 * (len(train) // n):
        ap.error("sizes: whole images expected, and one int32 label per training image")
    labels = struct.unpack(f"<{len(lab) // 4}i", lab)
    text = ("/* written by libbnncl/tests/embed_images.py */\n#include <stdint.h>\n\n"
            f"const uint32_t bnncl_test_count = {len(test) // n}, bnncl_train_count = {len(train) // n};\n"
            + c_bytes("bnncl_test_images", test) + c_bytes("bnncl_train_images", train)
            + "__attribute__((section(\".testdata\"))) const int32_t bnncl_train_labels["
            + f"{max(len(labels), 1)}] = {{{', '.join(map(str, labels)) or '0'}}};\n")
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
