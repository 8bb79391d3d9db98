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


# --------------------------------------------------------------------------------------------------
# data/samples: the small committed sample set (rebuilt from installed packages, deterministic for a given Pillow)
# --------------------------------------------------------------------------------------------------

#: (subject folder, file stem, source, source id, author, licence, captions). Sources: ``skimage`` (a file
#: in skimage/data), ``sklearn`` (sklearn/datasets/images), ``openclipart`` (a path inside png/; all
#: public domain). Authors of clip art come from the file names where they carry one.
PD_OC = "Public domain (openclipart.org dedication; Debian openclipart-png copyright file)"
SAMPLES: list[tuple[str, str, str, str, str, str, tuple[str, ...]]] = [
    # animals
    ("animals", "cat_chelsea", "skimage", "chelsea.png", "Stefan van der Walt", "CC0",
     ("a tabby cat looking to the side", "close-up photo of a cat", "a pet cat with striped fur")),
    ("animals", "horse_silhouette", "skimage", "horse.png", "Andreas Preuss (marauder), via openclipart", "CC0",
     ("black silhouette of a horse", "a horse standing")),
    ("animals", "penguin", "openclipart", "animals/birds/emperor_penguin_ralf_ste_01.png", "ralf_ste (file name)",
     PD_OC, ("an emperor penguin", "a penguin standing")),
    ("animals", "owl", "openclipart", "animals/birds/owl_on_branch_ganson.png", "ganson", PD_OC,
     ("an owl perched on a branch", "black and white drawing of an owl")),
    ("animals", "seahorse", "openclipart", "animals/fish/seahorse.png", "unknown", PD_OC,
     ("a seahorse", "a yellow sea horse")),
    ("animals", "fish", "openclipart", "animals/fish/yellow_gourami_01.png", "unknown", PD_OC,
     ("a yellow fish", "a tropical aquarium fish")),
    ("animals", "butterfly", "openclipart", "animals/bugs/butterfly_jonathan_dietr_01.png", "Jonathan Dietrich", PD_OC,
     ("a swallowtail butterfly", "a butterfly with blue and yellow wings")),
    ("animals", "spider", "openclipart", "animals/bugs/spider.png", "unknown", PD_OC,
     ("a black spider with a red spot", "a spider")),
    ("animals", "cartoon_cat", "openclipart", "animals/mammals/cartoon_cat_gerald_g._01.png", "Gerald G.", PD_OC,
     ("a cartoon of a grey cat walking", "a cat")),
    ("animals", "dog_on_leash", "openclipart", "animals/mammals/dog_on_leash_gerald_g._01.png", "Gerald G.", PD_OC,
     ("a cartoon dog pulling on a leash", "a beagle on a red leash", "a dog")),
    ("animals", "elephant", "openclipart", "animals/mammals/elefante01_architetto_fr_01.png",
     "Architetto Francesco Rollandin", PD_OC, ("an elephant", "a grey elephant with tusks")),
    # food
    ("food", "coffee_cup", "skimage", "coffee.png", "Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0",
     ("a cup of coffee with latte art", "a cappuccino on a saucer", "a cup of coffee")),
    ("food", "apple", "openclipart", "food/fruit/apple.png", "unknown", PD_OC, ("a red apple", "an apple")),
    ("food", "bananas", "openclipart", "food/fruit/bananas_nicu_buculei_01.png", "Nicu Buculei", PD_OC,
     ("a bunch of bananas", "yellow bananas")),
    ("food", "cherries", "openclipart", "food/fruit/cherries.png", "unknown", PD_OC,
     ("two red cherries on a stem", "cherries")),
    ("food", "grapes", "openclipart", "food/fruit/grapes_01.png", "unknown", PD_OC,
     ("a bunch of purple grapes", "grapes with vine leaves")),
    ("food", "orange", "openclipart", "food/fruit/orange.png", "unknown", PD_OC, ("an orange", "a round orange fruit")),
    ("food", "pear", "openclipart", "food/fruit/green_pear_01.png", "unknown", PD_OC, ("a green pear", "a pear")),
    ("food", "birthday_cake", "openclipart", "food/desserts/birthday_cake.png", "unknown", PD_OC,
     ("a chocolate birthday cake with candles", "a cake")),
    ("food", "ice_cream", "openclipart", "food/desserts/ice_cream_cone_linda_kim_01.png", "Linda Kim", PD_OC,
     ("an ice cream cone with two scoops", "ice cream")),
    ("food", "croissant", "openclipart", "food/breads_and_carbs/croissant_01.png", "unknown", PD_OC,
     ("a croissant", "a pastry for breakfast")),
    ("food", "teapot", "openclipart", "food/beverages/teapot_ganson.png", "ganson", PD_OC,
     ("a white teapot with a blue pattern", "a teapot")),
    # vehicles
    ("vehicles", "bicycle", "openclipart", "transportation/vehicles/bicycle_01.png", "unknown", PD_OC,
     ("a bicycle", "a racing bike")),
    ("vehicles", "bus", "openclipart", "transportation/bus_01.png", "unknown", PD_OC,
     ("a bus seen from the side and from the front", "a black and white bus")),
    ("vehicles", "car", "openclipart", "transportation/vehicles/car.png", "unknown", PD_OC,
     ("a small red car", "a car")),
    ("vehicles", "sailing_ship", "openclipart", "transportation/boating/boat_jarno_vasamaa1.png", "Jarno Vasamaa",
     PD_OC, ("a sailing ship with white sails", "a sailboat")),
    ("vehicles", "fishing_boat", "openclipart", "transportation/vehicles/trawler_01.png", "unknown", PD_OC,
     ("a red fishing boat on the water", "a boat")),
    ("vehicles", "motorcycle", "openclipart", "transportation/motorcycle_jarno_vasama_.png", "Jarno Vasamaa", PD_OC,
     ("a red motorcycle", "a motorbike")),
    ("vehicles", "truck", "openclipart", "transportation/big_truck_01.png", "unknown", PD_OC,
     ("a white semi-trailer truck", "a lorry")),
    ("vehicles", "race_car", "openclipart", "transportation/formula_one_car_gerald_g_01.png", "Gerald G.", PD_OC,
     ("a red formula one race car", "a racing car")),
    # buildings
    ("buildings", "chinese_pagoda", "sklearn", "china.jpg", "danielbuechele (Flickr); retrieved by Robert Layton",
     "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/)",
     ("a Chinese pagoda on a hill above a lake", "a traditional Chinese temple with red pillars")),
    ("buildings", "eiffel_tower", "openclipart", "buildings/eiffel_tower_michael_ja_r.png", "michael_ja (file name)",
     PD_OC, ("the Eiffel Tower", "a tall iron tower")),
    ("buildings", "lighthouse", "openclipart", "buildings/homes/lighthouse_matthew_gates_.png", "Matthew Gates", PD_OC,
     ("a red and white striped lighthouse", "a lighthouse")),
    ("buildings", "house", "openclipart", "buildings/homes/house.png", "unknown", PD_OC,
     ("a small house with a dark roof", "a house")),
    ("buildings", "capitol", "openclipart", "buildings/us_capitol_building_cli_01.png", "unknown", PD_OC,
     ("the United States Capitol building", "a government building with a dome")),
    ("buildings", "castle", "openclipart", "buildings/ch_teau-fort_01.png", "unknown", PD_OC,
     ("a castle with towers", "a medieval fortress")),
    # plants
    ("plants", "dahlia", "sklearn", "flower.jpg", "vultilion (Flickr); retrieved by Robert Layton",
     "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/)",
     ("an orange dahlia flower", "a close-up of an orange flower in a garden")),
    ("plants", "sunflower", "openclipart", "plants/flowers/sun_flower_ganson.png", "ganson", PD_OC,
     ("a sunflower", "a yellow sunflower against the sky")),
    ("plants", "daisy", "openclipart", "plants/flowers/daisy_jonathan_dietrich_01.png", "Jonathan Dietrich", PD_OC,
     ("a white daisy flower", "a daisy")),
    ("plants", "rose", "openclipart", "plants/flowers/pink-rose_tess_brady_01.png", "Tess Brady", PD_OC,
     ("a pink rose with green leaves", "a rose")),
    ("plants", "palm_tree", "openclipart", "plants/palmtree_b_r_kessels_.png", "B. R. Kessels", PD_OC,
     ("a black silhouette of a palm tree", "a palm tree")),
    ("plants", "tree", "openclipart", "plants/trees/tree_01.png", "unknown", PD_OC,
     ("a tree on a cliff at sunset", "a tree silhouette")),
    # people
    ("people", "astronaut", "skimage", "astronaut.png", "NASA (Eileen Collins)", "Public domain (NASA)",
     ("portrait of astronaut Eileen Collins", "a smiling woman in an orange space suit",
      "an astronaut holding a helmet")),
    ("people", "photographer", "skimage", "camera.png", "Lav Varshney", "CC0",
     ("a man looking through a camera on a tripod", "a photographer outdoors, black and white photo")),
    ("people", "ballerina", "openclipart", "people/ballerina_architetto_fra_01.png", "Architetto Francesco Rollandin",
     PD_OC, ("a dancer in an orange leotard", "a ballerina dancing")),
    ("people", "bride", "openclipart", "people/bride1_jarno_vasamaa_01.png", "Jarno Vasamaa", PD_OC,
     ("a bride in a white wedding dress", "a woman with a veil holding flowers")),
    ("people", "baby", "openclipart", "people/baby_anthony_liekens_01.png", "Anthony Liekens", PD_OC,
     ("a crying baby in a diaper", "a baby")),
    ("people", "backpacker", "openclipart", "recreation/sports/backpacker_ganson.png", "ganson", PD_OC,
     ("a hiker carrying a large red backpack", "a backpacker")),
    # space
    ("space", "rocket_launch", "skimage", "rocket.jpg", "SpaceX", "Public domain (SpaceX photos release)",
     ("a rocket on the launch pad at night", "SpaceX Falcon 9 rocket before launch", "a rocket")),
    ("space", "hubble_deep_field", "skimage", "hubble_deep_field.jpg", "NASA / Hubble", "Public domain (NASA)",
     ("Hubble deep field full of galaxies", "stars and galaxies in deep space")),
    ("space", "saturn", "openclipart", "science/astronomy/saturn_dan_gerhards_01.png", "Dan Gerhards", PD_OC,
     ("the planet Saturn with its rings", "a ringed planet")),
    ("space", "full_moon", "openclipart", "science/astronomy/full_moon_dan_gerhards_01.png", "Dan Gerhards", PD_OC,
     ("the full moon", "the grey moon with craters")),
    ("space", "jupiter", "openclipart", "science/astronomy/jupiter_dan_gerhards_01.png", "Dan Gerhards", PD_OC,
     ("the planet Jupiter", "a striped gas giant planet")),
    # music
    ("music", "guitar", "openclipart", "recreation/music/guitar_ganson.png", "ganson", PD_OC,
     ("an acoustic guitar", "a guitar")),
    ("music", "piano", "openclipart", "recreation/music/piano_geraint_luff_01.png", "Geraint Luff", PD_OC,
     ("an upright piano", "a brown piano with keys")),
    ("music", "saxophone", "openclipart", "recreation/music/saxophone_jarno_vasamaa_.png", "Jarno Vasamaa", PD_OC,
     ("a saxophone", "black and white drawing of a saxophone")),
    ("music", "cello", "openclipart", "recreation/music/cello_ganson.png", "ganson", PD_OC,
     ("a cello", "a wooden string instrument")),
    ("music", "harp", "openclipart", "recreation/music/harp1_ganson.png", "ganson", PD_OC, ("a harp", "a Celtic harp")),
    # objects
    ("objects", "digital_camera", "openclipart", "computer/hardware/digital_camera_nicu_bucu_01.png", "Nicu Buculei",
     PD_OC, ("a compact digital camera", "a silver camera")),
    ("objects", "wall_clock", "openclipart", "signs_and_symbols/clocks/clock_michael_breuer_01.png", "Michael Breuer",
     PD_OC, ("a clock face showing five to twelve", "a wall clock")),
    ("objects", "alarm_clock", "openclipart", "signs_and_symbols/clocks/alarm_clock_mike_powers_.png", "Mike Powers",
     PD_OC, ("an alarm clock with two bells", "a grey alarm clock")),
    ("objects", "telephone", "openclipart", "office/telephone/red_telephone_mimooh_01.png", "mimooh", PD_OC,
     ("a red telephone", "a push-button desk phone")),
    ("objects", "books", "openclipart", "education/books/stack_of_books_01.png", "unknown", PD_OC,
     ("a stack of books", "a pile of books")),
    ("objects", "magnifying_glass", "openclipart", "office/magnifying_glass_01.png", "unknown", PD_OC,
     ("a magnifying glass", "a magnifier")),
    # sports
    ("sports", "soccer_ball", "openclipart", "recreation/sports/soccer_ball_ganson.png", "ganson", PD_OC,
     ("a soccer ball", "a black and white football")),
    ("sports", "billiard_ball", "openclipart", "recreation/sports/8ball_nicu_buculei_01.png", "Nicu Buculei", PD_OC,
     ("a black eight ball", "a pool ball")),
    ("sports", "baseball_glove", "openclipart", "recreation/sports/baseball_glove_ganson.png", "ganson", PD_OC,
     ("a baseball glove", "a leather baseball mitt")),
    ("sports", "dartboard", "openclipart", "recreation/sports/dartboard_ruud_steltenpo_01.png", "Ruud Steltenpool",
     PD_OC, ("a dartboard", "a dart board with numbers")),
    # textures
    ("textures", "brick_wall", "skimage", "brick.png", "CC0Textures (Bricks25)", "CC0",
     ("a brick wall", "grey bricks pattern")),
    ("textures", "grass", "skimage", "grass.png", "linolafett (DeviantArt)", "CC0",
     ("grass texture", "close-up of grass")),
    ("textures", "gravel", "skimage", "gravel.png", "CC0Textures (Gravel04)", "CC0",
     ("gravel texture", "small grey stones")),
]

SAMPLE_LONG_SIDE = 640
#: Clip art keeps its transparency as PNG when that stays this small, else it is put on white as JPEG.
SAMPLE_PNG_MAX_BYTES = 120_000
JPEG_QUALITY = 88


def _package_data_dir(module: str, sub: str = "") -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        fail(f"Python package {module} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _fit(img, long_side: int):
    from PIL import Image

    w, h = img.size
    if max(w, h) <= long_side:
        return img
    s = long_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


def _encode_png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _encode_jpeg(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=False)
    return buf.getvalue()


def _sample_bytes(source: str, ident: str, oc_root: Path | None) -> tuple[bytes, str, str]:
    """(encoded bytes, extension, processing note) for one sample."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a few clip-art PNGs are huge canvases; all are trusted package files
    if source == "skimage":
        path = _package_data_dir("skimage", "data") / ident
    elif source == "sklearn":
        path = _package_data_dir("sklearn", "datasets/images") / ident
    else:
        assert oc_root is not None
        path = oc_root / ident
    if not path.is_file():
        fail(f"sample source missing: {path}")
    if source == "skimage" and ident == "horse.png":
        return path.read_bytes(), ".png", "unchanged"
    img = Image.open(path)
    img.load()
    if source != "openclipart":
        note = "unchanged" if max(img.size) <= SAMPLE_LONG_SIDE and path.suffix == ".jpg" else \
            f"re-encoded as JPEG (q{JPEG_QUALITY}), long side ≤ {SAMPLE_LONG_SIDE}px"
        if note == "unchanged":
            return path.read_bytes(), ".jpg", note
        img = img.convert("L") if img.mode in ("L", "I;16", "1") else img.convert("RGB")
        return _encode_jpeg(_fit(img, SAMPLE_LONG_SIDE)), ".jpg", note
    # clip art: crop the transparent margin (4 % border kept), downscale, keep alpha when small
    rgba = img.convert("RGBA")
    bbox = rgba.getchannel("A").getbbox()
    if bbox:
        x0, y0, x1, y1 = bbox
        pad = round(0.04 * max(x1 - x0, y1 - y0))
        rgba = rgba.crop((max(0, x0 - pad), max(0, y0 - pad), min(rgba.width, x1 + pad), min(rgba.height, y1 + pad)))
    rgba = _fit(rgba, SAMPLE_LONG_SIDE)
    png = _encode_png(rgba)
    if len(png) <= SAMPLE_PNG_MAX_BYTES:
        return png, ".png", f"cropped to content, long side ≤ {SAMPLE_LONG_SIDE}px, PNG"
    bg = Image.new("RGB", rgba.size, (255, 255, 255))
    bg.paste(rgba, mask=rgba.getchannel("A"))
    note = f"cropped to content, long side ≤ {SAMPLE_LONG_SIDE}px, on white, JPEG q{JPEG_QUALITY}"
    return _encode_jpeg(bg), ".jpg", note


CREDITS_HEAD = """# Credits for `data/samples/`

{n} images in {k} subject folders (`data/labels.tsv` gives each file its folder as label; `data/captions.tsv`
holds 1–3 hand-written captions per image for retrieval evaluation). All of them are public domain, CC0
or CC BY 2.0; nothing else is shipped. Every file was taken from a package that installs offline, and
this file, the images, `captions.tsv` and `labels.tsv` are all written by

    python bench/make_eval_sets.py samples --force      # fetches openclipart-png with apt-get download

"Processing" says what was done to the original: clip art was cropped to its visible content (4 % border
kept) and downscaled so the long side is at most 640 px, kept as PNG with transparency when that stays
under 120 kB and otherwise flattened onto white and saved as JPEG; photos larger than 640 px or shipped
as PNG were re-encoded as JPEG (quality 88).

## Photographs and other images from scikit-image and scikit-learn

Licences as stated in the docstrings of `skimage.data.<name>` (scikit-image 0.26) and in
`sklearn/datasets/images/README.txt`. The two scikit-learn photos are **CC BY 2.0** and need
attribution when redistributed: "china.jpg" by danielbuechele and "flower.jpg" by vultilion on Flickr
(https://www.flickr.com/photos/danielbuechele/6061409035, https://www.flickr.com/photos/vultilion/6056698931;
scikit-learn's README names danielbuechele for both, but the URL of the second points to vultilion).
Images whose docstring states no licence (`moon`, `page`, `stereo_motorcycle`) or only "no known copyright
restrictions" (`coins`, `immunohistochemistry`) were left out, and so were the OpenCV sample images,
whose individual provenance is not documented.

| File | Source | Licence | Author | Processing |
|---|---|---|---|---|
"""

CREDITS_CLIPART = """
## Clip art from Debian `openclipart-png`

Openclipart.org releases everything into the public domain (Creative Commons Public Domain Dedication,
reproduced in `/usr/share/doc/openclipart-png/copyright`); taken from `{deb}`. The package carries no
per-image metadata: the author column gives the name embedded in the file name where there is one
(sometimes truncated, as in the original), else "unknown". Paths are relative to
`usr/share/openclipart/png/` in the package. None of these files is in the ~20 % of openclipart-png
held out to tune the lite model (docs/lite-model.md).

| File | Source | Licence | Author | Processing |
|---|---|---|---|---|
"""


def make_samples(args: argparse.Namespace) -> None:
    out = Path(args.out)
    oc_root = oc_deb = None
    if any(s[2] == "openclipart" for s in SAMPLES):
        oc_deb = find_or_download_deb(Path(args.cache_dir), args.deb)
        oc_root = extract(oc_deb, Path(args.cache_dir))
        held = [s[3] for s in SAMPLES if s[2] == "openclipart"
                and in_tune_split((oc_root / s[3]).resolve().relative_to(oc_root.resolve()).as_posix())]
        if held:
            fail(f"samples must not come from the tuning split: {held}")
    if out.exists() and any(out.iterdir()) and not args.force:
        fail(f"{out} is not empty; pass --force to rebuild it")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    captions, labels, photo_rows, clip_rows = [], [], [], []
    for folder, stem, source, ident, author, licence, caps in SAMPLES:
        data, ext, note = _sample_bytes(source, ident, oc_root)
        rel = f"{folder}/{stem}{ext}"
        (out / folder).mkdir(exist_ok=True)
        (out / rel).write_bytes(data)
        labels.append(f"{rel}\t{folder}")
        captions.extend(f"{rel}\t{c}" for c in caps)
        if source == "openclipart":
            clip_rows.append(f"| `{rel}` | `{ident}` | Public domain | {author} | {note} |")
        else:
            src = {"skimage": f"scikit-image `skimage/data/{ident}`",
                   "sklearn": f"scikit-learn `sklearn/datasets/images/{ident}`"}[source]
            photo_rows.append(f"| `{rel}` | {src} | {licence} | {author} | {note} |")
    data_dir = out.parent
    (data_dir / "captions.tsv").write_text("\n".join(captions) + "\n", encoding="utf-8")
    (data_dir / "labels.tsv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    deb_name = oc_deb.name.replace("%3a", ":") if oc_deb else "openclipart-png"
    credits = (CREDITS_HEAD.format(n=len(SAMPLES), k=len({s[0] for s in SAMPLES})) + "\n".join(photo_rows) + "\n"
               + CREDITS_CLIPART.format(deb=deb_name) + "\n".join(clip_rows) + "\n")
    (data_dir / "CREDITS.md").write_text(credits, encoding="utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(SAMPLES)} samples → {out} ({total / 1e6:.2f} MB); wrote {data_dir / 'captions.tsv'} "
          f"({len(captions)} captions), labels.tsv and CREDITS.md")


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
    sm = sub.add_parser("samples", help="rebuild data/samples (+ captions.tsv, labels.tsv, CREDITS.md)")
    sm.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent.parent / "data" / "samples"),
                    help="samples directory (default data/samples); captions/labels go to its parent")
    sm.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the openclipart .deb is kept")
    sm.add_argument("--deb", help="use this openclipart-png_*.deb instead of downloading")
    sm.add_argument("--force", action="store_true", help="replace a non-empty samples directory")
    args = ap.parse_args(argv)
    if args.dataset == "openclipart":
        make_openclipart(args)
    elif args.dataset == "samples":
        make_samples(args)


if __name__ == "__main__":
    main()
