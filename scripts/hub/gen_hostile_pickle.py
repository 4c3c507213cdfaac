"""Writes tests/fixtures/single_file/strided_huge.pt: a torch.save-shaped zip
whose one tensor is a stride-0 view of a one-element storage with shape
(2**20, 2**20), i.e. 4 TiB once copied out. A reader must refuse it with an
error rather than try to allocate it. Built by hand (no torch needed): the
pickle opcodes below are what torch.save emits for `_rebuild_tensor_v2`.

    python scripts/hub/gen_hostile_pickle.py
"""

import os
import struct
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "diffusion-hub", "tests", "fixtures",
                   "single_file", "strided_huge.pt")


def unicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def binint(v):
    return b"J" + struct.pack("<i", v)


def main():
    big = 2 ** 20
    pkl = b"".join([
        b"\x80\x02",                                  # PROTO 2
        b"}",                                         # EMPTY_DICT
        b"(",                                         # MARK (items)
        unicode("huge"),
        b"ctorch._utils\n_rebuild_tensor_v2\n",       # GLOBAL
        b"(",                                         # MARK (args)
        b"(", unicode("storage"), b"ctorch\nFloatStorage\n", unicode("0"),
        unicode("cpu"), b"K\x01", b"t",               # persistent id tuple
        b"Q",                                         # BINPERSID
        b"K\x00",                                     # storage offset
        b"(", binint(big), binint(big), b"t",         # shape
        b"(", b"K\x00", b"K\x00", b"t",               # stride
        b"\x89",                                      # requires_grad False
        b"ccollections\nOrderedDict\n", b")", b"R",   # backward hooks
        b"t",                                         # args tuple
        b"R",                                         # REDUCE
        b"u",                                         # SETITEMS
        b".",                                         # STOP
    ])
    with zipfile.ZipFile(OUT, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("strided_huge/data.pkl", pkl)
        z.writestr("strided_huge/byteorder", "little")
        z.writestr("strided_huge/data/0", struct.pack("<f", 1.0))
        z.writestr("strided_huge/version", "3\n")
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
