#!/usr/bin/env python3
"""Where the worker's wasm goes: its largest functions, by the size of their code.

Build with the function names kept, then read the build:

    KEEP_WASM_NAMES=1 bash scripts/build-worker.sh
    python3 scripts/wasm-sizes.py build/index_bg.wasm [N]          # the N largest (default 40)
    python3 scripts/wasm-sizes.py build/index_bg.wasm --refs NAME  # who takes NAME's address

Sizes are of the uncompressed code; what gzip makes of them is smaller, but the order holds.
`--refs` lists the functions whose code holds `i32.const <NAME's table slot>`: how a function
reached only through the function table (a `fmt` implementation, a trait object's method) is
kept alive. A match is a candidate (the same constant can be a plain number); binaryen's
`wasm-opt --print-call-graph` shows the direct calls.
"""
import sys


def leb(data, i):
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def sleb_bytes(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def read(path):
    data = open(path, "rb").read()
    assert data[:4] == b"\0asm", f"{path} is not a wasm module"
    sections, pos = [], 8
    while pos < len(data):
        size, start = leb(data, pos + 1)
        sections.append((data[pos], start, size))
        pos = start + size
    imported, names, bodies, slots = 0, {}, [], {}
    for sid, start, size in sections:
        if sid == 2:  # imports: functions imported come first in the index space
            count, i = leb(data, start)
            for _ in range(count):
                for _ in range(2):
                    length, i = leb(data, i)
                    i += length
                kind = data[i]
                i += 1
                if kind == 0:
                    _, i = leb(data, i)
                    imported += 1
                elif kind in (1, 2):
                    if kind == 1:
                        i += 1
                    flags = data[i]
                    _, i = leb(data, i + 1)
                    if flags & 1:
                        _, i = leb(data, i)
                elif kind == 3:
                    i += 2
                elif kind == 4:
                    _, i = leb(data, i + 1)
        elif sid == 9:  # element segments: the function table's slots
            count, i = leb(data, start)
            for _ in range(count):
                flags, i = leb(data, i)
                if flags != 0 or data[i] != 0x41:
                    break  # only the active segments of table 0 at a constant offset
                offset, i = leb(data, i + 1)
                i += 1  # end
                n, i = leb(data, i)
                for k in range(n):
                    function, i = leb(data, i)
                    slots[function] = offset + k
        elif sid == 10:  # code
            count, i = leb(data, start)
            for k in range(count):
                length, body = leb(data, i)
                bodies.append((imported + k, body, body + length))
                i = body + length
        elif sid == 0:  # custom: the "name" section
            length, i = leb(data, start)
            if data[i:i + length] != b"name":
                continue
            i += length
            while i < start + size:
                sub, (length, j) = data[i], leb(data, i + 1)
                if sub == 1:
                    count, k = leb(data, j)
                    for _ in range(count):
                        index, k = leb(data, k)
                        n, k = leb(data, k)
                        names[index] = data[k:k + n].decode("utf-8", "replace")
                        k += n
                i = j + length
    return data, names, bodies, slots


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data, names, bodies, slots = read(sys.argv[1])
    if not names:
        sys.exit("no function names: build with KEEP_WASM_NAMES=1 bash scripts/build-worker.sh")
    if len(sys.argv) > 3 and sys.argv[2] == "--refs":
        for function in [f for f, name in names.items() if sys.argv[3] in name]:
            if function not in slots:
                print(f"{names[function]}: not in the function table")
                continue
            needle = b"\x41" + sleb_bytes(slots[function])
            print(f"{names[function]} (table slot {slots[function]}), taken by:")
            for index, start, end in bodies:
                if needle in data[start:end]:
                    print(f"  {names.get(index, index)}")
        return
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    sized = sorted(((end - start, index) for index, start, end in bodies), reverse=True)
    print(f"{sum(s for s, _ in sized)} bytes of code in {len(sized)} functions; the largest:")
    for size, index in sized[:top]:
        print(f"{size:>8}  {names.get(index, index)}")


main()
