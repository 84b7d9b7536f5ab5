#!/usr/bin/env python3
"""Rewrite CUDA sources (.cu, .cuh) so that they compile as C++ against the SIMT emulator (simt.h).

Four mechanical rewrites, each kept on the line where it starts (a declaration that spans lines keeps
its line breaks), so that compiler, sanitizer and emulator reports point into the original file,
which a #line directive names:
  __shared__ T name[N];              static char k_; auto& name = shared_var<T[N]>(&k_, align);
  extern __shared__ T name[];        T* name = dyn_shared<T>();
  kernel<<<grid, block, smem, st>>>(args)
                                     ::simt::launch_on("kernel", __FILE__, __LINE__, st, grid, block,
                                                       smem, kernel, args)
  TORCH_LIBRARY_IMPL(fastgan, CUDA,  TORCH_LIBRARY_IMPL(fastgan_simt, CPU,
Comments and string literals are never rewritten.

usage: cu2simt.py SRC_ROOT OUT_ROOT FILE...   (FILE relative to SRC_ROOT; output at OUT_ROOT/FILE.cpp
for .cu, OUT_ROOT/FILE for headers, which OUT_ROOT placed first on the include path shadows)
"""
import os
import re
import sys


def code_only(src: str) -> str:
    """src with comments and string/char literals blanked (newlines kept): what the rewrites see."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            m = re.match(r'R"([^(\s]*)\(', src[i:]) if c == '"' and i > 0 and src[i - 1] == "R" else None
            if m:
                j = src.find(")" + m.group(1) + '"', i)
                j = n if j < 0 else j + len(m.group(1)) + 2
            else:
                j = i + 1
                while j < n and src[j] != c:
                    j += 2 if src[j] == "\\" else 1
                j = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, j):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def split_top(s: str):
    """Split on commas outside (), [] and {}."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


ALIGN = re.compile(r"(__align__|alignas)\s*\(([^()]*)\)")
DECL = re.compile(r"^(?P<type>.*?[\w>*&\s])(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(\[[^\]]*\]\s*)*)$", re.S)


def rewrite_shared(text: str, extern: bool, where: str) -> str:
    """One `[extern] __shared__ ...;` declaration (without the keywords) -> its replacement."""
    newlines = text.count("\n")
    flat = " ".join(text.split())
    align = None
    m = ALIGN.search(flat)
    if m:
        align = m.group(2).strip()
        flat = (flat[:m.start()] + flat[m.end():]).strip()
    if "," in re.sub(r"\[[^\]]*\]|<[^<>]*>", "", flat):
        raise SystemExit(f"cu2simt: {where}: declare one __shared__ variable per statement: {text!r}")
    d = DECL.match(flat)
    if not d:
        raise SystemExit(f"cu2simt: {where}: cannot parse the __shared__ declaration {text!r}")
    ty, name, dims = d.group("type").strip(), d.group("name"), "".join(d.group("dims").split())
    if extern:
        if dims != "[]":
            raise SystemExit(f"cu2simt: {where}: extern __shared__ must be an unsized array: {text!r}")
        out = f"{ty}* {name} = ::simt::detail::dyn_shared<{ty}>();"
    else:
        key = f"simt_shared_key_{name}"
        al = f", {align}" if align else ""
        out = (f"static char {key}; auto& {name} = ::simt::detail::shared_var<{ty}{dims}>(&{key}{al});")
    return out + "\n" * newlines


LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^;{}()]*?>)?)\s*<<<")


def rewrite(src: str, path: str) -> str:
    code = code_only(src)
    edits = []  # (start, end, replacement)

    def line_of(pos):
        return src.count("\n", 0, pos) + 1

    for m in re.finditer(r"\b(extern\s+)?__shared__\b", code):
        end = code.find(";", m.end())
        if end < 0:
            raise SystemExit(f"cu2simt: {path}:{line_of(m.start())}: unterminated __shared__ declaration")
        body = src[m.end():end]
        edits.append((m.start(), end + 1, rewrite_shared(body, bool(m.group(1)), f"{path}:{line_of(m.start())}")))

    for m in LAUNCH.finditer(code):
        close = code.find(">>>", m.end())
        paren = code.find("(", close)
        if close < 0 or paren < 0 or code[close + 3:paren].strip():
            raise SystemExit(f"cu2simt: {path}:{line_of(m.start())}: cannot parse the kernel launch")
        cfg = split_top(src[m.end():close])
        if not 2 <= len(cfg) <= 4:
            raise SystemExit(f"cu2simt: {path}:{line_of(m.start())}: a launch takes 2 to 4 <<<>>> arguments")
        cfg += ["0", "nullptr"][len(cfg) - 2:]
        grid, block, smem, stream = cfg
        kernel = m.group(1)
        name = " ".join(kernel.split()).replace('"', '\\"')
        empty_args = code[paren + 1:].lstrip().startswith(")")
        rep = (f'::simt::launch_on("{name}", __FILE__, __LINE__, {stream}, {grid}, {block}, {smem}, {kernel}'
               + ("" if empty_args else ", "))
        rep = " ".join(rep.split("\n")) + "\n" * src.count("\n", m.start(), paren + 1)
        edits.append((m.start(), paren + 1, rep))

    for m in re.finditer(r"\bTORCH_LIBRARY_IMPL\s*\(\s*fastgan\s*,\s*CUDA\s*,", code):
        edits.append((m.start(), m.end(), "TORCH_LIBRARY_IMPL(fastgan_simt, CPU,"))

    edits.sort()
    out, pos = [], 0
    for start, end, rep in edits:
        if start < pos:
            raise SystemExit(f"cu2simt: {path}:{line_of(start)}: overlapping rewrites")
        out.append(src[pos:start])
        out.append(rep)
        pos = end
    out.append(src[pos:])
    return "".join(out)


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    src_root, out_root, files = argv[0], argv[1], argv[2:]
    for rel in files:
        with open(os.path.join(src_root, rel)) as f:
            src = f.read()
        body = rewrite(src, rel)
        is_cu = rel.endswith(".cu")
        dst = os.path.join(out_root, rel + ".cpp" if is_cu else rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        text = ("#include <cuda_runtime.h>  // the SIMT emulator\n" if is_cu else "") + \
            f'#line 1 "csrc/{rel}"\n' + body
        old = None
        if os.path.exists(dst):
            with open(dst) as f:
                old = f.read()
        if old != text:  # unchanged outputs keep their timestamps: no needless rebuilds
            with open(dst, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
