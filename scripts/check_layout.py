#!/usr/bin/env python3
"""The layout's bars, checked on every test run (ctest: layout_bars):

1. Folders form layers: a file includes only headers of its own folder's layer or a lower one
   (kernels < comm < optim < torch, proc < lan < train < apps < bench). A public header under
   include/onebit/ belongs to the layer that implements it (OWNERS); a new one must be listed.
2. No source file over 500 lines, and no function over 80 lines, outside tests.

Usage: scripts/check_layout.py [ROOT]. Prints every breach and exits 1 if there is any.
"""
import ast
import os
import re
import sys

LAYERS = {"kernels": 0, "comm": 1, "optim": 2, "torch": 3, "proc": 3, "lan": 4, "train": 5, "apps": 6,
          "bench": 7, "examples": 7, "python": 7}
OWNERS = {
    "kernels": ["aligned", "error", "fnv1a", "kernels", "thread_pool", "cuda_kernels"],
    "comm": ["communicator", "compressed_allreduce", "half_allreduce", "local_comm", "mpi_comm", "nccl_comm",
             "stream_communicator", "fault_injection", "cuda_compressed_allreduce"],
    "optim": ["checkpoint", "flat_layout", "freeze_schedule", "optimizer_registry", "optimizers", "cuda_optimizers"],
    "torch": ["torch_c10d", "torch_optimizers", "torch_watchdog"],
}
HEADER_OWNER = {f"onebit/{h}.hpp": folder for folder, hs in OWNERS.items() for h in hs}
SOURCES = (".cpp", ".hpp", ".cu", ".cuh", ".h", ".c")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def is_test(path):
    parts = path.split(os.sep)
    name = parts[-1]
    return ("tests" in parts or "fuzz" in parts or "_test" in name or name.startswith("test_")
            or name == "test_util.hpp")


def code_files(root):
    for top in sorted(LAYERS):
        for d, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(x for x in dirs if x not in ("results", "__pycache__"))
            for f in sorted(files):
                if f.endswith(SOURCES + (".py",)):
                    yield os.path.relpath(os.path.join(d, f), root)


def layer_of(path):
    return path.split(os.sep)[0]


def header_layer(root, src, name, basenames):
    """The folder that owns the header `name` included from `src`, or None for a shared test one."""
    if name in HEADER_OWNER:
        return HEADER_OWNER[name]
    if name.startswith("onebit/"):
        raise SystemExit(f"check_layout: {src} includes {name}, a public header with no owner: add it to OWNERS")
    local = os.path.normpath(os.path.join(os.path.dirname(src), name))
    if os.path.exists(os.path.join(root, local)):
        return None if local.startswith("tests" + os.sep) else layer_of(local)
    if os.path.exists(os.path.join(root, name)):
        return layer_of(name)
    owners = basenames.get(os.path.basename(name), [])
    if len(owners) == 1:  # reached through an include path into another folder
        return layer_of(owners[0])
    return None  # a system or generated header


def check_includes(root, files):
    basenames = {}
    for f in files:
        basenames.setdefault(os.path.basename(f), []).append(f)
    breaches = []
    for f in files:
        if f.endswith(".py"):
            continue
        mine = layer_of(f)
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            text = fh.read()
        for name in INCLUDE.findall(text):
            owner = header_layer(root, f, name, basenames)
            if owner and LAYERS[owner] > LAYERS[mine]:
                breaches.append(f"{f}: includes {name} of {owner}/, a layer above {mine}/")
            elif owner and owner != mine and LAYERS[owner] == LAYERS[mine]:
                breaches.append(f"{f}: includes {name} of {owner}/, a sibling of {mine}/")
    return breaches


def strip_cpp(text):
    """Comments, string and character literals blanked out, newlines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c in "\"'" and not (c == "'" and i > 0 and text[i - 1].isalnum()):  # 1'000 digit separators
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


QUALIFIERS = re.compile(r"(\)|\b(const|noexcept|override|final|mutable|try)|->\s*[\w:<>,\s*&]+)\s*$")


def cpp_functions(text):
    """(name, first line, lines) of every function body at namespace or class scope."""
    text = re.sub(r"^\s*#.*$", "", strip_cpp(text), flags=re.M)  # no comments, literals, directives
    stack, found = [], []  # stack: (kind, first line, name) of the open blocks
    head_start, line, init_brace = 0, 1, False
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        if c not in ";{}":
            continue
        outer = all(kind == "scope" for kind, _, _ in stack)
        head = text[head_start:i]
        if c == ";":
            head_start, init_brace = i + 1, False
        elif c == "{":
            kind = "other"
            if re.search(r"\bnamespace\b|^\s*extern\s*\"\"\s*$", head) or re.search(r"\b(class|struct|union|enum)\b[^()]*$", head):
                kind = "scope"
            elif outer and ")" in head and (QUALIFIERS.search(head) or init_brace):
                kind = "function"  # the body: after the parameters, qualifiers or a braced initializer
            stripped = head.lstrip()
            name = [n for n in re.findall(r"([~\w:]+)\s*\(", head) if not n.startswith("__")]
            stack.append((kind, line - stripped.count("\n"), name[0] if name else "?"))
            if kind != "other" or not outer:
                head_start = i + 1
        elif stack:
            kind, first, name = stack.pop()
            if kind == "function":
                found.append((name, first, line - first + 1))
            # A brace initializer in a constructor's list (or a variable's) does not end the head.
            init_brace = kind == "other" and all(k == "scope" for k, _, _ in stack)
            if not init_brace:
                head_start = i + 1
    return found


def py_functions(text):
    tree = ast.parse(text)
    return [(n.name, n.lineno, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def check_sizes(root, files):
    breaches = []
    for f in files:
        if is_test(f):
            continue
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            text = fh.read()
        lines = text.count("\n")
        if lines > MAX_FILE_LINES:
            breaches.append(f"{f}: {lines} lines (at most {MAX_FILE_LINES})")
        for name, first, length in (py_functions(text) if f.endswith(".py") else cpp_functions(text)):
            if length > MAX_FUNCTION_LINES:
                breaches.append(f"{f}:{first}: {name} is {length} lines (at most {MAX_FUNCTION_LINES})")
    return breaches


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    files = list(code_files(root))
    breaches = check_includes(root, files) + check_sizes(root, files)
    for b in breaches:
        print(b)
    print(f"check_layout: {len(files)} files, {len(breaches)} breaches")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
