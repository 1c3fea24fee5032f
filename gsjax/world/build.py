"""Build the offline world (KnowGen-mini) into a folder.

    python -m gsjax.world.build --out runs/world --seed 0        # default size: ~10 s on 2 cores
    python -m gsjax.world.build --out /tmp/world --preset tiny   # 40 entities, 50 prompts, ~1 s

The folder (every path inside a file is relative to the folder):

    corpus.json         pages and images the search tools index (`gsjax.world.corpus.Corpus`)
    images/*.png        entity photos, 96x96 (`/img/<name>.png` is `images/<name>.png`)
    knowgen_eval.json   held-out prompts, KnowGen-Bench format: {id, prompt, meta: {category,
                        difficulty}, gt_image}
    rl_data.json        training prompts, Gen-Searcher rl_data format: {id, prompt, gt_image}
    gt/<id>.png         ground truth of every prompt, 128x128
    truth.json          answer keys of both splits, by item id (`gsjax.world.prompts.AnswerKey`)
    world.json          the whole world (entities, places, people, events) and the build settings

Training and evaluation prompts are about disjoint sets of entities (and names); both sets, and
the distractors, are in the one corpus. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gsjax.data.formats import KnowGenItem, RLItem, write_knowgen, write_rl_data
from gsjax.world.entities import N_VIEWS, World, make_world
from gsjax.world.pages import image_file, make_corpus
from gsjax.world.prompts import make_prompts, write_truth
from gsjax.world.render import render_references, render_scene, save_png

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WorldSize:
    n_train_entities: int
    n_eval_entities: int
    n_train_prompts: int
    n_eval_prompts: int


PRESETS: dict[str, WorldSize] = {
    "default": WorldSize(n_train_entities=3000, n_eval_entities=300, n_train_prompts=3000,
                         n_eval_prompts=200),
    "tiny": WorldSize(n_train_entities=28, n_eval_entities=12, n_train_prompts=40,
                      n_eval_prompts=10),
}


@dataclasses.dataclass(frozen=True)
class WorldPaths:
    root: Path
    corpus: Path  # corpus.json (Corpus.load(root) reads it)
    knowgen_eval: Path
    rl_data: Path
    truth: Path
    world: Path
    images: Path  # folder
    gt: Path  # folder

    @classmethod
    def at(cls, root: Path | str) -> "WorldPaths":
        root = Path(root)
        return cls(root, root / "corpus.json", root / "knowgen_eval.json", root / "rl_data.json",
                   root / "truth.json", root / "world.json", root / "images", root / "gt")

    def outputs(self) -> tuple[Path, ...]:
        return (self.corpus, self.knowgen_eval, self.rl_data, self.truth, self.world,
                self.images, self.gt)


# A render job: ("photos", signature, key, [file, ...]) or
#               ("gt", [signature, ...], scene, text, file).
Job = tuple


def _run_jobs(jobs: list[Job]) -> int:
    for job in jobs:
        if job[0] == "photos":
            _, sig, key, files = job
            for img, file in zip(render_references(sig, key, len(files)), files):
                save_png(img, Path(file))
        else:
            _, sigs, scene, text, file = job
            save_png(render_scene(sigs, scene, text), Path(file))
    return len(jobs)


def _fork_is_safe() -> bool:
    """Forking copies one thread; libraries that run their own thread pools (JAX, PyTorch) may be
    left holding locks in the child."""
    return not any(m in sys.modules for m in ("jax", "jaxlib", "torch", "tensorflow"))


def _render(jobs: list[Job], workers: int, progress: bool) -> None:
    chunks = [jobs[i:i + 64] for i in range(0, len(jobs), 64)]
    bar = tqdm(total=len(jobs), desc="render", unit="img", disable=not progress)
    if workers <= 1:
        for chunk in chunks:
            bar.update(_run_jobs(chunk))
    else:
        # spawn re-imports the caller's main module: it needs an `if __name__ == "__main__"`.
        method = "fork" if _fork_is_safe() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for done in pool.imap_unordered(_run_jobs, chunks):
                bar.update(done)
    bar.close()


def _clear(paths: WorldPaths) -> None:
    """Make `paths.root` ready for a build: create it, or remove a previous build's outputs."""
    root = paths.root
    if root.exists() and any(root.iterdir()):
        if not paths.world.is_file():
            raise ValueError(f"{root}: not empty and not a built world (no world.json); "
                             f"expected an empty or missing folder")
        for p in paths.outputs():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    paths.images.mkdir(parents=True, exist_ok=True)
    paths.gt.mkdir(parents=True, exist_ok=True)


def build_world(out_dir: Path | str, seed: int = 0,
                n_train_entities: int = PRESETS["default"].n_train_entities,
                n_eval_entities: int = PRESETS["default"].n_eval_entities,
                n_train_prompts: int = PRESETS["default"].n_train_prompts,
                n_eval_prompts: int = PRESETS["default"].n_eval_prompts,
                image_only_share: float = 0.0,
                workers: int | None = None, progress: bool = False) -> WorldPaths:
    """Build a world into `out_dir` (missing, empty, or a previous build, which is replaced).

    `image_only_share`: the share of each split's entities whose looks no page describes (only
    their photos show them; `make_world`), so a prompt about one needs its photo seen as pixels.

    `workers`: rendering processes. None: 2 (when there are 2 cores) for worlds big enough to
    gain from it, if this process can fork safely (no JAX or PyTorch imported); otherwise 1. With
    an explicit `workers` > 1 and JAX imported, the workers are spawned, which re-imports the main
    module: call from a `python -m` entry point or under `if __name__ == "__main__":`."""
    paths = WorldPaths.at(Path(out_dir).absolute())  # rows hold paths relative to their files
    _clear(paths)
    world = make_world(seed, n_train_entities, n_eval_entities, image_only_share=image_only_share)
    size = WorldSize(n_train_entities, n_eval_entities, n_train_prompts, n_eval_prompts)
    doc = {"format": FORMAT_VERSION, "seed": seed, "size": dataclasses.asdict(size),
           "image_only_share": image_only_share, "views": N_VIEWS, **world.to_dict()}
    paths.world.write_text(json.dumps(doc, indent=1))  # first: marks the folder as a world's
    corpus = make_corpus(world, paths.root)
    eval_keys = make_prompts(world, "eval", n_eval_prompts, seed, "eval")
    train_keys = make_prompts(world, "train", n_train_prompts, seed, "train")

    root = paths.root
    jobs: list[Job] = [("photos", e.signature, e.slug,
                        [str(root / image_file(p)) for p in e.image_paths]) for e in world.entities]
    jobs += [("gt", list(k.signatures), k.scene, k.text, str(root / k.gt_image))
             for k in eval_keys + train_keys]
    if workers is None:
        big = len(jobs) >= 2000
        workers = min(2, os.cpu_count() or 1) if big and _fork_is_safe() else 1
    _render(jobs, workers, progress)

    corpus.save(root)
    write_knowgen(paths.knowgen_eval, [KnowGenItem(k.id, k.prompt, k.category, k.difficulty,
                                                   str(root / k.gt_image)) for k in eval_keys])
    write_rl_data(paths.rl_data, [RLItem(k.id, k.prompt, str(root / k.gt_image))
                                  for k in train_keys])
    write_truth(paths.truth, eval_keys + train_keys)
    return paths


def build_preset(out_dir: Path | str, preset: str = "tiny", seed: int = 0, **kwargs) -> WorldPaths:
    """`build_world` at a named size from PRESETS ("tiny": about a second, for tests)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}: expected one of {sorted(PRESETS)}")
    return build_world(out_dir, seed, **dataclasses.asdict(PRESETS[preset]), **kwargs)


def load_world(root: Path | str | WorldPaths) -> World:
    """The `World` a folder was built from (read from its world.json)."""
    paths = root if isinstance(root, WorldPaths) else WorldPaths.at(root)
    return World.from_dict(json.loads(paths.world.read_text()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gsjax.world.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder to write (replaced if a world)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    for field in dataclasses.fields(WorldSize):
        ap.add_argument("--" + field.name.replace("_", "-"), type=int, default=None,
                        help="overrides the preset")
    ap.add_argument("--image-only-share", type=float, default=0.0,
                    help="share of entities whose looks only their photos show (default 0)")
    ap.add_argument("--workers", type=int, default=None, help="rendering processes (default: auto)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    size = PRESETS[args.preset]
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldSize)
                 if getattr(args, f.name) is not None}
    size = dataclasses.replace(size, **overrides)
    t0 = time.perf_counter()
    paths = build_world(args.out, args.seed, **dataclasses.asdict(size), image_only_share=args.image_only_share,
                        workers=args.workers, progress=not args.quiet)
    print(f"world (seed {args.seed}, {size}) written to {paths.root} in "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
