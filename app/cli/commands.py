"""The ``imgrag`` commands: each ``cmd_*`` takes the parsed arguments, does the work and returns an exit code.

Printing is :mod:`.output`'s job. User errors are raised as :class:`ImgragError` subclasses; ``main`` turns
them into one line on stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from imgrag.app.cli.commands_collection import COMMANDS as COLLECTION_COMMANDS
from imgrag.app.cli.commands_groups import COMMANDS as GROUPS_COMMANDS
from imgrag.app.cli.commands_watch import COMMANDS as WATCH_COMMANDS
from imgrag.app.cli.output import (IndexProgress, hit_dict, print_answer, print_classified, print_hits,
                                   print_index_report, print_info, print_json, print_skipped)
from imgrag.retrieval.errors import BadQueryError, ImgragError


def _filters(args):
    from imgrag.retrieval.stores.base import Filters

    f = Filters(path_glob=args.path_glob, taken_after=args.after, taken_before=args.before,
                min_width=args.min_width, label=args.label, kind=args.kind)
    return None if f.is_empty() else f


def _open_index(args):
    from imgrag.retrieval.index import Index

    index = Index.open(args.index, device=args.device, precision=args.precision)
    if getattr(args, "no_adapter", False):  # search, classify and ask compare without the tuned adapter
        from imgrag.retrieval.tune import set_adapter_enabled

        set_adapter_enabled(index, False)
    return index


def cmd_index(args) -> int:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import DEFAULT_MODEL, load_embedder
    from imgrag.retrieval.imageio import pixel_limit
    from imgrag.retrieval.index import Index, Manifest, default_index_dir
    from imgrag.retrieval.location import is_uri

    if args.engine == "ray":
        from imgrag.indexer.ray_engine import import_ray

        import_ray()  # fail fast, before loading a model, when the extra is missing
    elif any(is_uri(p) for p in args.paths):
        raise ImgragError("object-storage sources (s3://, gs://, az://) need --engine ray")
    if args.engine != "ray" and (args.ray_address or args.ray_actors):
        raise ImgragError("--ray-address and --ray-actors need --engine ray")
    if args.engine == "ray" and args.ocr:
        raise ImgragError("--ocr needs the local engine (imgrag index without --engine ray)")
    if args.devices and (args.engine == "ray" or args.device != "auto"):
        raise ImgragError("--devices needs the local engine and no --device (the list names every device); "
                          "--engine ray starts one actor per GPU itself")
    # validate first, destroy last: every argument, path and the model are checked before the index is touched
    root = args.index or default_index_dir()
    existing = _readable_manifest(Manifest, root) if args.rebuild else (
        Manifest.load(root) if Manifest.exists(root) else None)
    model = args.model or (existing.model if existing else DEFAULT_MODEL)  # --rebuild keeps the index's model…
    store = args.store or (existing.store if existing else "lancedb")  # …and store unless told otherwise
    if args.engine == "ray" and store != "lancedb":
        raise ImgragError(f"--engine ray writes LanceDB indexes, not {store}; use the local engine or --store lancedb")
    opts = dict(existing.store_options) if existing and args.rebuild and store == existing.store else {}
    if args.faiss_factory:
        if store != "faiss":
            raise ImgragError("--faiss-factory needs --store faiss")
        opts["factory"] = args.faiss_factory
        have = existing.store_options.get("factory", "Flat") if existing and existing.store == "faiss" else None
        if have is not None and not args.rebuild and have != args.faiss_factory:
            raise ImgragError(f"index {root} uses --faiss-factory {have}; changing it needs --rebuild")
    options = IndexOptions(batch_size=args.batch_size, workers=args.workers, draft=args.draft,
                           commit_every=args.commit_every, retry_skipped=args.retry_skipped, prune=args.prune,
                           dpi=args.dpi, page_tiles=args.page_tiles, ocr_images=args.ocr, ocr_pages=args.ocr_pages,
                           max_pixels=pixel_limit(args.max_megapixels),
                           preprocess=args.preprocess, devices=args.devices)
    options.validate()
    if args.engine != "ray":
        from imgrag.indexer.pipeline import check_roots
        from imgrag.indexer.scan import normalize_roots

        check_roots(normalize_roots(args.paths))

    def make_embedder():  # the model's forward passes are the loader's batches (indexer/gpu_plan.py)
        device = args.devices[0] if args.devices and args.devices != ("all",) else \
            ("cuda:0" if args.devices else args.device)
        batch = args.batch_size
        if batch is None:
            from imgrag.indexer.gpu_plan import default_batch_size
            from imgrag.retrieval.device import resolve_device

            batch = default_batch_size(resolve_device(device))
        return load_embedder(model, device=device, precision=args.precision, batch_size=batch)

    # a new index, a rebuild, or a --model to check against the index now (its spelling may differ): build it
    # here; otherwise the model loads (and is checked against the index) only if a file needs embedding
    eager = existing is None or args.rebuild or (args.model is not None and args.model != existing.model)
    index = Index.create_or_open(root, make_embedder() if eager else make_embedder, store=store,
                                 store_options=opts, rebuild=args.rebuild)
    show_bar = (args.progress and not args.json and sys.stderr.isatty()
                or (args.progress and os.environ.get("IMGRAG_PROGRESS") == "1"))
    bar = IndexProgress() if show_bar else None
    try:
        if args.engine == "ray":
            from imgrag.indexer.ray_engine import RayOptions, build_index_ray

            ropts = RayOptions(address=args.ray_address, actors=args.ray_actors, batch_size=args.batch_size or 64,
                               commit_every=max(args.commit_every, 1), draft=args.draft,
                               retry_skipped=args.retry_skipped, prune=args.prune, device=args.device,
                               precision=args.precision, max_pixels=pixel_limit(args.max_megapixels))
            rep = build_index_ray(index, args.paths, ropts, progress=bar)
        else:
            rep = build_index(index, args.paths, options, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print_json(rep.to_dict())
    else:
        print_index_report(rep, index, ocr_off=args.ocr_pages == "off")
    if rep.interrupted:
        if index.draft:
            print(f"interrupted: the rebuild is not finished, {index.root} is unchanged; run the same command again "
                  "to continue the rebuild (a plain `imgrag index` discards it)", file=sys.stderr)
        else:
            print("interrupted: committed work is kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _readable_manifest(manifest_cls, root):
    """The index's manifest for --rebuild defaults; None when absent or unreadable (rebuild replaces it)."""
    try:
        return manifest_cls.load(root) if manifest_cls.exists(root) else None
    except ImgragError:
        return None


def cmd_search(args) -> int:
    from imgrag.retrieval.queries.search import Term, parse_query, search

    terms: list = []
    text = " ".join(args.query).strip()
    if text:
        terms.extend(parse_query(text))
    for spec in args.image:
        w = 1.0
        if "*" in spec:
            head, tail = spec.split("*", 1)
            try:
                w, spec = float(head), tail
            except ValueError:
                pass
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isfile(path):
            raise BadQueryError(f"query image not found: {spec}")
        terms.append(Term("image", path, w))
    if not terms:
        raise BadQueryError("give a text query and/or --image FILE")
    from imgrag.retrieval.queries.hybrid import add_snippets, resolve_mode, search_documents

    plain = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
    index = _open_index(args)
    mode = args.mode
    if not plain:
        if mode in ("text", "hybrid"):
            raise BadQueryError(f"--mode {mode} needs a plain text query (no images, weights or '+'/'-' terms)")
        mode = "vector"
    mode = resolve_mode(index, mode)
    if mode == "vector":
        hits = search(index, terms, k=args.k, filters=_filters(args), min_score=args.min_score,
                      sort_by_date=args.sort_date, all_copies=args.all_copies)
        hits = add_snippets(hits, text) if text else hits
    else:
        hits = search_documents(index, text, k=args.k, mode=mode, filters=_filters(args), weights=args.weights,
                                min_score=args.min_score, vector_gate=args.vector_gate, all_copies=args.all_copies)
        if args.sort_date:
            hits.sort(key=lambda h: (h.row.get("taken_at") is None, h.row.get("taken_at") or 0))
    if args.json:
        print_json([hit_dict(h) for h in hits])
        return 0
    print_hits(hits)
    return 0


def _thresholds(specs: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in specs:
        if "=" not in s:
            raise BadQueryError(f"--threshold {s!r}: use LABEL=PROBABILITY")
        k, v = s.rsplit("=", 1)
        try:
            p = float(v)
        except ValueError:
            raise BadQueryError(f"--threshold {s!r}: {v!r} is not a number") from None
        if k.strip() == "*":
            out.update({lab: p for lab in labels})
        else:
            out[k.strip()] = p
    return out


def cmd_classify(args) -> int:
    from imgrag.retrieval.queries.classify import ZeroShotClassifier, classify_index, parse_labels
    from imgrag.retrieval.queries.search import load_query_image, search

    labels: list[str] | None = None
    if args.labels_file:
        try:
            raw = open(args.labels_file, encoding="utf-8").read()
        except OSError as e:
            raise ImgragError(f"cannot read labels file {args.labels_file}: {e.strerror or e}") from e
        labels = parse_labels(raw.replace(",", "\n") if "\n" not in raw.strip() else raw)
    elif args.labels:
        labels = parse_labels(args.labels)
    elif not args.examples:
        raise BadQueryError("give --labels, --labels-file or --examples ROOT (a folder per class)")
    index = _open_index(args)
    examples = None
    if args.examples:  # before the classifier: without --labels the folder names are the labels
        from imgrag.retrieval.tune.fewshot import load_examples

        labels, ex_vecs, ex_targets, _embedded = load_examples(index, args.examples, labels)
        examples = (ex_vecs, ex_targets)
    from imgrag.retrieval.tune import active_adapter
    from imgrag.retrieval.tune.adapter import tuned_calibration

    adapter = active_adapter(index)
    clf = ZeroShotClassifier(index.embedder, labels, args.templates, _thresholds(args.threshold, labels),
                             calibration=tuned_calibration(args.calibration, adapter is not None or bool(examples)))
    if adapter is not None:  # class texts pass through the tuned adapter like search queries
        clf.weights = adapter.apply_text(clf.weights)
    if examples is not None:  # few-shot: text prototypes mixed with the examples' mean (retrieval/tune/fewshot.py)
        from imgrag.retrieval.tune.fewshot import mix_prototypes

        # examples stay raw stored vectors: the same space as the image vectors they are compared with
        clf.weights = mix_prototypes(clf.weights, examples[0], examples[1])
    rows: list[dict] = []
    if args.image:
        # one image has no collection of its own: calibrated against a random sample of the index
        pred = clf.predict_images([load_query_image(args.image)], top_n=args.top,
                                  calibration=clf.calibration_for(index))[0]
        rows.append({"path": os.path.abspath(args.image), "label": pred.label, "score": pred.score, "top": pred.top})
    elif args.query:
        hits = search(index, args.query, k=args.k, filters=_filters(args))
        if hits:
            vecs = index.store.get([h.id for h in hits], columns=["id", "vector"])
            by_id = {i: v for i, v in zip(vecs["id"].to_pylist(), vecs["vector"].to_pylist())}
            import numpy as np

            # search results are a biased set (all near the query): calibrated against a sample of the index
            preds = clf.predict_vectors(np.asarray([by_id[h.id] for h in hits], dtype=np.float32), args.top,
                                        calibration=clf.calibration_for(index))
            rows = [{"path": h.path, "label": p.label, "score": p.score, "top": p.top} for h, p in zip(hits, preds)]
    else:
        for _id, path, p in classify_index(index, clf, write=args.write, filters=_filters(args), top_n=args.top):
            rows.append({"path": path, "label": p.label, "score": p.score, "top": p.top})
    if args.json:
        print_json(rows)
        return 0
    print_classified(rows, args.limit, wrote=args.write and not args.image and not args.query)
    return 0


def cmd_info(args) -> int:
    index = _open_index(args)
    if args.errors:
        sk = index.skipped()
        if args.json:
            print_json(sk)
        else:
            print_skipped(sk)
        return 0
    info = index.info()
    from imgrag.retrieval.tune.adapter import adapter_status, describe_adapter

    status = adapter_status(index)  # imgrag tune: is a tuned adapter used by queries on this index?
    if args.json:
        print_json({**info, "adapter": status})
        return 0
    info["adapter"] = describe_adapter(status)
    print_info(info)
    return 0


def cmd_ask(args) -> int:
    from imgrag.retrieval.generators import load_generator
    from imgrag.retrieval.queries.answer import answer

    index = _open_index(args)
    gen = load_generator(args.generator, device=args.device, precision=args.precision)
    stream = answer(index, args.question, k=args.k, max_images=args.max_images, generator=gen,
                    min_score=args.min_score, filters=_filters(args), rerank=args.rerank)
    if args.json:
        for _ in stream:
            pass
        print_json(stream.result.to_dict())
        return 0
    print_answer(stream)
    return 0


def cmd_serve(args) -> int:
    from imgrag.app.web.server import serve

    return serve(args)


def cmd_eval(args) -> int:
    from imgrag.retrieval.queries import evaluate

    return evaluate.run_cli(args)


def cmd_tune(args) -> int:
    from imgrag.retrieval.tune import reset_adapter

    index = _open_index(args)  # main() holds the writer lock; reset_adapter and tune_index take it too
    if args.reset:
        removed = reset_adapter(index)
        if args.json:
            print_json({"index": str(index.root), "removed": removed})
        else:
            print(f"adapter removed from {index.root}" if removed else f"{index.root} has no adapter")
        return 0
    from imgrag.retrieval.tune import data
    from imgrag.retrieval.tune.train import TuneConfig, tune_index

    if args.folders:
        sup = data.from_folders(index, args.folders)
    elif args.captions:
        sup = data.from_captions(index, args.captions)
    else:
        sup = data.from_index_labels(index)
    res = tune_index(index, sup, TuneConfig(loss=args.loss, seed=args.seed))
    out = {"index": str(index.root), "loss": args.loss, **sup.summary(), **res.to_json()}
    if args.json:
        print_json(out)
        return 0
    print(f"tuned on {sup.source}: {len(sup.item_ids)} images ({sup.embedded} embedded now), {len(sup.key_names)} "
          f"{'classes' if sup.kind == 'classes' else 'captioned images'}, {len(sup.texts)} texts; loss {args.loss}")
    print(f"validation ({res.val_items} held-out images, best epoch {res.best_epoch} of {res.epochs}):")
    print(f"  {'':22}{'before':>8}{'after':>8}")
    for key, name in (("i2t_top1", "image→text top-1"), ("t2i_r1", "text→image R@1")):
        print(f"  {name:22}{100 * res.before[key]:>7.1f}%{100 * res.after[key]:>7.1f}%")
    print(f"adapter saved in {index.root}; search, classify and ask use it (--no-adapter to compare, "
          f"`imgrag tune --reset` to remove it)")
    return 0


COMMANDS = {"tune": cmd_tune, "index": cmd_index, "search": cmd_search, "classify": cmd_classify, "info": cmd_info,
            "ask": cmd_ask, "serve": cmd_serve, "eval": cmd_eval}
COMMANDS.update(COLLECTION_COMMANDS)
COMMANDS.update(GROUPS_COMMANDS)
COMMANDS.update(WATCH_COMMANDS)
