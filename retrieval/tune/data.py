"""Supervision for ``imgrag tune``: image vectors paired with texts, from three sources.

* ``from_folders(index, ROOT)``: a folder-per-class tree; class text from the folder name (as in
  ``imgrag eval zeroshot``). Images already in the index use their stored vectors; others are embedded.
* ``from_captions(index, TSV)``: ``path<TAB>caption`` lines (several per image allowed).
* ``from_index_labels(index)``: the ``label`` column written by ``imgrag classify --write``.

Every image has a *key* (its class, or itself for captions) and every text a key; an image and a text are
a positive pair when their keys match. A class is described by its bare name plus the prompt templates
classify uses, so the adapter learns the texts classify and search will actually send through it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.paths import to_fs, to_stored

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index

MIN_ITEMS = 8  # fewer images cannot give both a training and a validation split worth the name


class NotEnoughSupervisionError(ImgragError):
    """Too few labelled images or classes to train an adapter."""


@dataclass
class Supervision:
    source: str  # "folders" | "captions" | "labels"
    kind: str  # "classes" (many images per text) | "captions" (texts belong to one image)
    item_ids: list[str]
    image_vectors: np.ndarray  # (n, d) float32, L2-normalised
    item_keys: np.ndarray  # (n,) int
    texts: list[str]
    text_vectors: np.ndarray  # (m, d)
    text_keys: np.ndarray  # (m,) int
    key_names: list[str]
    embedded: int = 0  # images embedded on the fly (not in the index)

    def digest(self) -> str:
        """sha256 of the (image, key) pairs and texts: the same supervision gives the same digest."""
        h = hashlib.sha256()
        for i, k in sorted(zip(self.item_ids, self.item_keys.tolist())):
            h.update(f"{i}\t{self.key_names[k]}\n".encode("utf-8", "surrogateescape"))
        for t, k in sorted(zip(self.texts, self.text_keys.tolist())):
            h.update(f"T{self.key_names[k]}\t{t}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def summary(self) -> dict:
        return {"source": self.source, "images": len(self.item_ids), "texts": len(self.texts),
                "keys": len(self.key_names), "embedded": self.embedded}


def class_texts(label: str, templates: Sequence[str] | None = None) -> list[str]:
    """The texts that describe a class: its name and the classify templates around it."""
    from imgrag.retrieval.queries.classify import load_templates

    return [label] + [t.format(label) for t in load_templates(templates)]


def image_vectors(index: "Index", paths: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, list[int], int]:
    """Vectors for image files: stored ones from the index, the rest embedded in batches.

    Returns (vectors of the usable files, their positions in ``paths``, how many were embedded). Files
    that do not decode are left out.
    """
    ids = [to_stored(os.path.abspath(p)) for p in paths]
    stored: dict[str, np.ndarray] = {}
    for i in range(0, len(ids), 4096):
        t = index.store.get(ids[i : i + 4096], columns=["id", "vector"])
        vecs = np.asarray(t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                          np.float32).reshape(t.num_rows, -1) if t.num_rows else np.zeros((0, 0), np.float32)
        stored.update(zip(t["id"].to_pylist(), vecs))
    out: dict[int, np.ndarray] = {j: stored[i] for j, i in enumerate(ids) if i in stored}
    missing = [j for j in range(len(ids)) if j not in out]
    if missing:
        emb = index.embedder
        for s in range(0, len(missing), batch_size):
            chunk = missing[s : s + batch_size]
            imgs = [(j, _decode(paths[j], emb.image_size)) for j in chunk]
            ok = [(j, im) for j, im in imgs if not isinstance(im, Exception)]
            if ok:
                out.update(zip([j for j, _ in ok], emb.embed_images([im for _, im in ok])))
    n_embedded = sum(1 for j in missing if j in out)
    keep = sorted(out)
    vecs = np.stack([out[j] for j in keep]).astype(np.float32) if keep else np.zeros((0, index.manifest.dim), np.float32)
    return vecs, keep, n_embedded


def _decode(path: str, draft: int):
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        return decode_image(Path(to_fs(path)).read_bytes(), draft_size=draft).image
    except (ImageDecodeError, OSError) as e:
        return e


def _classes(index: "Index", source: str, ids: list[str], vecs: np.ndarray, labels: list[str],
             embedded: int, templates: Sequence[str] | None) -> Supervision:
    names = sorted(set(labels))
    counts = {n: labels.count(n) for n in names}
    usable = [n for n in names if counts[n] >= 2]
    if len(usable) < 2 or len(ids) < MIN_ITEMS:
        raise NotEnoughSupervisionError(
            f"not enough supervision from {source}: {len(ids)} images in {len(names)} classes; tune needs at least "
            f"two classes with two or more images each and {MIN_ITEMS} images in all")
    key = {n: k for k, n in enumerate(names)}
    texts, tkeys = [], []
    for n in names:
        for t in class_texts(n, templates):
            texts.append(t)
            tkeys.append(key[n])
    tv = index.embedder.embed_texts(texts)
    return Supervision(source, "classes", ids, vecs, np.array([key[n] for n in labels]), texts,
                       np.asarray(tv, np.float32), np.array(tkeys), names, embedded)


def from_folders(index: "Index", root: str | Path, depth: int = 1, templates: Sequence[str] | None = None,
                 batch_size: int = 64) -> Supervision:
    from imgrag.retrieval.queries.evaluate import class_words, folder_dataset

    try:
        classes, paths, targets = folder_dataset(root, depth)
    except ImgragError as e:
        raise NotEnoughSupervisionError(f"--folders: {e}") from e
    vecs, keep, embedded = image_vectors(index, paths, batch_size)
    labels = [class_words(classes[targets[j]]) for j in keep]
    ids = [to_stored(os.path.abspath(paths[j])) for j in keep]
    return _classes(index, f"folders {root}", ids, vecs, labels, embedded, templates)


def from_index_labels(index: "Index", templates: Sequence[str] | None = None) -> Supervision:
    ids: list[str] = []
    labels: list[str] = []
    vecs: list[np.ndarray] = []
    for b in index.store.scan(columns=["id", "label", "vector"]):
        lab = b.column("label").to_pylist()
        keep = [i for i, x in enumerate(lab) if x]
        if not keep:
            continue
        v = np.asarray(b.column("vector").flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(lab), -1)
        ids += [b.column("id")[i].as_py() for i in keep]
        labels += [lab[i] for i in keep]
        vecs.append(v[keep])
    if not ids:
        raise NotEnoughSupervisionError(
            f"no labels in index {index.root}; write some with `imgrag classify --labels ... --write` first")
    return _classes(index, "index labels", ids, np.concatenate(vecs), labels, 0, templates)


def from_captions(index: "Index", tsv: str | Path, images_root: str | Path | None = None,
                  batch_size: int = 64) -> Supervision:
    """Relative paths are looked up under ``images_root``, the TSV's folder, then matched by their end
    against the index's ids (``animals/cat.jpg`` finds ``/photos/animals/cat.jpg``)."""
    from imgrag.retrieval.queries.evaluate import read_captions

    caps = read_captions(tsv)
    rels = sorted({p for p, _ in caps})
    resolved = {r: _resolve(r, [images_root, Path(tsv).parent]) for r in rels}
    unresolved = [r for r, p in resolved.items() if p is None]
    if unresolved:
        by_suffix = _suffix_matches(index, unresolved)
        resolved.update(by_suffix)
    found = [r for r in rels if resolved.get(r)]
    vecs, keep, embedded = image_vectors(index, [resolved[r] for r in found], batch_size)
    ok = [found[j] for j in keep]
    if len(ok) < MIN_ITEMS:
        missing = [r for r in rels if r not in set(ok)]
        hint = f" (e.g. {missing[0]} not found)" if missing else ""
        raise NotEnoughSupervisionError(
            f"not enough supervision from {tsv}: {len(ok)} captioned images usable{hint}; tune needs at least "
            f"{MIN_ITEMS}")
    key = {r: k for k, r in enumerate(ok)}
    pairs = [(p, c) for p, c in caps if p in key]
    texts = [c for _, c in pairs]
    tv = index.embedder.embed_texts(texts)
    ids = [to_stored(os.path.abspath(resolved[r])) for r in ok]
    return Supervision(f"captions {tsv}", "captions", ids, vecs, np.arange(len(ok)), texts,
                       np.asarray(tv, np.float32), np.array([key[p] for p, _ in pairs]), ok, embedded)


def _resolve(rel: str, roots: Sequence[str | Path | None]) -> str | None:
    p = Path(rel).expanduser()
    if p.is_absolute():
        return str(p) if p.is_file() else None
    for r in roots:
        if r is not None and (Path(r) / p).is_file():
            return str(Path(r) / p)
    return None


def _suffix_matches(index: "Index", rels: Sequence[str]) -> dict[str, str]:
    by_name: dict[str, list[tuple[str, str]]] = {}
    for r in rels:
        suf = "/" + r.replace(os.sep, "/").lstrip("/")
        by_name.setdefault(suf.rsplit("/", 1)[1], []).append((suf, r))
    hits: dict[str, list[str]] = {}
    for b in index.store.scan(columns=["id"]):
        for i in b.column("id").to_pylist():
            for suf, r in by_name.get(i.rsplit("/", 1)[-1], ()):
                if i.endswith(suf):
                    hits.setdefault(r, []).append(i)
    return {r: v[0] for r, v in hits.items() if len(v) == 1}  # ambiguous suffixes are not guessed
