"""Build the report: train what the task notebooks need, execute them, export one PDF and HTML.

    python report/build_report.py            # what `make report` runs (full protocol, 3 seeds)
    MLP_SMOKE=1 python report/build_report.py  # a quick smoke build (tests)
    MLP_STRICT=1 ...                         # a claim the runs do not support fails the build
    MLP_FRESH=1 ...                          # retrain every run instead of reusing the store
    MLP_VERBOSE=1 ...                        # errors with their full traceback

1. Check: the settings, the MNIST files, and that what this build must write can be written
   (the run store, the build folder, the report folder), before any training.
2. Plan: the cell tagged `experiments` of every task notebook (notebooks/task*.ipynb) is run on
   its own to list the networks it needs. Runs found in the run store (mlp_store) are reused; the
   others are trained in one pool of worker processes, under one progress display. The networks
   whose time per epoch the text states are then timed one at a time, alone (mlp_report).
3. The notebooks are executed (up to four at a time) against the store, their inline
   expressions evaluated (execution.py). A notebook whose source, code and settings are
   unchanged since the last build with the same settings is not executed again.
4. They are merged and exported (export.py): the PDF and the HTML replace the previous report
   together, and only when both succeeded. Without LaTeX the HTML is still built, and the output
   says how to get the PDF.

Claims the runs do not support (mlp_report.check) are listed at the end; under MLP_STRICT they
fail the build, naming the claim. Ctrl-C stops the build within seconds: workers and kernels are
ended and finished runs stay in the store. Errors are one or two lines, naming the problem and
the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
REPORT = REPO / "report"
CACHE = REPO / ".cache"
OUTPUT = REPO / "output"  # where the built report lands
sys.path.insert(0, str(REPO))


class BuildError(RuntimeError):
    """A problem the user can fix; its message says what and how."""


class _Interrupts:
    """Whether Ctrl-C has reached the build. A SIGINT that lands inside numpy's C-extension
    import comes out as numpy's ImportError ("Importing the numpy C-extensions failed"), without
    the KeyboardInterrupt; the build still ends as interrupted, not as a broken installation."""

    seen = False

    @classmethod
    def install(cls) -> None:
        cls.seen = False
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignore is kept
            signal.signal(signal.SIGINT, cls._raise)

    @classmethod
    def _raise(cls, signum, frame):
        cls.seen = True
        raise KeyboardInterrupt


def say(text: str = "") -> None:
    print(text, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of the libraries (a run store that cannot be written, a diverged run) as plain
    lines of the build's output."""
    say(f"Warning: {message}")


def _environment() -> None:
    """Caches in the project (never $HOME); what the kernels inherit; quiet libraries."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # kernels killed by Ctrl-C
    for var, sub in (
        ("MPLCONFIGDIR", "matplotlib"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_CONFIG_DIR", "jupyter/config"),
        ("JUPYTER_DATA_DIR", "jupyter/data"),
    ):
        os.environ.setdefault(var, str(CACHE / sub))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ["MLP_STRICT"] = "0"  # kernels only note unsupported claims; the build decides
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures as outputs
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # no debugger chatter from the kernels


# ---- 1. settings and checks ----------------------------------------------------------------------


def settings() -> dict:
    """The build's settings from the environment, each checked (ValueError names the bad one)."""
    import mlp_runs

    mlp_runs.dask_scheduler()  # MLP_DASK_SCHEDULER and MLP_DASK_TIMEOUT: checked, not used here
    mlp_runs.dask_timeout()
    import mlp_report

    return {
        "smoke": mlp_report.smoke_mode(),
        "seeds": mlp_report.n_seeds(),
        "strict": mlp_report.env_flag("MLP_STRICT"),
        "fresh": mlp_report.env_flag("MLP_FRESH"),
    }


# the folders the build writes: how a message names each, and what to do when it cannot be written
REPORT_FOLDER = ("The report folder", "use --out to write the report elsewhere")
BUILD_FOLDER = ("The build folder", "point MLP_REPORT_BUILD at a writable folder")


def writable(folder: Path, kind: tuple[str, str]) -> None:
    """Create `folder` (of REPORT_FOLDER or BUILD_FOLDER `kind`) if needed and write a file in it,
    or say why not and what to do (mlp_store.FolderNotWritable)."""
    import mlp_store

    what, fix = kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mlp-write-test-"):
            pass
    except OSError as exc:
        raise mlp_store.FolderNotWritable.from_oserror(what, folder, exc, fix) from None


@contextlib.contextmanager
def writes_named(out: Path, build: Path):
    """An OSError writing a file into the build folder `build` or the report folder `out` (a full
    disk, say) becomes a FolderNotWritable naming the folder, the file, the reason and the fix."""
    import mlp_store

    try:
        yield
    except OSError as exc:
        target = Path(exc.filename) if isinstance(exc.filename, str) else None
        for folder, (what, fix) in ((build, BUILD_FOLDER), (out, REPORT_FOLDER)):  # build first:
            if target is not None and target.is_relative_to(folder):  # it may lie inside out
                writing = str(target.relative_to(folder))
                raise mlp_store.FolderNotWritable.from_oserror(
                    what, folder, exc, fix, writing
                ) from None
        raise


def build_folder(smoke: bool, seeds: int) -> Path:
    """Where this build keeps its executed notebooks: one folder per setting, so that builds with
    different settings never remove each other's files."""
    root = Path(os.environ.get("MLP_REPORT_BUILD") or CACHE / "report-build")
    return root / f"{'smoke' if smoke else 'protocol'}-{seeds}-seeds"


# ---- 2. the plan ---------------------------------------------------------------------------------


def notebook_experiments(path: Path):
    """Run a notebook's `experiments` cell on its own and return its EXPERIMENTS."""
    import nbformat

    import mlp_core
    import mlp_report

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "experiments" in c.metadata.get("tags", [])]
    namespace = {"mlp": mlp_core, "rep": mlp_report}
    for cell in cells:
        try:
            exec(compile(cell.source, f"{path.name} (experiments cell)", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise BuildError(
                f"{path.name}, experiments cell: {type(exc).__name__}: {exc}"
            ) from None
    exps = namespace.get("EXPERIMENTS")
    if cells and not isinstance(exps, mlp_report.Experiments):
        raise BuildError(
            f"{path.name}: its experiments cell must set EXPERIMENTS = rep.experiments({{...}}), "
            f"got {type(exps).__name__}"
        )
    return exps


def plan(paths: list[Path], fresh: bool) -> tuple[list, list]:
    """Every run and every timed network the notebooks need: (configs, experiments)."""
    configs, all_experiments = [], []
    for path in paths:
        exps = notebook_experiments(path)
        if exps is not None:
            configs += exps.configs()
            all_experiments.append(exps)
    return configs, all_experiments


def train_and_time(configs: list, all_experiments: list, fresh: bool) -> dict:
    """Train the runs the store lacks, then time the timed networks alone; counts for the
    summary."""
    import mlp_report
    import mlp_runs
    import mlp_store

    store = mlp_store.RunStore()
    unique = {c.replace(name=""): c for c in configs}
    if fresh:
        for config in unique:
            with contextlib.suppress(OSError):  # a store that cannot be read is said below
                store.path(config).unlink(missing_ok=True)
    stored = sum(config in store for config in unique)
    folder = store.folder
    if folder.is_relative_to(REPO):
        folder = folder.relative_to(REPO)
    to_train = len(unique) - stored
    say(f"Plan: {len(unique)} runs; {stored} in the run store ({folder}), {to_train} to train.")
    t0 = time.perf_counter()
    # every run goes through run_experiments: a damaged stored entry is named and retrained
    trained = []  # whether each run was trained here (not by another build on this store)
    histories = mlp_runs.run_experiments(
        list(unique.values()),
        store=store,
        desc="training",
        on_done=lambda history, was_trained: trained.append(was_trained),
    )
    train_seconds = time.perf_counter() - t0
    timed = sum(len(exps.timed) for exps in all_experiments)
    missing = 0
    for exps in all_experiments:
        kept = mlp_report.epoch_seconds(exps, measure=False, fresh=True)
        missing += sum(math.isnan(seconds) for seconds in kept.values())
    if missing:
        say(
            f"Timing {missing} of {timed} networks alone "
            f"(the fastest of {mlp_report.TIMING_REPEATS} epochs each, taken in turn)..."
        )
        for exps in all_experiments:
            mlp_report.epoch_seconds(exps, fresh=True)
    return {
        "runs": len(unique),
        "trained": sum(trained),
        "reused": len(unique) - sum(trained),
        "train_seconds": train_seconds,
        "failed": [h.config.label for h in histories if not h.completed],
    }


# ---- 3. executing the notebooks ------------------------------------------------------------------


def project_modules(text: str, found: set[str] | None = None) -> set[str]:
    """The project's modules that code importing them needs, found from its `import` lines."""
    found = set() if found is None else found
    for name in re.findall(r"^\s*(?:import|from)\s+(\w+)", text, flags=re.M):
        if name not in found and (REPO / f"{name}.py").exists():
            found.add(name)
            project_modules((REPO / f"{name}.py").read_text(), found)
    return found


def source_key(path: Path) -> str:
    """What an executed notebook depends on: its source, the project modules it imports (whose
    code covers the run store's keys) and the kept timings of its timed networks, which a later
    build may measure anew (mlp_report.kept_timings). The settings choose the build folder."""
    import nbformat

    import mlp_report

    digest = hashlib.sha256(path.read_bytes())
    cells = nbformat.read(path, as_version=4).cells
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    for module in sorted(project_modules(code)):
        digest.update((REPO / f"{module}.py").read_bytes())
    for helper in ("execution.py",):
        digest.update((REPORT / helper).read_bytes())
    exps = notebook_experiments(path)
    if exps is not None and exps.timed:
        digest.update(json.dumps(mlp_report.kept_timings(exps), sort_keys=True).encode())
    return digest.hexdigest()


def execute_notebooks(paths: list[Path], build: Path, jobs: int) -> tuple[dict, dict]:
    """Execute the notebooks that changed since the last build with these settings; returns the
    executed notebooks and the seconds per notebook (None: reused)."""
    import nbformat
    from execution import Executor, NotebookProgress
    from export import write_atomic

    cache = build / "executed"
    outs = {p: cache / f"{p.stem}-{source_key(p)[:20]}.ipynb" for p in paths}
    todo = [(p, out) for p, out in outs.items() if not out.exists()]
    say(
        f"Notebooks: {len(paths) - len(todo)} unchanged since the last build, "
        f"{len(todo)} to execute."
    )
    seconds = {}
    if todo:
        writable(cache, BUILD_FOLDER)

        def write(target: Path, nb) -> None:
            write_atomic(target, nbformat.writes(nb))

        with Executor(jobs, NotebookProgress()) as executor:
            seconds = executor.run(todo, write)
        for p, out in outs.items():  # executed copies of older sources are of no further use
            for old in cache.glob(f"{p.stem}-*.ipynb"):
                if old != out and not old.name.endswith(".failed.ipynb"):
                    old.unlink(missing_ok=True)
    notebooks = {p.stem: nbformat.read(outs[p], as_version=4) for p in paths}
    return notebooks, {p.stem: seconds.get(p.stem) for p in paths}


def claims_of(notebooks: dict) -> tuple[list[str], int]:
    """The unsupported claims ('notebook: claim') and the number of untestable ones."""
    unsupported, untestable = [], 0
    for name, nb in notebooks.items():
        for cell in nb.cells:
            for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
                meta = out.get("metadata", {})
                if "mlp_claim" in meta:
                    note = meta["mlp_claim"]
                    detail = f" ({note['detail']})" if note.get("detail") else ""
                    unsupported.append(f"{name}: {note['claim']}{detail}")
                untestable += len(meta.get("mlp_claims_untestable", []))
    return unsupported, untestable


# ---- the build -----------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of the notebooks")
    parser.add_argument("--pattern", default="task*.ipynb", help="which notebooks (a glob)")
    parser.add_argument(
        "--out", default=str(OUTPUT), help="folder for report.pdf and report.html (output/)"
    )
    parser.add_argument("--jobs", type=int, default=4, help="notebooks executed at a time")
    args = parser.parse_args(argv)
    config = settings()  # first: a bad setting is named before the slower imports below

    from export import (
        build_note,
        check_references,
        export,
        merge,
        provenance,
        substitute_inline,
        write_atomic,
    )

    _environment()
    warnings.showwarning = _show_warning
    paths = sorted(Path(args.notebooks).glob(args.pattern))
    if not paths:
        raise BuildError(f"no notebooks match {Path(args.notebooks) / args.pattern}")
    out = Path(args.out)
    build = build_folder(config["smoke"], config["seeds"])
    t_start = time.perf_counter()
    mode = "smoke mode" if config["smoke"] else "full protocol"
    strict = ", strict claims" if config["strict"] else ""
    say(f"Building the report ({mode}, {config['seeds']} seed(s) per network{strict}).")
    import mlp_core

    mlp_core.load_mnist()  # the data first: a missing or damaged file is named before anything
    executed = build / "executed"
    stale = [p for p in paths if not (executed / f"{p.stem}-{source_key(p)[:20]}.ipynb").exists()]
    if stale or not (out / "report.html").exists():  # this build will write: can it? say now
        writable(build, BUILD_FOLDER)
        writable(out, REPORT_FOLDER)
    configs, all_experiments = plan(paths, config["fresh"])
    counts = train_and_time(configs, all_experiments, config["fresh"])
    with writes_named(out, build):
        notebooks, seconds = execute_notebooks(paths, build, args.jobs)
    unsupported, untestable = claims_of(notebooks)
    if config["strict"] and unsupported:
        raise BuildError("claims not supported by these runs:\n  " + "\n  ".join(unsupported))
    for name, nb in notebooks.items():
        substitute_inline(nb, name)
    merged = merge(
        notebooks, build_note(config["smoke"]), provenance(config["seeds"], config["smoke"])
    )
    check_references(merged)
    lacking = missing_tools()
    key = json.dumps([merged.cells, lacking], sort_keys=True, default=str)
    key = hashlib.sha256(key.encode()).hexdigest()
    key_file = out / ".report.key"
    wanted = ["report.html"] + ([] if lacking else ["report.pdf"])
    current = key_file.exists() and key_file.read_text() == key
    unchanged = current and all((out / name).exists() for name in wanted)
    t0 = time.perf_counter()
    if not unchanged:
        writable(out, REPORT_FOLDER)
        writable(build, BUILD_FOLDER)
        with writes_named(out, build):
            write_atomic(build / "report.ipynb", json.dumps(merged, indent=1))
            if "pandoc" in lacking:
                raise BuildError(
                    "pandoc is needed for the report: install it (`make system-deps`)."
                )
            export(merged, out, build, pdf=not lacking)
            write_atomic(key_file, key)
            write_atomic(build / "claims.txt", "".join(f"{c}\n" for c in unsupported))
    exported = time.perf_counter() - t0
    say()
    notebook_times = ", ".join(
        f"{name.split('_')[0]} {'reused' if s is None else f'{s:.1f} s'}"
        for name, s in seconds.items()
    )
    ending = (
        "the report itself is unchanged, so it was kept."
        if unchanged
        else f"export {exported:.1f} s."
    )
    say(
        f"Report built in {time.perf_counter() - t_start:.0f} s: runs {counts['trained']} trained "
        f"and {counts['reused']} reused ({counts['train_seconds']:.0f} s); notebooks "
        f"{notebook_times}; {ending}"
    )
    if lacking:
        say(
            f"Only report.html was written: {', '.join(lacking)} not found. For the PDF install "
            f"them (Debian/Ubuntu: `make system-deps`, macOS: `brew install pandoc basictex`), "
            f"then run `make report` again."
        )
    else:
        say(f"  {out / 'report.pdf'}\n  {out / 'report.html'}")
    if counts["failed"]:
        say(f"Runs that did not complete (left out of the tables): {', '.join(counts['failed'])}.")
    if untestable:
        say(
            f"{untestable} claim(s) compare networks and need several seeds to be tested "
            f"(marked † in the report)."
        )
    if unsupported:
        hint = " (expected in a smoke build)" if config["smoke"] else ""
        say(f"{len(unsupported)} claim(s) not supported by these runs, marked in the report{hint}:")
        for claim in unsupported[:10]:
            say(f"  {claim}")
        if len(unsupported) > 10:
            say(f"  … and {len(unsupported) - 10} more: {build / 'claims.txt'} lists them all.")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main() with the build's way of ending: one or two lines for any problem (the traceback too
    with MLP_VERBOSE=1), exit code 130 on Ctrl-C with nothing half-written."""
    verbose = os.environ.get("MLP_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")
    _Interrupts.install()
    try:
        try:
            return main(argv)
        except Exception:
            if _Interrupts.seen:  # the error of something Ctrl-C cut short
                raise KeyboardInterrupt from None
            raise
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the clean-up
        say(
            "\nInterrupted: finished runs are kept in the run store; "
            "the previous report is untouched."
        )
        return 130
    except Exception as exc:  # every error ends as one short message
        if verbose:
            traceback.print_exc()
        known = type(exc).__name__ in (
            "BuildError",
            "ReportError",
            "NotebookFailed",
            "MNISTDataError",
            "RunStoreError",
            "FolderNotWritable",
            "ValueError",
        )
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        say(f"\nThe build failed; the previous report is untouched.\n{message}")
        if not verbose:
            say("(MLP_VERBOSE=1 shows the full traceback.)")
        return 1


if __name__ == "__main__":
    try:
        sys.exit(run())
    except KeyboardInterrupt:  # during the first imports
        print("\nInterrupted.", flush=True)
        sys.exit(130)
