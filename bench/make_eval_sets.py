#!/usr/bin/env python3
"""Materialise larger, real evaluation sets from installed/installable packages (output is not committed).

Only one set for now: **openclipart** — every PNG of Debian's ``openclipart-png`` (public domain clip
art, ~6,900 files) laid out as a folder-per-class tree, with a ``labels.tsv`` (``path<TAB>label``).

    python bench/make_eval_sets.py openclipart /tmp/oc-eval                 # second-level classes, eval split
    python bench/make_eval_sets.py openclipart /tmp/oc-top --level top      # 20 top-level subjects
    python bench/make_eval_sets.py openclipart /tmp/oc-tune --split tune    # the part held out for tuning
    python bench/make_eval_sets.py openclipart /tmp/oc --drop-parent-files --min-per-class 20 --max-per-class 100

The ``.deb`` is fetched with ``apt-get download openclipart-png`` into ``--cache-dir`` (default
``bench/.cache``, git-ignored) when it is not there yet, then unpacked there with ``dpkg-deb -x``
(nothing is installed). Pass ``--deb`` to use a ``.deb`` you already have.

Split: a file is in the *tune* split when ``sha1(<path inside png/>) % 5 == 0`` (about 20 %), else in the
*eval* split. The ``lite`` embedder's settings (top-T, class-name wording, logit scale) were chosen on the
tune split only (docs/lite-model.md), so report numbers on ``--split eval`` (the default).

Layout: symlinks inside the package (the same image filed under a second subject) are skipped, so every
image appears once, under its real folder. Class of a file:

* ``--level top``: its top-level folder (``animals``, ``food``, ``transportation``, ...).
* ``--level second`` (default): its second-level folder (``animals/birds`` → ``birds``); deeper folders
  fold into their second-level ancestor (``recreation/holiday/christmas`` → ``holiday``); a file lying
  directly in a top-level folder gets the top-level name as class (``animals``), or is dropped with
  ``--drop-parent-files``. Second-level names that occur under two top-level folders are prefixed
  (``geography-astronomy``, ``science-astronomy``).

Output: ``OUT/<class>/<file>.png`` (copies by default; ``--mode symlink|hardlink`` saves space) and
``OUT/labels.tsv`` with paths relative to OUT and a readable label (``_`` → space).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "openclipart-png"
PNG_ROOT = Path("usr/share/openclipart/png")
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def fail(msg: str) -> "None":
    print(f"make_eval_sets: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def in_tune_split(rel: str) -> bool:
    """Deterministic ~20 % hold-out used to tune the lite embedder (rel = path inside the png/ root)."""
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0


def find_or_download_deb(cache_dir: Path, deb: str | None) -> Path:
    if deb:
        p = Path(deb).expanduser()
        if not p.is_file():
            fail(f"--deb {deb} does not exist")
        return p
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        fail("apt-get not found: download openclipart-png_*.deb yourself and pass --deb")
    print(f"downloading {PACKAGE} (~131 MB) into {cache_dir} ...", file=sys.stderr)
    r = subprocess.run(["apt-get", "download", PACKAGE], cwd=cache_dir, capture_output=True, text=True)
    found = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    if r.returncode != 0 or not found:
        fail(f"'apt-get download {PACKAGE}' failed ({r.stderr.strip().splitlines()[-1:] or r.returncode}); "
             "run 'apt-get update' first, or pass --deb")
    return found[-1]


def extract(deb: Path, cache_dir: Path) -> Path:
    dest = cache_dir / f"{PACKAGE}-extracted"
    marker = dest / f".done-{deb.name}"
    root = dest / PNG_ROOT
    if marker.exists() and root.is_dir():
        return root
    if shutil.which("dpkg-deb") is None:
        fail("dpkg-deb not found (Debian/Ubuntu only); extract the .deb by hand")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    if not root.is_dir():
        fail(f"{deb} has no {PNG_ROOT}")
    marker.touch()
    return root


def list_files(root: Path) -> list[str]:
    """Real (non-symlink) PNG files, as sorted paths relative to root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.lower().endswith(".png") and not p.is_symlink() and p.is_file():
                out.append(p.relative_to(root).as_posix())
    return out


def class_of(rel: str, level: str, drop_parent_files: bool) -> tuple[str, str] | None:
    """(top, second-or-None) key; None when the file is dropped."""
    parts = rel.split("/")[:-1]
    if not parts:
        return None  # files at the very root (none in 0.18)
    if level == "top":
        return parts[0], ""
    if len(parts) == 1:
        return None if drop_parent_files else (parts[0], "")
    return parts[0], parts[1]


def folder_names(keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    seconds = collections.Counter(s for _, s in keys if s)
    names = {}
    for top, sec in keys:
        if not sec:
            names[(top, sec)] = top
        elif seconds[sec] > 1 or any(t == sec and not s for t, s in keys):
            names[(top, sec)] = f"{top}-{sec}"
        else:
            names[(top, sec)] = sec
    return names


def place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    else:
        shutil.copy2(src, dst)


def make_openclipart(args: argparse.Namespace) -> None:
    deb = find_or_download_deb(Path(args.cache_dir), args.deb)
    root = extract(deb, Path(args.cache_dir))
    files = list_files(root)
    if args.split != "all":
        want_tune = args.split == "tune"
        files = [f for f in files if in_tune_split(f) == want_tune]
    by_class: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for f in files:
        key = class_of(f, args.level, args.drop_parent_files)
        if key is not None:
            by_class[key].append(f)
    by_class = {k: v for k, v in by_class.items() if len(v) >= args.min_per_class}
    if args.max_per_class:
        by_class = {k: sorted(v, key=lambda f: hashlib.sha1(f.encode()).hexdigest())[: args.max_per_class]
                    for k, v in by_class.items()}
    names = folder_names(set(by_class))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            fail(f"{out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in sorted(by_class, key=lambda k: names[k]):
        folder = names[key]
        label = folder.replace("_", " ").replace("-", " ") if args.level == "top" or not key[1] \
            else key[1].replace("_", " ")
        for f in sorted(by_class[key]):
            dst_rel = f"{folder}/{Path(f).name}"
            place(root / f, out / dst_rel, args.mode)
            rows.append((dst_rel, label))
    with open(out / "labels.tsv", "w", encoding="utf-8") as fh:
        for rel, label in rows:
            fh.write(f"{rel}\t{label}\n")
    counts = collections.Counter(names[k] for k in by_class for _ in by_class[k])
    print(f"{len(rows)} images in {len(by_class)} classes → {out} (split={args.split}, level={args.level})")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:5d}  {name}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="dataset", required=True)
    oc = sub.add_parser("openclipart", help="Debian openclipart-png as a folder-per-class tree")
    oc.add_argument("out", help="output directory")
    oc.add_argument("--level", choices=("top", "second"), default="second",
                    help="class = top-level or second-level subject folder (default second)")
    oc.add_argument("--split", choices=("eval", "tune", "all"), default="eval",
                    help="eval (default, ~80%%), tune (~20%% used to tune the lite embedder) or all")
    oc.add_argument("--drop-parent-files", action="store_true",
                    help="with --level second: skip files lying directly in a top-level folder")
    oc.add_argument("--min-per-class", type=int, default=1, help="drop classes with fewer images")
    oc.add_argument("--max-per-class", type=int, default=0, help="keep at most N per class (0 = all)")
    oc.add_argument("--mode", choices=("copy", "symlink", "hardlink"), default="copy")
    oc.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the .deb is kept and unpacked")
    oc.add_argument("--deb", help="use this openclipart-png_*.deb instead of downloading")
    oc.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    args = ap.parse_args(argv)
    if args.dataset == "openclipart":
        make_openclipart(args)


if __name__ == "__main__":
    main()
